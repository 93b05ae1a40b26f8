"""How many completions the gateway follows at once, in all and per caller.

Each completion holds a connection and a thread until it is certified (seconds to minutes). Without
a cap per caller, one API key could take every connection; without a total below the server's
connection cap, ``/health`` and ``/v1/models`` would be refused too (503) while the gateway is
merely busy. A request over a cap is refused before anything is submitted (429, with Retry-After:
retrying it costs nothing).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from avs.gateway.errors import TooManyRequestsError


class Admission:
    def __init__(self, max_in_flight: int, max_in_flight_per_caller: int) -> None:
        self.max_in_flight = max_in_flight
        self.max_in_flight_per_caller = max_in_flight_per_caller
        self._lock = threading.Lock()
        self._in_flight = 0
        self._by_caller: dict[str, int] = {}

    @contextmanager
    def admit(self, caller: str | None) -> Iterator[None]:
        """Hold one of ``caller``'s slots for the block, or raise ``TooManyRequestsError``. Without
        API keys the caller is ``""`` and only the total cap applies (behind a proxy every client
        has the proxy's address, so a cap per address would be the whole gateway's)."""
        caller = caller or ""
        per_caller = self.max_in_flight_per_caller if caller else self.max_in_flight
        with self._lock:
            if self._in_flight >= self.max_in_flight:
                raise TooManyRequestsError(
                    f"the gateway is following {self._in_flight} completions, its most; retry shortly"
                )
            held = self._by_caller.get(caller, 0)
            if held >= per_caller:
                raise TooManyRequestsError(
                    f"you have {held} completions in flight, the most one caller may; retry when one ends"
                )
            self._in_flight += 1
            self._by_caller[caller] = held + 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                self._by_caller[caller] -= 1
                if not self._by_caller[caller]:
                    del self._by_caller[caller]

    @property
    def in_flight(self) -> int:
        return self._in_flight

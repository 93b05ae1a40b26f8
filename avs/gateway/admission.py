"""How many completions the gateway follows at once, in all and per caller.

Each completion holds a connection and a thread until it is certified (seconds to minutes). Without
a cap per caller, one API key could take every connection; without a total below the server's
connection cap, ``/health`` and ``/v1/models`` would be refused too (503) while the gateway is
merely busy. A request over a cap is refused before anything is submitted (429, with Retry-After:
retrying it costs nothing). Each completion is also a paid inference: ``rate_per_minute`` caps how
many a caller starts a minute (a token bucket per caller, a minute's worth of burst), and the 429
says when the next one is allowed. A retry of a request under its ``Idempotency-Key`` (the same
body, after a dropped connection) is the request already paid for, not another inference: it is
not charged again within ``REPEAT_MEMORY_SECONDS``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from avs.gateway.errors import TooManyRequestsError

# How long, and for how many requests at most (the oldest forgotten first), a charged request key is
# remembered: a client retries a dropped request within its own timeout, well under an hour.
REPEAT_MEMORY_SECONDS = 3600.0
MAX_REMEMBERED_REQUESTS = 16_384


class RateLimiter:
    """A token bucket per caller: ``per_minute`` tokens, refilled continuously; not thread-safe (the
    admission's lock guards it). Callers are API key indices (or ``""``): a bounded set."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = float(per_minute)
        self._per_second = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, at)
        self._charged: OrderedDict[bytes, float] = OrderedDict()  # request key -> when charged

    def is_repeat(self, request_key: bytes | None) -> bool:
        """Whether ``request_key`` (an idempotent request's) was charged within ``REPEAT_MEMORY_SECONDS``."""
        if request_key is None:
            return False
        horizon = self._clock() - REPEAT_MEMORY_SECONDS
        while self._charged and next(iter(self._charged.values())) < horizon:
            self._charged.popitem(last=False)
        return request_key in self._charged

    def wait_seconds(self, caller: str) -> float:
        """0 when ``caller`` may start one now, else the seconds until it may."""
        tokens = self._tokens(caller)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self._per_second

    def take(self, caller: str, request_key: bytes | None = None) -> None:
        self._buckets[caller] = (self._tokens(caller) - 1.0, self._clock())
        if request_key is not None:
            self._charged[request_key] = self._clock()
            self._charged.move_to_end(request_key)
            while len(self._charged) > MAX_REMEMBERED_REQUESTS:
                self._charged.popitem(last=False)

    def _tokens(self, caller: str) -> float:
        tokens, at = self._buckets.get(caller, (self._capacity, self._clock()))
        return min(self._capacity, tokens + (self._clock() - at) * self._per_second)


class Admission:
    def __init__(
        self,
        max_in_flight: int,
        max_in_flight_per_caller: int,
        rate_per_minute: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.max_in_flight_per_caller = max_in_flight_per_caller
        self._lock = threading.Lock()
        self._in_flight = 0
        self._by_caller: dict[str, int] = {}
        self._rate = RateLimiter(rate_per_minute, clock) if rate_per_minute else None

    @contextmanager
    def admit(self, caller: str | None, request_key: bytes | None = None) -> Iterator[None]:
        """Hold one of ``caller``'s slots for the block, or raise ``TooManyRequestsError``. Without
        API keys the caller is ``""`` and only the total cap applies (behind a proxy every client
        has the proxy's address, so a cap per address would be the whole gateway's).
        ``request_key`` names an idempotent request (its caller, key and body): one charged to the
        rate lately is let through without another token (the caps in flight still apply)."""
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
            if self._rate is not None and not self._rate.is_repeat(request_key):
                wait = self._rate.wait_seconds(caller)
                if wait > 0:
                    raise TooManyRequestsError(
                        f"over the rate of completions allowed per minute; the next in {wait:.1f} s",
                        retry_after=math.ceil(wait),
                    )
                self._rate.take(caller, request_key)
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

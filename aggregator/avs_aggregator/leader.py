"""Leader election for several aggregators on one database: a lease row with an expiry.

One row per lease name in ``leases``: (holder, expires_at, term). ``try_acquire`` is one
conditional UPDATE -- take or extend the lease when it is ours or expired -- so it is atomic on
PostgreSQL and SQLite alike; the first holder INSERTs the row (a concurrent INSERT loses on the
primary key and retries the UPDATE). ``term`` grows by one at every change of holder: a fencing
token (an old leader that wakes up after a pause sees its term is gone).

``LeaderElector`` runs the loop a daemon needs: a standby tries every ``interval`` seconds
(default ``ttl / 3``); once elected it calls ``on_elected`` (start driving the pipeline) and renews
at the same pace; a renewal that fails (someone else took the expired lease, or the database did
not answer) calls ``on_demoted`` (stop driving at once; the new leader resumes from the database the
way a restarted aggregator does). Between a failed renewal and the earliest takeover there are at
least ``ttl - interval`` seconds: the time the demoted leader has to stop. ``LeaderLease.is_held``
says, by the local clock, whether the lease we last renewed is still ours: the guard in front of
every transaction (``avs_aggregator.app.LeaderOnlySender``). The expiry uses the aggregators'
clocks: keep ``ttl`` well above their skew (NTP keeps it in milliseconds; the default ttl is 15 s).

The row holds ``holder#token``, a random token per ``LeaderLease``: two aggregators given the same
holder id (a load balancer's name, or ``hostname:port/pid`` alike in two containers) would
otherwise both "renew" one lease and both lead.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable

from sqlalchemy import case, insert, select, update
from sqlalchemy.exc import IntegrityError

from avs.errors import InvalidInputError, UnavailableError
from avs_aggregator.store import LeaseRow, Store

logger = logging.getLogger(__name__)


class NotLeaderError(UnavailableError):
    """This aggregator does not hold the leader lease (any more): it must not drive or send."""


class LeaderLease:
    def __init__(
        self,
        store: Store,
        holder: str,
        ttl: float = 15.0,
        name: str = "aggregator",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.holder = holder  # the name others are told (a standby names the leader)
        self._owner = f"{holder}#{secrets.token_hex(8)}"  # what the row holds: this process's alone
        self.ttl = ttl
        self.name = name
        self.clock = clock
        self.term: int | None = None  # the term this holder was elected in, while it holds the lease
        self.held_until: float | None = None  # the expiry we last wrote, while we hold the lease

    def try_acquire(self) -> bool:
        """Take the lease if it is free or expired, or extend it if it is ours; True if we hold it."""
        now = self.clock()
        for _ in range(2):
            with self.store.session() as s:
                taken = s.execute(
                    update(LeaseRow)
                    .where(
                        LeaseRow.name == self.name,
                        (LeaseRow.holder == self._owner) | (LeaseRow.expires_at < now),
                    )
                    .values(
                        expires_at=now + self.ttl,
                        term=case((LeaseRow.holder == self._owner, LeaseRow.term), else_=LeaseRow.term + 1),
                        holder=self._owner,
                    )
                    .execution_options(synchronize_session=False)
                )
                if taken.rowcount == 1:  # type: ignore[attr-defined]
                    self.term = s.scalar(select(LeaseRow.term).where(LeaseRow.name == self.name))
                    self.held_until = now + self.ttl
                    return True
                held = s.get(LeaseRow, self.name)
                if held is not None:  # held by someone else, not expired
                    if _holder_name(held.holder) == self.holder:
                        logger.error(
                            "another aggregator holds the leader lease under this holder id: give each its own",
                            extra={"holder": self.holder},
                        )
                    self.term = self.held_until = None
                    return False
            try:
                with self.store.session() as s:
                    s.execute(
                        insert(LeaseRow).values(name=self.name, holder=self._owner, expires_at=now + self.ttl, term=1)
                    )
                self.term, self.held_until = 1, now + self.ttl
                return True
            except IntegrityError:  # another aggregator inserted it first: try the UPDATE again
                continue
        self.term = self.held_until = None
        return False

    def is_held(self) -> bool:
        """Whether the lease we last took or renewed is still ours by the local clock (no I/O)."""
        return self.held_until is not None and self.clock() < self.held_until

    def release(self) -> None:
        """Give the lease up now (a clean stop), so a standby need not wait for the expiry."""
        with self.store.session() as s:
            s.execute(
                update(LeaseRow)
                .where(LeaseRow.name == self.name, LeaseRow.holder == self._owner)
                .values(expires_at=0.0)
                .execution_options(synchronize_session=False)
            )
        self.term = self.held_until = None

    def get_holder(self) -> tuple[str, float, int] | None:
        """(holder, expires_at, term) of the lease, or None before anyone took it."""
        with self.store.session() as s:
            row = s.get(LeaseRow, self.name)
            return None if row is None else (_holder_name(row.holder), row.expires_at, row.term)


def _holder_name(owner: str) -> str:
    """The holder id in a lease row's ``holder#token``."""
    return owner.rpartition("#")[0] or owner


class LeaderElector:
    """Keeps trying for (then renewing) ``lease`` on a thread; calls back on each change."""

    def __init__(
        self,
        lease: LeaderLease,
        on_elected: Callable[[int], None],
        on_demoted: Callable[[], None],
        interval: float | None = None,
    ) -> None:
        self.lease = lease
        self.on_elected = on_elected
        self.on_demoted = on_demoted
        self.interval = lease.ttl / 3 if interval is None else interval
        if not 0 < self.interval < lease.ttl:
            raise InvalidInputError(f"the renew interval ({self.interval} s) must be below the lease ({lease.ttl} s)")
        self.is_leader = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="leader-election", daemon=True)

    def start(self) -> None:
        """One try now (a lone aggregator leads before it serves), then the loop on a thread."""
        self.step()
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        """No more tries or renewals. ``release``: give the lease up now; otherwise it stays ours
        (``is_leader``) until it expires, so a daemon can stop its work first, then ``release()``."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(self.lease.ttl)
        if release:
            self.release()

    def release(self) -> None:
        """Hand the lease over now, if we hold it (a standby takes it at its next try)."""
        if self.is_leader:
            try:
                self.lease.release()
            except Exception as exc:
                logger.warning("could not release the leader lease", extra={"error": str(exc)})
        self.is_leader = False

    def step(self) -> None:
        """One try/renew and the callbacks it implies (the loop's body; tests call it directly)."""
        try:
            held = self.lease.try_acquire()
        except Exception as exc:  # the database is unreachable: we cannot know we still hold it
            logger.warning("leader lease not renewed", extra={"error": str(exc)})
            held = False
        if held and not self.is_leader:
            self.is_leader = True
            logger.warning("elected leader", extra={"holder": self.lease.holder, "term": self.lease.term})
            self.on_elected(self.lease.term or 0)
        elif not held and self.is_leader:
            self.is_leader = False
            logger.warning("lost the leader lease; standing by", extra={"holder": self.lease.holder})
            self.on_demoted()

    def _loop(self) -> None:
        while not self._stopped.wait(self.interval):
            self.step()

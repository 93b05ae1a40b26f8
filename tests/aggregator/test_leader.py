"""Leader election on one database (SQLite and PostgreSQL): one holder at a time, takeover after the
lease expires, a fencing term, a clean hand-over on release, and a race where exactly one wins."""

from __future__ import annotations

import threading

from avs_aggregator.leader import LeaderElector, LeaderLease
from avs_aggregator.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_one_holder_at_a_time_and_takeover_after_expiry(db: str) -> None:
    store, clock = Store(db), Clock()
    a = LeaderLease(store, "aggregator-a", ttl=15, clock=clock)
    b = LeaderLease(Store(db), "aggregator-b", ttl=15, clock=clock)
    assert a.try_acquire() and a.term == 1
    assert not b.try_acquire() and b.term is None
    clock.now += 10
    assert a.try_acquire() and a.term == 1  # renewed: same term
    clock.now += 10
    assert not b.try_acquire()  # the renewal moved the expiry
    clock.now += 6  # a stopped renewing (paused, partitioned) 16 s ago
    assert b.try_acquire() and b.term == 2
    assert not a.try_acquire() and a.term is None  # the old leader learns it lost
    assert a.get_holder() == ("aggregator-b", clock.now + 15, 2)
    b.store.close()
    store.close()


def test_release_hands_over_at_once(db: str) -> None:
    store, clock = Store(db), Clock()
    a, b = LeaderLease(store, "a", clock=clock), LeaderLease(store, "b", clock=clock)
    assert a.try_acquire()
    a.release()
    assert b.try_acquire() and b.term == 2
    store.close()


def test_elector_calls_back_on_election_and_demotion(db: str) -> None:
    store, clock = Store(db), Clock()
    events: list[str] = []
    a = LeaderElector(
        LeaderLease(store, "a", ttl=15, clock=clock),
        lambda t: events.append(f"a elected {t}"),
        lambda: events.append("a demoted"),
    )
    b = LeaderElector(
        LeaderLease(store, "b", ttl=15, clock=clock),
        lambda t: events.append(f"b elected {t}"),
        lambda: events.append("b demoted"),
    )
    a.step()
    b.step()
    a.step()  # renewing: no callback
    clock.now += 20  # a misses its renewals
    b.step()
    a.step()
    assert events == ["a elected 1", "b elected 2", "a demoted"]
    assert b.is_leader and not a.is_leader
    store.close()


def test_racing_aggregators_elect_exactly_one(db: str) -> None:
    stores = [Store(db) for _ in range(4)]
    leases = [LeaderLease(s, f"aggregator-{i}") for i, s in enumerate(stores)]
    barrier = threading.Barrier(len(leases))
    results: dict[str, bool] = {}

    def run(lease: LeaderLease) -> None:
        barrier.wait()
        results[lease.holder] = lease.try_acquire()

    threads = [threading.Thread(target=run, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(results.values()) == 1
    for s in stores:
        s.close()


def test_two_aggregators_with_the_same_holder_id_never_both_lead(db: str) -> None:
    """The lease was keyed on the holder id alone: a second aggregator given the same id (a load
    balancer's name, or hostname:port/pid alike in two containers) "renewed" the first one's lease
    and both led, both passing the sender's fence (found by a review helper)."""
    store, clock = Store(db), Clock()
    a = LeaderLease(store, "aggregator:50060/1", ttl=15, clock=clock)
    b = LeaderLease(Store(db), "aggregator:50060/1", ttl=15, clock=clock)
    assert a.try_acquire()
    assert not b.try_acquire() and not b.is_held()
    clock.now += 10
    assert a.try_acquire() and not b.try_acquire()
    assert a.get_holder() == ("aggregator:50060/1", clock.now + 15, 1)  # others see the id, not the token
    b.release()  # releases nothing of a's
    assert not b.try_acquire() and a.is_held()
    b.store.close()
    store.close()

"""The daemon's leader-election and signing-round settings: config keys, defaults (election off on
SQLite, on for PostgreSQL), the settings the pipeline gets, the local lease check and the sender
that refuses to send without the lease."""

from __future__ import annotations

from typing import Any, cast

import pytest

from avs.chain.client import Web3AvsClient
from avs_aggregator.app import LeaderOnlySender, build_pipeline_settings
from avs_aggregator.config import ConfigError, parse_config
from avs_aggregator.leader import LeaderElector, LeaderLease, NotLeaderError
from avs_aggregator.store import Store
from avs_aggregator.txsender import SenderSettings

from .test_leader import Clock

BASE: dict[str, Any] = {
    "chain": {"deployment_file": "deployment.json"},
    "keys": {"ecdsa_keystore": "key.json"},
    "models": [{"name": "m", "model_id": "0x" + "11" * 32}],
}


def test_leader_election_is_off_for_sqlite_and_on_for_postgresql_by_default() -> None:
    assert not parse_config(BASE).is_leader_election_enabled()
    shared = parse_config({**BASE, "database_url": "postgresql+psycopg://avs@db/aggregator"})
    assert shared.is_leader_election_enabled()
    assert shared.leader.lease_seconds == 15.0 and shared.leader.get_renew_seconds() == 5.0
    forced = parse_config({**BASE, "leader": {"enabled": True, "renew_seconds": 2, "holder_id": "agg-1"}})
    assert forced.is_leader_election_enabled() and forced.leader.get_renew_seconds() == 2.0
    off = parse_config({**BASE, "database_url": "postgresql+psycopg://avs@db/a", "leader": {"enabled": False}})
    assert not off.is_leader_election_enabled()


@pytest.mark.parametrize(
    ("leader", "field"),
    [
        ({"lease_seconds": 5, "renew_seconds": 5}, "renew_seconds must be below lease_seconds"),
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"holder_id": ""}, "holder_id"),
        ({"holder_id": "x" * 129}, "holder_id"),
        ({"term": 3}, "term"),
    ],
)
def test_bad_leader_settings_name_the_field(leader: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        parse_config({**BASE, "leader": leader})


def test_signing_rounds_reach_the_pipeline() -> None:
    defaults = build_pipeline_settings(parse_config(BASE))
    assert (defaults.sign_rounds, defaults.sign_backoff) == (3, 1.0)
    config = parse_config({**BASE, "batch": {"sign_rounds": 5, "sign_backoff_seconds": 0.5}, "workers": 3})
    settings = build_pipeline_settings(config)
    assert (settings.sign_rounds, settings.sign_backoff, settings.workers) == (5, 0.5, 3)
    with pytest.raises(ConfigError, match="sign_rounds"):
        parse_config({**BASE, "batch": {"sign_rounds": 0}})


def test_the_lease_is_held_locally_until_the_expiry_we_wrote(tmp_path: Any) -> None:
    store, clock = Store(f"sqlite:///{tmp_path / 'a.sqlite'}"), Clock()
    a, b = LeaderLease(store, "a", ttl=15, clock=clock), LeaderLease(store, "b", ttl=15, clock=clock)
    assert not a.is_held()
    assert a.try_acquire() and a.is_held()
    clock.now += 14.9
    assert a.is_held()
    clock.now += 0.2  # not renewed in time: no longer ours, before anyone else took it
    assert not a.is_held()
    assert b.try_acquire() and not a.try_acquire() and not a.is_held()
    b.release()
    assert not b.is_held()
    store.close()


def test_the_renew_interval_must_be_below_the_lease(tmp_path: Any) -> None:
    store = Store(f"sqlite:///{tmp_path / 'a.sqlite'}")
    lease = LeaderLease(store, "a", ttl=3)
    assert LeaderElector(lease, lambda term: None, lambda: None).interval == 1.0
    with pytest.raises(ValueError, match="below the lease"):
        LeaderElector(lease, lambda term: None, lambda: None, interval=3)
    store.close()


class NoChain:
    """A client whose every use fails the test: a refused send must not touch the chain."""

    @property
    def w3(self) -> Any:
        return None

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the chain was used: {name}")


def test_only_the_leader_sends_transactions() -> None:
    leading = [False]
    sender = LeaderOnlySender(cast(Web3AvsClient, NoChain()), cast(Any, None), SenderSettings(), lambda: leading[0])
    with pytest.raises(NotLeaderError, match="leader lease"):
        sender.send(cast(Any, object()))
    leading[0] = True
    with pytest.raises(AttributeError):  # past the fence: the real sender starts (and fails on the fake)
        sender.send(cast(Any, object()))

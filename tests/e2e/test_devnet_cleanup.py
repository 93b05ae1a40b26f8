"""A devnet that fails to start leaves no process behind (the chain and registrations faked: only
the process bookkeeping is under test; test_devnet.py runs the real one)."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest

import avs.demo_cheater
import avs.devnet as devnet_module
from avs.devnet import Devnet, ServiceProcess


class FakeAnvil:
    url = "http://127.0.0.1:1"

    def mine(self, blocks: int = 1) -> None:
        pass

    def stop(self) -> None:
        pass


def test_operators_started_before_a_failing_one_are_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[ServiceProcess] = []

    def start_operator(operator: Any, log_dir: Path) -> ServiceProcess:
        process = ServiceProcess(operator.name, ["sleep", "300"], {}, log_dir)
        spawned.append(process)
        return process

    def make_cheap_weights(*args: Any, **kwargs: Any) -> Path:
        raise OSError("No space left on device")  # the cheater starts last, after the honest three

    monkeypatch.setattr(devnet_module, "Anvil", FakeAnvil)
    monkeypatch.setattr(devnet_module, "deploy_contracts", lambda *a, **k: types.SimpleNamespace(aggregator="0x0"))
    monkeypatch.setattr(
        devnet_module, "create_operator", lambda *args: types.SimpleNamespace(name=args[4], config_path=Path("x"))
    )
    monkeypatch.setattr(devnet_module, "start_operator", start_operator)
    monkeypatch.setattr(avs.demo_cheater, "make_cheap_weights", make_cheap_weights)
    devnet = Devnet(tmp_path, tmp_path / "model", cheater="dave")
    with pytest.raises(OSError, match="No space left"):
        devnet.start()
    assert [p.name for p in spawned] == ["alice", "bob", "carol"]
    try:
        assert all(p.process.poll() is not None for p in spawned), "an operator outlived the failed start"
    finally:
        for process in spawned:
            process.process.kill()
            process.process.wait()

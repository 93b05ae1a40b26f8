"""Concurrency and deadline limits map to RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml
from eth_utils import keccak
from hypothesis import given
from hypothesis import strategies as st

from avs.errors import CancelledError, DeadlineExceededError, OverloadedError
from avs.messages import Attestation, Verdict
from avs.rpc.status import MAX_DETAILS_CHARS, get_status_code, shorten_details
from avs_operator.core import _check_caller
from avs_operator.server import ConcurrencyLimiter
from avs_operator.slashing_protection import SlashingProtection


class FixedDeadline:
    def __init__(self, remaining: float | None, active: bool = True) -> None:
        self.remaining = remaining
        self.active = active

    def time_remaining(self) -> float | None:
        return self.remaining

    def is_active(self) -> bool:
        return self.active


def test_the_limiter_refuses_beyond_its_slots() -> None:
    limiter = ConcurrencyLimiter(2)
    with limiter.slot(), limiter.slot():
        with pytest.raises(OverloadedError) as refused, limiter.slot():
            pass
        assert get_status_code(refused.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
    with limiter.slot():  # slots come back when calls end, errors included
        pass


def test_a_passed_deadline_or_a_cancelled_call_stops_work() -> None:
    _check_caller(None)
    _check_caller(FixedDeadline(None))
    _check_caller(FixedDeadline(1.0))
    with pytest.raises(DeadlineExceededError) as late:
        _check_caller(FixedDeadline(0.0))
    assert get_status_code(late.value) == grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(CancelledError) as gone:
        _check_caller(FixedDeadline(None, active=False))
    assert get_status_code(gone.value) == grpc.StatusCode.CANCELLED


def test_slashing_protection_export_and_import_commands(tmp_path: Path) -> None:
    def config(name: str) -> Path:
        data = {
            "chain": {"chain_id": 31337, "task_manager": "0x5FbDB2315678afecb367f032d93F642f64180aa3"},
            "keys": {"bls_keystore": "op.bls.key.json"},
            "models": [{"name": "tiny", "path": "model"}],
            "auth": {"authorised_aggregators": ["0x70997970C51812dc3A010C7d01b50e0d17dc79C8"]},
            "slashing_protection_url": f"sqlite:///{tmp_path / name / 'protection.sqlite'}",
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    SlashingProtection(f"sqlite:///{tmp_path / 'old' / 'protection.sqlite'}").record_attestation(
        keccak(text="domain"), Attestation(keccak(text="r"), keccak(text="o"), Verdict.ACCEPT)
    )
    run = [sys.executable, "-m", "avs_operator.cli", "slashing-protection"]
    exported = subprocess.run([*run, "export", "--config", str(config("old"))], capture_output=True, text=True)
    assert exported.returncode == 0, exported.stderr
    (tmp_path / "history.json").write_text(exported.stdout)
    imported = subprocess.run(
        [*run, "import", "--config", str(config("new")), str(tmp_path / "history.json")], capture_output=True, text=True
    )
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout) == {"imported_attestations": 1, "imported_batches": 0}
    (tmp_path / "bad.json").write_text("[]")
    refused = subprocess.run(
        [*run, "import", "--config", str(config("new")), str(tmp_path / "bad.json")], capture_output=True, text=True
    )
    assert refused.returncode == 2 and "slashing-protection export" in refused.stderr


@given(st.text(max_size=3_000))
def test_status_details_are_cut_to_a_bounded_length_that_says_so(message: str) -> None:
    shown = shorten_details(message)
    assert len(shown) <= MAX_DETAILS_CHARS
    if len(message) <= MAX_DETAILS_CHARS:
        assert shown == message
    else:
        assert shown.endswith(f"... ({len(message)} characters)") and message.startswith(shown.split("... (")[0])

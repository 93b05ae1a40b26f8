"""Kill the aggregator's pipeline at an exact step: a child process that ``os._exit(137)``s there.

A real ``kill -9`` from outside can only land "somewhere after" a state is visible. To hit each
step exactly, the child runs the real ``Pipeline`` over SQLite with ports wrapped by
``CrashingPorts``: on the ``nth`` call of ``hook`` it exits with status 137 (what SIGKILL gives)
either *before* the call reaches the fake chain/operators or *after* it returned (for
``certify_batch``: after the transaction is on the chain, before the pipeline commits it). Nothing
is flushed or closed: exactly a kill -9. The chain is ``FileChain``, a ``FakeNetwork`` whose
certifications (and every certifyBatch attempt) live in a JSON file that survives the child.

Run as ``python -m tests.resilience.crashing DB CHAIN HOOK NTH WHEN REQUESTS``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from avs.chain.client import CheckSignaturesIndices, NonSignerStakesAndSignature
from avs.crypto.curve import G1Point
from avs.merkle import BatchLeaf
from avs.messages import BatchHeader
from avs.rpc.convert import RequestEnvelope
from avs.types import OperatorId
from avs_aggregator.pipeline import Pipeline, PipelineSettings
from avs_aggregator.ports import GenerateReply, OperatorInfo, OperatorSet, VerifyReply
from avs_aggregator.store import Store
from tests.aggregator.fakes import DOMAIN, FakeNetwork, make_envelope

STAKES = ({0: 10}, {0: 30}, {0: 60})
SETTINGS = PipelineSettings(batch_max_size=3, batch_max_latency=0.0, workers=2)
KILLED = 137


class FileChain(FakeNetwork):
    """``FakeNetwork`` whose chain state (certified batches, certifyBatch attempts) is a file."""

    def __init__(self, path: Path) -> None:
        super().__init__(STAKES)
        self.path = path

    def load(self) -> dict[str, list[list[int | str]]]:
        if not self.path.exists():
            return {"certified": [], "attempts": []}
        data: dict[str, list[list[int | str]]] = json.loads(self.path.read_text())
        return data

    def _save(self, data: dict[str, list[list[int | str]]]) -> None:
        scratch = self.path.with_suffix(".tmp")
        with scratch.open("w") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        scratch.replace(self.path)

    def certify_batch(self, header: BatchHeader, signatures: NonSignerStakesAndSignature) -> tuple[bytes, int]:
        data = self.load()
        data["attempts"].append([header.batch_index])
        self._save(data)
        self.certified = {int(i): (int(b), bytes.fromhex(str(t))) for i, b, t in data["certified"]}
        tx, gas = super().certify_batch(header, signatures)  # raises like the contract
        data["certified"].append([header.batch_index, self.block, tx.hex()])
        self._save(data)
        return tx, gas

    def is_certified(self, header: BatchHeader, signatory_record_hash: bytes) -> bool:
        # One aggregator here: every certification in the file is its own.
        return self.get_certification(header.batch_index) is not None

    def get_certification(self, batch_index: int, from_block: int = 0) -> tuple[int, bytes] | None:
        for index, block, tx in self.load()["certified"]:
            if index == batch_index:
                return int(block), bytes.fromhex(str(tx))
        return None


class CrashingPorts:
    """All three ports of ``chain``; the ``nth`` call of ``hook`` kills the process (``when``)."""

    def __init__(self, chain: FileChain, hook: str, nth: int, when: str) -> None:
        self.chain, self.hook, self.nth, self.when = chain, hook, nth, when
        self.calls = 0

    def _enter(self, name: str) -> bool:
        if name != self.hook:
            return False
        self.calls += 1
        if self.calls == self.nth and self.when == "before":
            os._exit(KILLED)
        return self.calls == self.nth

    def _leave(self, hit: bool) -> None:
        if hit:
            os._exit(KILLED)

    def get_reference_block(self) -> tuple[int, bytes]:
        hit = self._enter("get_reference_block")
        result = self.chain.get_reference_block()
        self._leave(hit)
        return result

    def get_operator_set(self, reference_block: int) -> OperatorSet:
        return self.chain.get_operator_set(reference_block)

    def generate(self, operator: OperatorInfo, envelope: RequestEnvelope, timeout: float) -> GenerateReply:
        hit = self._enter("generate")
        result = self.chain.generate(operator, envelope, timeout)
        self._leave(hit)
        return result

    def verify(
        self, operator: OperatorInfo, envelope: RequestEnvelope, output_ids: Sequence[int], timeout: float
    ) -> VerifyReply:
        hit = self._enter("verify")
        result = self.chain.verify(operator, envelope, output_ids, timeout)
        self._leave(hit)
        return result

    def sign_batch(
        self, operator: OperatorInfo, header: BatchHeader, leaves: Sequence[BatchLeaf], timeout: float
    ) -> G1Point:
        hit = self._enter("sign_batch")
        result = self.chain.sign_batch(operator, header, leaves, timeout)
        self._leave(hit)
        return result

    def get_block_number(self) -> int:
        return self.chain.get_block_number()

    def get_check_signatures_indices(
        self, reference_block: int, quorum_numbers: bytes, non_signer_ids: Sequence[OperatorId]
    ) -> CheckSignaturesIndices:
        hit = self._enter("get_check_signatures_indices")
        result = self.chain.get_check_signatures_indices(reference_block, quorum_numbers, non_signer_ids)
        self._leave(hit)
        return result

    def certify_batch(self, header: BatchHeader, signatures: NonSignerStakesAndSignature) -> tuple[bytes, int]:
        hit = self._enter("certify_batch")
        result = self.chain.certify_batch(header, signatures)
        self._leave(hit)
        return result

    def get_certification(self, batch_index: int, from_block: int = 0) -> tuple[int, bytes] | None:
        hit = self._enter("get_certification")
        result = self.chain.get_certification(batch_index, from_block)
        self._leave(hit)
        return result


def make_pipeline(db: Path, ports: FileChain | CrashingPorts) -> Pipeline:
    return Pipeline(DOMAIN, Store(f"sqlite:///{db}"), ports, ports, ports, SETTINGS)


def main(argv: Sequence[str]) -> int:
    db, chain_file, hook, nth, when, requests = argv
    ports = CrashingPorts(FileChain(Path(chain_file)), hook, int(nth), when)
    pipeline = make_pipeline(Path(db), ports)
    for i in range(int(requests)):
        pipeline.submit(make_envelope(i, f"crash test {i}"))
    if hook == "submit":
        os._exit(KILLED)  # every request stored (RECEIVED), nothing else done
    pipeline.run_until_idle()
    return 0  # the hook was never reached: the test reports that


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

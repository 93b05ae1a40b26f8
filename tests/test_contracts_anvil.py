"""Integration: deploy the contracts on a real anvil, register operators with keys and proofs of
possession made by ``avs.crypto``, and get a batch signed in Python certified on-chain; tampered
certificates are rejected with the contracts' custom errors."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from avs.chain.client import (
    RECEIPT_TIMEOUT_SECONDS,
    CheckSignaturesIndices,
    ContractRevertError,
    NonSignerStakesAndSignature,
    TransactionPendingError,
    Web3AvsClient,
)
from avs.chain.deployment import Deployment
from avs.chain.registration import register_operator
from avs.client import compute_signatory_record_hash
from avs.crypto import bls
from avs.crypto.curve import G1Point
from avs.devnet import ANVIL_KEY_0, CONTRACTS, Anvil, deploy_contracts, restake
from avs.merkle import BatchLeaf, compute_merkle_tree
from avs.messages import BatchHeader
from avs.types import Address, OperatorId

STAKE = 10 * 10**18
QUORUMS = b"\x00"


@dataclass(frozen=True)
class Operator:
    account: LocalAccount
    keys: bls.KeyPair


@dataclass(frozen=True)
class Devnet:
    w3: Web3
    deployment: Deployment
    client: Web3AvsClient
    operators: tuple[Operator, ...]


@pytest.fixture(scope="module")
def anvil() -> Iterator[str]:
    chain = Anvil()
    try:
        yield chain.url
    finally:
        chain.stop()


def _deploy(url: str, out: Path) -> Deployment:
    return deploy_contracts(url, out)


def _register(client: Web3AvsClient, w3: Web3, deployment: Deployment, secret: int) -> Operator:
    account: LocalAccount = Account.create()
    keys = bls.compute_key_pair(bls.SecretKey(secret))
    restake(w3, deployment, account, STAKE)
    operator = Web3AvsClient(w3, deployment, account)
    register_operator(operator, account, keys, "grpc://127.0.0.1:50051", [0], allocate_wad=10**18)
    return Operator(account, keys)


@pytest.fixture(scope="module")
def devnet(anvil: str) -> Iterator[Devnet]:
    out = CONTRACTS / "deployments" / f"pytest-{os.getpid()}.json"
    try:
        deployment = _deploy(anvil, out)
    finally:
        out.unlink(missing_ok=True)
    w3 = Web3(Web3.HTTPProvider(anvil))
    client = Web3AvsClient(w3, deployment, Account.from_key(ANVIL_KEY_0))
    operators = tuple(_register(client, w3, deployment, secret) for secret in (11, 22, 33, 44))
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    yield Devnet(w3, deployment, client, operators)


def _leaves() -> list[BatchLeaf]:
    return [BatchLeaf(Web3.keccak(text=f"req{i}"), Web3.keccak(text=f"out{i}")) for i in range(64)]


def _header(devnet: Devnet, batch_index: int) -> BatchHeader:
    root = compute_merkle_tree(_leaves()).root
    return BatchHeader(batch_index, root, devnet.w3.eth.block_number - 1, QUORUMS)


def _certificate(devnet: Devnet, header: BatchHeader, non_signers: tuple[Operator, ...]) -> NonSignerStakesAndSignature:
    digest = devnet.client.get_batch_digest(header)
    signers = [op for op in devnet.operators if op not in non_signers]
    ordered = sorted(non_signers, key=lambda op: op.keys.operator_id)
    ids = [op.keys.operator_id for op in ordered]
    indices: CheckSignaturesIndices = devnet.client.get_check_signatures_indices(header.reference_block, QUORUMS, ids)
    return NonSignerStakesAndSignature(
        non_signer_pubkeys=tuple(op.keys.pubkey_g1 for op in ordered),
        quorum_apks=(devnet.client.get_apk(0),),
        apk_g2=bls.aggregate_g2([op.keys.pubkey_g2 for op in signers]),
        sigma=bls.aggregate_g1([bls.sign(op.keys.secret, digest) for op in signers]),
        indices=indices,
    )


def test_registered_operator_ids_match_python(devnet: Devnet) -> None:
    for op in devnet.operators:
        assert devnet.client.get_operator_id(Address(op.account.address)) == op.keys.operator_id


def test_the_operator_example_config_names_the_contracts_of_a_fresh_local_deployment(devnet: Devnet) -> None:
    """``operator.example.yaml`` works against ``Deploy.s.sol`` on a fresh anvil as written: its task
    manager is the deployed one and its authorised aggregator is one the task manager allows."""
    from avs_operator.config import load_config

    example = load_config(CONTRACTS.parent / "operator" / "operator.example.yaml")
    assert Address(Web3.to_checksum_address(example.chain.task_manager)) == devnet.deployment.task_manager
    assert example.chain.chain_id == devnet.w3.eth.chain_id
    for aggregator in example.auth.authorised_aggregators:
        assert devnet.client.task_manager.functions.isAggregator(aggregator).call(), aggregator


def test_batch_digest_matches_python(devnet: Devnet) -> None:
    from avs.messages import compute_digest

    header = _header(devnet, 99)
    assert devnet.client.get_batch_digest(header) == compute_digest(devnet.client.get_domain(), header)


def test_certify_batch_all_signers_accepted(devnet: Devnet) -> None:
    header = _header(devnet, 1)
    devnet.client.certify_batch(header, _certificate(devnet, header, ()))
    assert devnet.client.get_certified_block(1) > 0


def test_certify_batch_with_non_signer_accepted(devnet: Devnet) -> None:
    header = _header(devnet, 2)
    devnet.client.certify_batch(header, _certificate(devnet, header, (devnet.operators[2],)))
    assert devnet.client.get_certified_block(2) > 0


def test_certify_batch_tampered_root_rejected(devnet: Devnet) -> None:
    header = _header(devnet, 3)
    cert = _certificate(devnet, header, ())
    tampered = BatchHeader(3, Web3.keccak(text="other root"), header.reference_block, QUORUMS)
    with pytest.raises(ContractRevertError) as info:
        devnet.client.certify_batch(tampered, cert)
    assert info.value.name == "InvalidBLSSignature"


def test_certify_batch_tampered_signature_rejected(devnet: Devnet) -> None:
    header = _header(devnet, 4)
    cert = _certificate(devnet, header, ())
    bad = NonSignerStakesAndSignature(
        cert.non_signer_pubkeys, cert.quorum_apks, cert.apk_g2, G1Point(1, 2), cert.indices
    )
    with pytest.raises(ContractRevertError) as info:
        devnet.client.certify_batch(header, bad)
    assert info.value.name == "InvalidBLSSignature"


def test_certify_batch_replay_rejected(devnet: Devnet) -> None:
    header = _header(devnet, 5)
    devnet.client.certify_batch(header, _certificate(devnet, header, ()))
    header2 = _header(devnet, 5)
    with pytest.raises(ContractRevertError) as info:
        devnet.client.certify_batch(header2, _certificate(devnet, header2, ()))
    assert info.value.name == "BatchAlreadyCertified"
    assert info.value.args_ == (5,)


def test_a_batch_whose_record_slot_was_reused_is_verified_against_its_event(anvil: str, tmp_path: Path) -> None:
    """A ring of one batch record slot and a 1-block challenge window: batch 2 reuses batch 1's slot
    once batch 1 is final. ``verifyLeaf`` no longer knows batch 1, and ``verify_on_chain`` checks its
    certificate against the ``BatchCertified`` event instead; one that differs from it is refused."""
    from avs.client import compute_signatory_record_hash, verify_on_chain
    from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
    from avs.rpc.operator.v1 import operator_pb2 as op
    from avs_aggregator.chain import Web3ChainWriter

    env = {"BATCH_RECORD_RING": "1", "CHALLENGE_WINDOW": "1"}
    deployment = deploy_contracts(anvil, tmp_path / "ring.json", env)
    w3 = Web3(Web3.HTTPProvider(anvil))
    client = Web3AvsClient(w3, deployment, Account.from_key(ANVIL_KEY_0))
    ring = Devnet(w3, deployment, client, tuple(_register(client, w3, deployment, s) for s in (11, 22)))
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    first = _header(ring, 1)
    first_tx = client.certify_batch(first, _certificate(ring, first, ()))
    first_block = client.get_certified_block(1)
    tree = compute_merkle_tree(_leaves())
    certificate = ag.Certificate(
        request_hash=tree.leaves[5].request_hash,
        output_hash=tree.leaves[5].output_hash,
        batch_header=op.BatchHeader(
            batch_index=1, leaves_root=first.leaves_root, reference_block=first.reference_block, quorum_numbers=QUORUMS
        ),
        merkle_proof=tree.get_proof(5),
        signatory_record_hash=compute_signatory_record_hash(first.reference_block, []),
    )
    task_manager = client.task_manager
    assert verify_on_chain(certificate, task_manager)

    with pytest.raises(ContractRevertError) as busy:  # batch 1 is still in its challenge window
        second = _header(ring, 2)
        client.certify_batch(second, _certificate(ring, second, ()))
    assert busy.value.name == "BatchSlotNotFinal"
    w3.provider.make_request("anvil_mine", ["0x2"])  # type: ignore[arg-type]
    second = _header(ring, 2)
    client.certify_batch(second, _certificate(ring, second, ()))
    assert client.get_certified_block(1) == 0 and client.get_certified_block(2) > 0
    assert client.get_ring_slot(1) == (2, client.get_certified_block(2))

    # The aggregator's view: batch 1 is still certified, by its event (not "removed by a reorg").
    writer = Web3ChainWriter(client)
    record = compute_signatory_record_hash(first.reference_block, [])
    assert writer.get_certification(1) == (first_block, bytes(first_tx))
    assert writer.is_certified(first, record)
    assert not writer.is_certified(BatchHeader(1, Web3.keccak(text="other"), first.reference_block, QUORUMS), record)
    assert writer.get_certification(3) is None and writer.get_ring_slot(3) == (2, client.get_certified_block(2))
    header = certificate.batch_header
    args = (header.batch_index, header.leaves_root, header.reference_block, header.quorum_numbers)
    leaf = (certificate.signatory_record_hash, certificate.request_hash, certificate.output_hash)
    assert not task_manager.functions.verifyLeaf(args, *leaf, list(certificate.merkle_proof)).call()
    assert verify_on_chain(certificate, task_manager, from_block=deployment.start_block)

    tampered = ag.Certificate()
    tampered.CopyFrom(certificate)
    tampered.output_hash = Web3.keccak(text="another output")
    assert not verify_on_chain(tampered, task_manager, from_block=deployment.start_block)
    tampered.CopyFrom(certificate)
    tampered.signatory_record_hash = compute_signatory_record_hash(first.reference_block, [b"\x01" * 32])
    assert not verify_on_chain(tampered, task_manager, from_block=deployment.start_block)
    tampered.CopyFrom(certificate)
    tampered.batch_header.batch_index = 7  # never certified
    assert not verify_on_chain(tampered, task_manager, from_block=deployment.start_block)


class _Logs:
    """A task manager stand-in for ``find_batch_certified``: a head and one log at ``at``."""

    def __init__(self, head: int, at: int) -> None:
        self.head, self.at, self.ranges = head, at, []  # type: ignore[var-annotated]
        self.w3 = self
        self.eth = self
        self.events = self

    @property
    def block_number(self) -> int:
        return self.head

    def BatchCertified(self) -> _Logs:  # the event, as web3 names it
        return self

    def get_logs(self, from_block: int, to_block: int, argument_filters: dict[str, int]) -> list[dict[str, object]]:
        self.ranges.append((from_block, to_block))
        if not from_block <= self.at <= to_block:
            return []
        args = {
            "batchIndex": argument_filters["batchIndex"],
            "leavesRoot": b"\1" * 32,
            "referenceBlock": self.at - 1,
            "quorumNumbers": b"\0",
            "signatoryRecordHash": b"\2" * 32,
        }
        return [{"args": args, "blockNumber": self.at, "transactionHash": b"\3" * 32}]


def test_find_batch_certified_reads_logs_in_chunks_providers_accept() -> None:
    from avs.chain.client import LOG_CHUNK_BLOCKS, find_batch_certified

    logs = _Logs(head=2 * LOG_CHUNK_BLOCKS + 500, at=2 * LOG_CHUNK_BLOCKS + 7)
    event = find_batch_certified(logs, 9, from_block=0)
    assert event is not None and (event.batch_index, event.block_number) == (9, logs.at)
    assert logs.ranges == [
        (0, LOG_CHUNK_BLOCKS - 1),
        (LOG_CHUNK_BLOCKS, 2 * LOG_CHUNK_BLOCKS - 1),
        (2 * LOG_CHUNK_BLOCKS, logs.head),
    ]
    assert find_batch_certified(_Logs(head=100, at=500), 9, from_block=50) is None


def test_a_send_not_mined_in_time_is_a_clear_error_naming_its_transaction(devnet: Devnet) -> None:
    """web3's TimeExhausted used to escape as a traceback (``avs request --insure`` half done); the
    transaction may still be mined, so the error names it."""
    header = _header(devnet, 40)
    signatures = _certificate(devnet, header, ())
    devnet.w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    devnet.client.receipt_timeout = 0.3
    try:
        with pytest.raises(TransactionPendingError, match=r"transaction 0x[0-9a-f]{64} was not mined within 0\.3 s"):
            devnet.client.certify_batch(header, signatures)
    finally:
        devnet.client.receipt_timeout = RECEIPT_TIMEOUT_SECONDS
        devnet.w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
        devnet.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    assert devnet.client.is_certified(header, compute_signatory_record_hash(header.reference_block, []))


def test_signed_stake_shares_are_counted_on_chain_not_taken_from_the_certificate(devnet: Devnet) -> None:
    """verifyLeaf proves only the task manager's threshold: a certificate stating a larger signed
    share than its non-signers left (found by a review: `avs verify --min-share-bps` passed one
    signed by a quarter of the stake) is caught by counting the registry's stakes at its block."""
    from avs.client import check_stakes_on_chain
    from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
    from avs.rpc.operator.v1 import operator_pb2 as op

    header = _header(devnet, 41)
    non_signers = tuple(sorted(devnet.operators[:1], key=lambda o: o.keys.operator_id))
    devnet.client.certify_batch(header, _certificate(devnet, header, non_signers))
    ids = [OperatorId(o.keys.operator_id) for o in non_signers]
    stakes = devnet.client.get_signed_stakes(header.reference_block, QUORUMS, ids)
    signed, total = stakes[0]
    assert total > 0 and signed * 4 == total * 3  # four equal stakes, one did not sign
    assert devnet.client.get_signed_stakes(header.reference_block, QUORUMS, []) == {0: (total, total)}

    def certificate(stated_signed: int) -> ag.Certificate:
        return ag.Certificate(
            batch_header=op.BatchHeader(
                batch_index=41,
                leaves_root=header.leaves_root,
                reference_block=header.reference_block,
                quorum_numbers=QUORUMS,
            ),
            non_signer_ids=ids,
            quorum_stakes=[ag.QuorumStake(quorum_number=0, signed_stake=str(stated_signed), total_stake=str(total))],
        )

    shares, problems = check_stakes_on_chain(certificate(signed), devnet.client, min_share_bps=6667)
    assert shares == {0: 0.75} and problems == []
    _, problems = check_stakes_on_chain(certificate(total), devnet.client, min_share_bps=6667)
    assert problems == [f"quorum 0: the certificate states {total}/{total} signed, the chain has {signed}/{total}"]
    _, problems = check_stakes_on_chain(certificate(signed), devnet.client, min_share_bps=8000)
    assert problems == ["quorum 0 signed 75.00% on chain, below the 80.00% asked"]


def test_the_challenge_deadline_read_once_matches_the_contracts(devnet: Devnet) -> None:
    """``ChallengeWindow.deadline`` (the challenger reads the window once per poll) gives the task
    manager's ``challengeDeadline`` for every block, through lowerings and a raise of the window."""
    client, w3 = devnet.client, devnet.w3
    threshold, max_age, original = client.task_manager.functions.config().call()

    def set_window(blocks: int) -> None:
        client.transact(client.task_manager.functions.setConfig((threshold, max_age, blocks)))
        w3.provider.make_request("anvil_mine", [hex(7)])  # type: ignore[arg-type]

    try:
        for blocks in (original // 2, original * 3, 5, 2, 40):
            set_window(blocks)
            window = client.get_challenge_window()
            assert window.blocks == blocks
            head = w3.eth.block_number
            for certified in range(max(0, head - original - 20), head + 30, 3):
                expected = client.task_manager.functions.challengeDeadline(certified).call()
                assert window.deadline(certified) == expected, (blocks, certified)
        assert client.get_challenge_window().kept_blocks > 0  # a lowering was recorded
    finally:
        set_window(original)


def test_the_aggregator_refuses_a_first_batch_index_the_ring_cannot_take(devnet: Devnet) -> None:
    """Found in review: with ``batch.first_index`` past ``recordRing x (MAX_EPOCH_STEP + 1)`` every
    batch reverted ``BatchIndexTooFar`` and failed; the aggregator refuses to start with it."""
    from avs.errors import InvalidInputError
    from avs_aggregator.app import check_first_batch_index

    functions = devnet.client.task_manager.functions
    ring, step = int(functions.recordRing().call()), int(functions.MAX_EPOCH_STEP().call())
    assert (ring, step) == (8192, 1 << 16)
    check_first_batch_index(devnet.client, ring * (step + 1) - 1)
    with pytest.raises(InvalidInputError, match=f"at most {ring * (step + 1) - 1}"):
        check_first_batch_index(devnet.client, ring * (step + 1))

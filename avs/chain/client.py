"""Reader/writer Protocols over the AVS contracts, and their web3.py implementation.

Logic takes the Protocols; only the edge builds a ``Web3AvsClient``. ABIs come from forge's
build output (``avs.chain.abi``); contract reverts surface as ``ContractRevertError`` carrying
the custom error's name, decoded with the selectors of that same output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from eth_abi import encode
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError, TimeExhausted
from web3.types import Nonce, TxParams

from avs.chain.abi import compute_error_selectors, decode_custom_error, load_abi
from avs.chain.deployment import Deployment
from avs.crypto.curve import G1Point, G2Point
from avs.errors import AvsError
from avs.messages import BatchHeader, Domain
from avs.types import Address, OperatorId

_ERROR_SOURCES = (
    "InferenceTaskManager",
    "OperatorRegistry",
    "LocalRestakingCore",
    "QuorumBitmaps",
    "FaultManager",
    "InsurancePool",
    "ERC20",  # the pool's asset and the stake token (OpenZeppelin's custom errors)
)
_G1_ABI = "(uint256,uint256)"
_G2_ABI = "(uint256[2],uint256[2])"
_PUBKEY_REGISTRATION_ABI = f"({_G1_ABI},{_G1_ABI},{_G2_ABI})"


# A plain send's wait for its receipt: two minutes is ten mainnet blocks.
RECEIPT_TIMEOUT_SECONDS = 120.0


class TransactionPendingError(AvsError):
    """A transaction sent but not mined in time: it may still be mined (its hash is in the message)."""


class ContractRevertError(AvsError):
    """A transaction or call reverted with a custom error of the AVS contracts."""

    def __init__(self, name: str, args: tuple[Any, ...]) -> None:
        super().__init__(f"{name}{args}")
        self.name = name
        self.args_ = args


@dataclass(frozen=True, slots=True)
class CheckSignaturesIndices:
    non_signer_quorum_bitmap_indices: tuple[int, ...]
    quorum_apk_indices: tuple[int, ...]
    total_stake_indices: tuple[int, ...]
    non_signer_stake_indices: tuple[tuple[int, ...], ...]


@dataclass(frozen=True, slots=True)
class NonSignerStakesAndSignature:
    """``IBLSSignatureChecker.NonSignerStakesAndSignature``; non-signers sorted by operator id."""

    non_signer_pubkeys: tuple[G1Point, ...]
    quorum_apks: tuple[G1Point, ...]
    apk_g2: G2Point
    sigma: G1Point
    indices: CheckSignaturesIndices


class RegistryReader(Protocol):
    def get_operator_id(self, operator: Address) -> OperatorId: ...

    def get_apk(self, quorum_number: int) -> G1Point: ...

    def get_check_signatures_indices(
        self, reference_block: int, quorum_numbers: bytes, non_signer_ids: Sequence[OperatorId]
    ) -> CheckSignaturesIndices: ...


class TaskManagerWriter(Protocol):
    def certify_batch(self, header: BatchHeader, signatures: NonSignerStakesAndSignature) -> bytes: ...


def encode_g1(point: G1Point) -> tuple[int, int]:
    return (point.x, point.y)


def encode_g2(point: G2Point) -> tuple[list[int], list[int]]:
    return ([point.x_im, point.x_re], [point.y_im, point.y_re])


def encode_registration_data(
    socket: str,
    signature: G1Point,
    pubkey_g1: G1Point,
    pubkey_g2: G2Point,
    kicks: Mapping[int, str] | None = None,
) -> bytes:
    """The ``data`` of ``registerForOperatorSets``: abi.encode(socket, PubkeyRegistrationParams,
    OperatorKick[]), ``kicks`` mapping a quorum to the member to replace there if it is full (churn)."""
    params = (encode_g1(signature), encode_g1(pubkey_g1), encode_g2(pubkey_g2))
    kick_list = [(quorum, Web3.to_checksum_address(member)) for quorum, member in sorted((kicks or {}).items())]
    return encode(["string", _PUBKEY_REGISTRATION_ABI, "(uint8,address)[]"], [socket, params, kick_list])


def encode_batch_header(header: BatchHeader) -> tuple[int, bytes, int, bytes]:
    return (header.batch_index, header.leaves_root, header.reference_block, header.quorum_numbers)


class HeaderFields(Protocol):
    """A batch header: ``avs.messages.BatchHeader`` or its protobuf message."""

    @property
    def batch_index(self) -> int: ...
    @property
    def leaves_root(self) -> bytes: ...
    @property
    def reference_block(self) -> int: ...
    @property
    def quorum_numbers(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class BatchCertifiedEvent:
    """A task manager's ``BatchCertified`` log: the lasting record of a certification, also once the
    task manager's record ring has reused the batch's slot."""

    batch_index: int
    leaves_root: bytes
    reference_block: int
    quorum_numbers: bytes
    signatory_record_hash: bytes
    block_number: int
    tx_hash: bytes

    def describes(self, header: HeaderFields, signatory_record_hash: bytes) -> bool:
        """Whether this certification is exactly ``header`` with ``signatory_record_hash``."""
        ours = (self.batch_index, self.leaves_root, self.reference_block, self.quorum_numbers)
        theirs = (header.batch_index, bytes(header.leaves_root), header.reference_block, bytes(header.quorum_numbers))
        return ours == theirs and self.signatory_record_hash == bytes(signatory_record_hash)


LOG_CHUNK_BLOCKS = 10_000  # providers cap the block range of one eth_getLogs


def find_batch_certified(task_manager: Any, batch_index: int, from_block: int) -> BatchCertifiedEvent | None:
    """The ``BatchCertified`` log of ``batch_index`` on ``task_manager`` (a web3 contract), searched
    from ``from_block`` (a batch's reference block: it is certified within ``maxReferenceAge``
    blocks of it) to the head in chunks; an index is certified at most once."""
    head = int(task_manager.w3.eth.block_number)
    event = task_manager.events.BatchCertified()
    for start in range(max(from_block, 0), head + 1, LOG_CHUNK_BLOCKS):
        end = min(start + LOG_CHUNK_BLOCKS - 1, head)
        logs = event.get_logs(from_block=start, to_block=end, argument_filters={"batchIndex": batch_index})
        if logs:
            return _batch_certified_event(logs[0])
    return None


def _batch_certified_event(log: Any) -> BatchCertifiedEvent:
    args = log["args"]
    return BatchCertifiedEvent(
        batch_index=int(args["batchIndex"]),
        leaves_root=bytes(args["leavesRoot"]),
        reference_block=int(args["referenceBlock"]),
        quorum_numbers=bytes(args["quorumNumbers"]),
        signatory_record_hash=bytes(args["signatoryRecordHash"]),
        block_number=int(log["blockNumber"]),
        tx_hash=bytes(log["transactionHash"]),
    )


def encode_signatures(params: NonSignerStakesAndSignature) -> tuple[Any, ...]:
    idx = params.indices
    return (
        list(idx.non_signer_quorum_bitmap_indices),
        [encode_g1(p) for p in params.non_signer_pubkeys],
        [encode_g1(p) for p in params.quorum_apks],
        encode_g2(params.apk_g2),
        encode_g1(params.sigma),
        list(idx.quorum_apk_indices),
        list(idx.total_stake_indices),
        [list(row) for row in idx.non_signer_stake_indices],
    )


class MinedTransaction(Protocol):
    """A successful transaction's hash and the gas it used (the aggregator's ``SentTransaction``)."""

    @property
    def tx_hash(self) -> bytes: ...

    @property
    def gas_used(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ChallengeWindow:
    """The task manager's challenge window: ``config().challengeWindowBlocks`` and the record of its
    last lowering (``loweredWindow()``), which batches certified up to then keep."""

    blocks: int
    kept_blocks: int = 0
    lowered_at: int = 0

    def deadline(self, certified_block: int) -> int:
        """The last block in which a batch certified in ``certified_block`` can be challenged: the
        contract's ``challengeDeadline`` (``_deadline``), the same rule read once for many batches."""
        deadline = certified_block + self.blocks
        if self.kept_blocks > self.blocks:
            deadline = max(deadline, min(certified_block, self.lowered_at) + self.kept_blocks)
        return deadline


@dataclass(frozen=True, slots=True)
class Receipt:
    tx_hash: bytes
    gas_used: int


class TransactionSink(Protocol):
    """What sends a contract call for the client's account and waits for it (the aggregator's
    ``TransactionSender``: nonces, fee bumps, confirmations)."""

    def send(self, fn: ContractFunction, *, confirm: bool = True) -> MinedTransaction: ...


class Web3AvsClient:
    """``RegistryReader`` and ``TaskManagerWriter`` over web3.py, signing with a local account.

    ``sender``, when set, sends every transaction of the client's own account (``transact`` without
    another account), so that a long-running service gets fee bumps instead of a bare 30 s wait."""

    def __init__(self, w3: Web3, deployment: Deployment, account: LocalAccount | None = None) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.account = account
        self.sender: TransactionSink | None = None
        self.receipt_timeout = RECEIPT_TIMEOUT_SECONDS  # a plain send's wait for its receipt
        self.registry = w3.eth.contract(
            address=Web3.to_checksum_address(deployment.operator_registry), abi=load_abi("OperatorRegistry")
        )
        self.task_manager = w3.eth.contract(
            address=Web3.to_checksum_address(deployment.task_manager), abi=load_abi("InferenceTaskManager")
        )
        self._errors = compute_error_selectors(load_abi(name) for name in _ERROR_SOURCES)

    # --- reads -------------------------------------------------------------------------

    def get_domain(self) -> Domain:
        return Domain(chain_id=self.deployment.chain_id, verifying_contract=self.deployment.task_manager)

    def get_operator_id(self, operator: Address) -> OperatorId:
        return OperatorId(bytes(self._call(self.registry.functions.getOperatorId(operator))))

    def get_apk(self, quorum_number: int) -> G1Point:
        x, y = self._call(self.registry.functions.getApk(quorum_number))
        return G1Point(x, y)

    def get_check_signatures_indices(
        self, reference_block: int, quorum_numbers: bytes, non_signer_ids: Sequence[OperatorId]
    ) -> CheckSignaturesIndices:
        raw = self._call(
            self.registry.functions.getCheckSignaturesIndices(reference_block, quorum_numbers, list(non_signer_ids))
        )
        return CheckSignaturesIndices(
            non_signer_quorum_bitmap_indices=tuple(raw[0]),
            quorum_apk_indices=tuple(raw[1]),
            total_stake_indices=tuple(raw[2]),
            non_signer_stake_indices=tuple(tuple(row) for row in raw[3]),
        )

    def get_signed_stakes(
        self, reference_block: int, quorum_numbers: bytes, non_signer_ids: Sequence[OperatorId]
    ) -> dict[int, tuple[int, int]]:
        """Each quorum's (signed, total) stake at ``reference_block`` as ``checkSignatures`` counts
        it: the quorum's total less the stake of each non-signer that was a member of it then."""
        ids = list(non_signer_ids)
        indices = self.get_check_signatures_indices(reference_block, quorum_numbers, ids)
        registry = self.registry.functions
        bitmaps = [
            int(self._call(registry.getQuorumBitmapAtBlockNumberByIndex(operator_id, reference_block, index)))
            for operator_id, index in zip(ids, indices.non_signer_quorum_bitmap_indices, strict=True)
        ]
        stakes: dict[int, tuple[int, int]] = {}
        for i, quorum in enumerate(quorum_numbers):
            total_index = indices.total_stake_indices[i]
            total = int(self._call(registry.getTotalStakeAtBlockNumberFromIndex(quorum, reference_block, total_index)))
            members = [operator_id for operator_id, bitmap in zip(ids, bitmaps, strict=True) if bitmap >> quorum & 1]
            missing = sum(
                int(self._call(registry.getStakeAtBlockNumberAndIndex(quorum, reference_block, operator_id, index)))
                for operator_id, index in zip(members, indices.non_signer_stake_indices[i], strict=True)
            )
            stakes[quorum] = (total - missing, total)
        return stakes

    def get_threshold_bps(self) -> int:
        """The task manager's ``config().thresholdBps``: the stake share every certificate needs."""
        return int(self._call(self.task_manager.functions.config())[0])

    def get_max_reference_age(self) -> int:
        """The task manager's ``config().maxReferenceAge``: certificates and fault proofs whose reference
        block is older than this many blocks are refused (``StaleReferenceBlock``)."""
        return int(self._call(self.task_manager.functions.config())[1])

    def get_challenge_window(self) -> ChallengeWindow:
        """The task manager's challenge window with its lowering record: governance may change it, so
        read it again rather than keep it. Both calls read one block, so a lowering mined between
        them cannot pair the new window with the old record (deadlines earlier than the contract's)."""
        block = self.w3.eth.block_number
        kept, lowered_at = self._guard(lambda: self.task_manager.functions.loweredWindow().call(block_identifier=block))
        config = self._guard(lambda: self.task_manager.functions.config().call(block_identifier=block))
        return ChallengeWindow(int(config[2]), int(kept), int(lowered_at))

    def get_batch_digest(self, header: BatchHeader) -> bytes:
        return bytes(self._call(self.task_manager.functions.batchDigest(encode_batch_header(header))))

    def is_certified(self, header: BatchHeader, signatory_record_hash: bytes) -> bool:
        """Whether exactly ``header`` with ``signatory_record_hash`` is certified."""
        fn = self.task_manager.functions.isCertified(encode_batch_header(header), signatory_record_hash)
        return bool(self._call(fn))

    def get_certified_block(self, batch_index: int) -> int:
        """The block in ``batch_index``'s record (0: not certified, or its ring slot was reused)."""
        return int(self._call(self.task_manager.functions.getBatch(batch_index))[1])

    def get_ring_slot(self, batch_index: int) -> tuple[int, int]:
        """(the batch index that ``batch_index``'s record ring slot holds, its certified block);
        (0, 0) when the slot is empty. A held index above ``batch_index`` means that index can no
        longer be certified, and its record, if it had one, was reused."""
        held, record = self._call(self.task_manager.functions.getRingSlot(batch_index))
        return int(held), int(record[1])

    def find_certified_event(self, batch_index: int, from_block: int | None = None) -> BatchCertifiedEvent | None:
        """``batch_index``'s ``BatchCertified`` log, from ``from_block`` (its reference block, when
        known), else from the deployment's start block."""
        start = self.deployment.start_block if from_block is None else max(from_block, self.deployment.start_block)
        return find_batch_certified(self.task_manager, batch_index, start)

    # --- writes ------------------------------------------------------------------------

    def certify_batch(self, header: BatchHeader, signatures: NonSignerStakesAndSignature) -> bytes:
        fn = self.task_manager.functions.certifyBatch(encode_batch_header(header), encode_signatures(signatures))
        return self.transact(fn)

    def is_key_pair_verified(self, apk: G1Point, apk_g2: G2Point) -> bool:
        """Whether ``verifyKeyPair`` recorded (apk, apk_g2): certificates under it skip the γ step."""
        return bool(self._call(self.task_manager.functions.isKeyPairVerified(encode_g1(apk), encode_g2(apk_g2))))

    def verify_key_pair_function(self, apk: G1Point, apk_g2: G2Point) -> ContractFunction:
        """The ``verifyKeyPair(apk, apkG2)`` transaction (for a ``transact`` or a transaction sender)."""
        return self.task_manager.functions.verifyKeyPair(encode_g1(apk), encode_g2(apk_g2))

    def transact(self, fn: ContractFunction, account: LocalAccount | None = None, *, confirm: bool = True) -> bytes:
        """Sends ``fn`` from ``account`` (default: the client's) and waits for a successful receipt."""
        return self.send(fn, account, confirm=confirm).tx_hash

    def send(
        self, fn: ContractFunction, account: LocalAccount | None = None, *, confirm: bool = True
    ) -> MinedTransaction:
        """``transact``, returning the gas used too. The client's own transactions go through
        ``sender`` when one is set (``confirm=False``: without its wait for confirmations);
        otherwise (and for another ``account``) a plain send and a wait of ``receipt_timeout``
        seconds for its receipt (``TransactionPendingError`` past it)."""
        if self.sender is not None and account is None:
            return self.sender.send(fn, confirm=confirm)
        sender = account or self.account
        if sender is None:
            raise AvsError("this client has no account to send transactions from")
        tx = self.build_transaction(fn, {"from": sender.address, "nonce": Nonce(self._nonce(sender))})
        signed = sender.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.receipt_timeout)
        except TimeExhausted:
            raise TransactionPendingError(
                f"transaction 0x{bytes(tx_hash).hex()} was not mined within {self.receipt_timeout:g} s; it may "
                "still be: look it up before sending again"
            ) from None
        if receipt["status"] != 1:
            raise AvsError(f"transaction {tx_hash.hex()} failed")
        return Receipt(bytes(tx_hash), int(receipt["gasUsed"]))

    def build_transaction(self, fn: ContractFunction, params: TxParams) -> dict[str, Any]:
        """Fills in ``fn``'s transaction, its gas limit estimated against the pending block.

        Estimating against "latest" runs the call with ``block.number`` equal to the last block;
        the registry's histories overwrite an entry written in the current block but push new
        storage slots in any later block, so a deregistration estimated in its registration's
        block needed ~100k more gas one block later and ran out of gas (issue 3). "pending" is
        the block the transaction goes into.
        """
        gas = self._guard(lambda: fn.estimate_gas(params, "pending"))
        filled = params.copy()
        filled["gas"] = gas
        return dict(self._guard(lambda: fn.build_transaction(filled)))

    def _nonce(self, account: LocalAccount) -> int:
        return self.w3.eth.get_transaction_count(account.address, "pending")

    def _call(self, fn: ContractFunction) -> Any:
        return self._guard(fn.call)

    def _guard(self, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except ContractCustomError as exc:
            raw = exc.data if isinstance(exc.data, str) else exc.message
            data = HexBytes(raw or b"")
            decoded = decode_custom_error(bytes(data), self._errors)
            if decoded is None:
                raise
            raise ContractRevertError(*decoded) from exc

"""Authenticated calls from the aggregator to operators.

An operator computes and signs only for callers the AVS authorises. Each gRPC call carries an
ECDSA signature by an aggregator key over the EIP-712 digest of

    OperatorCall(string method,bytes32 payloadHash,bytes32 operatorId,uint64 issuedAtMs)

in the AVS domain (chain id + task manager), so a call cannot be replayed on another deployment,
to another operator, or as another method. ``payloadHash`` is keccak256 of the request message
serialised deterministically with its ``auth`` field cleared. The operator refuses calls outside
a time window and calls whose digest it has already seen (replays), before any compute.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass

from eth_abi import encode
from eth_account import Account
from eth_utils import keccak, to_checksum_address

from avs.eip712 import compute_typed_digest, compute_typehash
from avs.errors import AuthenticationError, PermissionDeniedError
from avs.messages import Domain
from avs.types import Bytes32

OPERATOR_CALL_TYPE = "OperatorCall(string method,bytes32 payloadHash,bytes32 operatorId,uint64 issuedAtMs)"
OPERATOR_CALL_TYPEHASH = compute_typehash(OPERATOR_CALL_TYPE)
DEFAULT_WINDOW_MS = 30_000
DEFAULT_MAX_REMEMBERED = 200_000


@dataclass(frozen=True, slots=True)
class CallAuth:
    issued_at_ms: int
    signature: bytes  # 65 bytes r ‖ s ‖ v


def compute_call_digest(
    domain: Domain, method: str, payload_hash: bytes, operator_id: bytes, issued_at_ms: int
) -> Bytes32:
    struct_hash = keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "bytes32", "uint64"],
            [OPERATOR_CALL_TYPEHASH, keccak(text=method), payload_hash, operator_id, issued_at_ms],
        )
    )
    return Bytes32(compute_typed_digest(domain.separator, struct_hash))


def sign_call(
    private_key: bytes, domain: Domain, method: str, payload_hash: bytes, operator_id: bytes, issued_at_ms: int
) -> CallAuth:
    digest = compute_call_digest(domain, method, payload_hash, operator_id, issued_at_ms)
    return CallAuth(issued_at_ms, bytes(Account.unsafe_sign_hash(digest, private_key).signature))


CALL_SIGNATURE_BYTES = 65  # r ‖ s ‖ v


class CallAuthenticator:
    """The operator's gate: who may call, within which time window, and each call only once."""

    def __init__(
        self,
        domain: Domain,
        operator_id: bytes,
        authorised: Collection[str],
        window_ms: int = DEFAULT_WINDOW_MS,
        clock: Callable[[], float] = time.time,
        max_remembered: int = DEFAULT_MAX_REMEMBERED,
    ) -> None:
        self._domain = domain
        self._operator_id = operator_id
        self._authorised = {to_checksum_address(a) for a in authorised}
        self._window_ms = window_ms
        self._clock = clock
        self._max_remembered = max_remembered
        self._seen: OrderedDict[bytes, int] = OrderedDict()  # digest -> issued_at_ms
        self._lock = threading.Lock()

    def check_envelope(self, auth: CallAuth | None) -> CallAuth:
        """What can be refused without the payload (servers call it before hashing a large one): no
        signature, one that is not 65 bytes, a timestamp outside the window."""
        if auth is None or not auth.signature:
            raise AuthenticationError("the call is not signed")
        if len(auth.signature) != CALL_SIGNATURE_BYTES:
            raise AuthenticationError(f"a call signature is {CALL_SIGNATURE_BYTES} bytes")
        if abs(int(self._clock() * 1000) - auth.issued_at_ms) > self._window_ms:
            raise AuthenticationError(f"the call's timestamp is outside the {self._window_ms} ms window")
        return auth

    def authenticate(self, method: str, payload_hash: bytes, auth: CallAuth | None) -> str:
        """The caller's address; raises ``AuthenticationError`` or ``PermissionDeniedError``."""
        auth = self.check_envelope(auth)
        now_ms = int(self._clock() * 1000)
        digest = compute_call_digest(self._domain, method, payload_hash, self._operator_id, auth.issued_at_ms)
        caller = self._recover(digest, auth.signature)
        if caller not in self._authorised:
            raise PermissionDeniedError(f"{caller} is not an authorised aggregator")
        self._remember(digest, auth.issued_at_ms, now_ms)
        return caller

    @staticmethod
    def _recover(digest: bytes, signature: bytes) -> str:
        try:
            return str(Account._recover_hash(digest, signature=signature))
        except Exception as exc:  # eth-keys raises several types for malformed signatures
            raise AuthenticationError("the call signature is malformed") from exc

    def _remember(self, digest: bytes, issued_at_ms: int, now_ms: int) -> None:
        with self._lock:
            if digest in self._seen:
                raise AuthenticationError("the call was already made (replay)")
            self._seen[digest] = issued_at_ms
            # Forget calls that can no longer pass the time check; cap memory regardless.
            while self._seen and (
                len(self._seen) > self._max_remembered or next(iter(self._seen.values())) < now_ms - 2 * self._window_ms
            ):
                self._seen.popitem(last=False)

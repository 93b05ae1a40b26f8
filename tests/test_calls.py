"""Authenticated aggregator -> operator calls."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_utils import keccak

from avs.calls import CallAuth, CallAuthenticator, sign_call
from avs.errors import AuthenticationError, PermissionDeniedError
from avs.messages import Domain

DOMAIN = Domain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
OPERATOR_ID = keccak(text="operator")
AGGREGATOR = Account.from_key(b"\x01" * 32)
STRANGER = Account.from_key(b"\x02" * 32)
PAYLOAD = keccak(text="payload")
NOW = 1_800_000_000.0


def gate(window_ms: int = 30_000) -> CallAuthenticator:
    return CallAuthenticator(DOMAIN, OPERATOR_ID, [AGGREGATOR.address], window_ms=window_ms, clock=lambda: NOW)


def signed(key: bytes = AGGREGATOR.key, at_ms: int = int(NOW * 1000), **overrides: object) -> CallAuth:
    fields: dict[str, object] = {
        "domain": DOMAIN,
        "method": "Generate",
        "payload_hash": PAYLOAD,
        "operator_id": OPERATOR_ID,
    }
    fields.update(overrides)
    return sign_call(key, issued_at_ms=at_ms, **fields)  # type: ignore[arg-type]


def test_a_signed_call_passes_once() -> None:
    authenticator = gate()
    assert authenticator.authenticate("Generate", PAYLOAD, signed()) == AGGREGATOR.address
    with pytest.raises(AuthenticationError, match="replay"):
        authenticator.authenticate("Generate", PAYLOAD, signed())


@pytest.mark.parametrize(
    "auth",
    [
        signed(method="Verify"),  # signed for another method
        signed(payload_hash=keccak(text="other")),  # another payload
        signed(operator_id=keccak(text="another operator")),
        signed(domain=Domain(1, "0x5FbDB2315678afecb367f032d93F642f64180aa3")),  # another chain
    ],
)
def test_a_signature_for_something_else_is_not_authorised(auth: CallAuth) -> None:
    # The recovered address is some random key: not authorised.
    with pytest.raises(PermissionDeniedError):
        gate().authenticate("Generate", PAYLOAD, auth)


def test_unsigned_malformed_stale_and_foreign_calls_are_refused() -> None:
    with pytest.raises(AuthenticationError, match="not signed"):
        gate().authenticate("Generate", PAYLOAD, None)
    with pytest.raises(AuthenticationError, match="65 bytes"):
        gate().authenticate("Generate", PAYLOAD, CallAuth(int(NOW * 1000), b"\x00" * 64))
    with pytest.raises(AuthenticationError, match="malformed"):
        gate().authenticate("Generate", PAYLOAD, CallAuth(int(NOW * 1000), b"\xff" * 65))
    with pytest.raises(AuthenticationError, match="window"):
        gate().authenticate("Generate", PAYLOAD, signed(at_ms=int(NOW * 1000) - 31_000))
    with pytest.raises(AuthenticationError, match="window"):
        gate().authenticate("Generate", PAYLOAD, signed(at_ms=int(NOW * 1000) + 31_000))
    with pytest.raises(PermissionDeniedError, match="not an authorised"):
        gate().authenticate("Generate", PAYLOAD, signed(key=STRANGER.key))


def test_memory_of_seen_calls_is_bounded() -> None:
    authenticator = CallAuthenticator(DOMAIN, OPERATOR_ID, [AGGREGATOR.address], clock=lambda: NOW, max_remembered=10)
    for i in range(50):
        authenticator.authenticate("Generate", PAYLOAD, signed(at_ms=int(NOW * 1000) - i))
    assert len(authenticator._seen) == 10


def test_calls_are_signed_and_recovered_with_libsecp256k1() -> None:
    """eth-keys falls back to pure Python when coincurve is missing: every gRPC call would then cost
    the aggregator ~4 ms to sign and the operator ~6 ms to recover (the aggregator's main CPU cost)."""
    from eth_keys.backends.coincurve import CoinCurveECCBackend
    from eth_keys.datatypes import PrivateKey

    assert isinstance(PrivateKey(bytes(AGGREGATOR.key)).backend, CoinCurveECCBackend)
    assert gate().authenticate("Generate", PAYLOAD, signed()) == AGGREGATOR.address

"""Fuzzing every parser that takes outside input: no crash, only clear ``AvsError`` subclasses.

Each test feeds hypothesis-generated data (random bytes decoded as protobuf, random field values,
random JSON trees, mutated valid documents) into one parser and asserts that it either returns a
value or raises the project's documented error type. Any other exception (``KeyError``,
``AttributeError``, ``OverflowError``, ``IndexError`` ...) is a bug.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avs import keystore
from avs.client import certificate_from_json, certificate_to_json, verify_certificate
from avs.errors import AvsError, InvalidInputError, KeystoreError
from avs.messages import Attestation, BatchHeader, Domain, InferenceOutput, InferenceRequest, Verdict
from avs.rpc import convert
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs.rpc.common.v1 import bn254_pb2 as pb
from avs.rpc.operator.v1 import operator_pb2 as op
from avs_aggregator import config as aggregator_config
from avs_aggregator.pipeline import Pipeline, PipelineSettings
from avs_aggregator.server import AggregatorServicer, IntakeLimits, ServedModel
from avs_aggregator.store import Store
from avs_operator import config as operator_config
from avs_operator.slashing_protection import SlashingProtection
from tests.aggregator.fakes import DOMAIN, MODEL_ID, FakeNetwork

M = TypeVar("M", bound=Message)
EXAMPLES = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))

# --- building blocks ------------------------------------------------------------------------

words = st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=40))
field_words = st.one_of(
    words,
    st.integers(0, 2**256 - 1).map(lambda v: v.to_bytes(32, "big")),
    st.just(b"\xff" * 32),
    st.just(b"\x00" * 32),
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=20)
)
json_trees = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)


def decode(message_type: type[M], data: bytes) -> M | None:
    """Random bytes as a protobuf message; None when protobuf itself refuses them (not our parser)."""
    message = message_type()
    try:
        message.ParseFromString(data)
    except DecodeError:
        return None
    return message


def assert_clean(parse: Callable[[], object], allowed: type[BaseException] = AvsError) -> None:
    with contextlib.suppress(allowed):
        parse()


def g1_messages() -> st.SearchStrategy[pb.G1Point]:
    return st.builds(pb.G1Point, x=field_words, y=field_words)


def g2_messages() -> st.SearchStrategy[pb.G2Point]:
    return st.builds(pb.G2Point, x_im=field_words, x_re=field_words, y_im=field_words, y_re=field_words)


def request_messages() -> st.SearchStrategy[op.InferenceRequest]:
    u32 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**32 - 1]))
    return st.builds(
        op.InferenceRequest,
        model_id=words,
        prompt_hash=words,
        temperature_milli=u32,
        top_k=u32,
        top_p_micro=u32,
        seed=st.integers(0, 2**64 - 1),
        max_tokens=u32,
        stop_sequences_hash=words,
        requester=st.one_of(st.text(max_size=44), st.just("0x" + "ab" * 20), st.just("0x" + "AB" * 20)),
        nonce=words,
        messages=st.lists(
            st.builds(op.ChatMessage, role=st.text(max_size=10), content=st.text(max_size=30)), max_size=3
        ),
        stop_sequences=st.lists(st.text(max_size=8), max_size=10),
    )


# --- protobuf into avs.rpc.convert ---------------------------------------------------------


@EXAMPLES
@given(st.one_of(g1_messages(), st.binary(max_size=80).map(lambda b: decode(pb.G1Point, b))))
def test_g1_from_proto_only_raises_avs_errors(message: pb.G1Point | None) -> None:
    if message is not None:
        assert_clean(lambda: convert.g1_from_proto(message))
        assert_clean(lambda: convert.g1_from_proto(message, allow_identity=True))


@EXAMPLES
@given(st.one_of(g2_messages(), st.binary(max_size=160).map(lambda b: decode(pb.G2Point, b))))
def test_g2_from_proto_only_raises_avs_errors(message: pb.G2Point | None) -> None:
    if message is not None:
        assert_clean(lambda: convert.g2_from_proto(message))


@EXAMPLES
@given(st.one_of(request_messages(), st.binary(max_size=300).map(lambda b: decode(op.InferenceRequest, b))))
def test_request_from_proto_only_raises_avs_errors(message: op.InferenceRequest | None) -> None:
    if message is not None:
        assert_clean(lambda: convert.request_from_proto(message))


@EXAMPLES
@given(
    st.one_of(
        st.builds(
            op.Attestation,
            request_hash=words,
            output_hash=words,
            verdict=st.integers(0, 2**31 - 1),  # open enum: unknown values arrive as ints
        ),
        st.binary(max_size=100).map(lambda b: decode(op.Attestation, b)),
    )
)
def test_attestation_from_proto_only_raises_avs_errors(message: op.Attestation | None) -> None:
    if message is not None:
        assert_clean(lambda: convert.attestation_from_proto(message))


@EXAMPLES
@given(
    st.one_of(
        st.builds(
            op.BatchHeader,
            batch_index=st.integers(0, 2**64 - 1),
            leaves_root=words,
            reference_block=st.integers(0, 2**32 - 1),
            quorum_numbers=st.binary(max_size=260),
        ),
        st.binary(max_size=120).map(lambda b: decode(op.BatchHeader, b)),
    )
)
def test_batch_header_from_proto_only_raises_avs_errors(message: op.BatchHeader | None) -> None:
    if message is not None:
        assert_clean(lambda: convert.batch_header_from_proto(message))


@EXAMPLES
@given(
    st.lists(st.builds(op.BatchLeaf, request_hash=words, output_hash=words), max_size=6),
    st.booleans(),
)
def test_leaves_from_proto_only_raises_avs_errors(leaves: list[op.BatchLeaf], via_bytes: bool) -> None:
    if via_bytes:  # the same leaves, through a serialised SignBatchRequest
        request = op.SignBatchRequest(leaves=leaves)
        parsed = decode(op.SignBatchRequest, request.SerializeToString())
        assert parsed is not None
        leaves = list(parsed.leaves)
    assert_clean(lambda: convert.leaves_from_proto(leaves))


def test_leaves_from_proto_bounds() -> None:
    leaf = op.BatchLeaf(request_hash=b"\x01" * 32, output_hash=b"\x02" * 32)
    with pytest.raises(InvalidInputError):
        convert.leaves_from_proto([])
    with pytest.raises(InvalidInputError):
        convert.leaves_from_proto([leaf] * (convert.MAX_BATCH_LEAVES + 1))
    assert len(convert.leaves_from_proto([leaf] * convert.MAX_BATCH_LEAVES)) == convert.MAX_BATCH_LEAVES


# --- avs.messages constructors -------------------------------------------------------------

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**300), 2**300),
    st.binary(max_size=40),
    st.text(max_size=44),
    st.floats(allow_nan=True),
    st.tuples(st.integers(-5, 2**33)),
    st.lists(st.integers(), max_size=2),
)


@EXAMPLES
@given(st.lists(anything, min_size=10, max_size=10))
def test_inference_request_constructor_only_raises_invalid_input(values: list[Any]) -> None:
    assert_clean(lambda: InferenceRequest(*values), InvalidInputError)


@EXAMPLES
@given(anything, anything, st.one_of(anything, st.sampled_from(list(Verdict))))
def test_attestation_constructor_only_raises_invalid_input(a: Any, b: Any, verdict: Any) -> None:
    assert_clean(lambda: Attestation(a, b, verdict), InvalidInputError)


@EXAMPLES
@given(anything, anything, anything, st.one_of(anything, st.binary(max_size=300)))
def test_batch_header_constructor_only_raises_invalid_input(a: Any, b: Any, c: Any, d: Any) -> None:
    assert_clean(lambda: BatchHeader(a, b, c, d), InvalidInputError)


@EXAMPLES
@given(anything, anything, st.one_of(anything, st.tuples(anything, anything)))
def test_inference_output_constructor_only_raises_invalid_input(a: Any, b: Any, c: Any) -> None:
    assert_clean(lambda: InferenceOutput(a, b, c), InvalidInputError)


@EXAMPLES
@given(anything, anything)
def test_domain_constructor_only_raises_invalid_input(a: Any, b: Any) -> None:
    assert_clean(lambda: Domain(a, b), InvalidInputError)


# --- certificates --------------------------------------------------------------------------


@EXAMPLES
@given(st.one_of(st.text(max_size=200), json_trees.map(json.dumps)))
def test_certificate_from_json_only_raises_invalid_input(text: str) -> None:
    assert_clean(lambda: certificate_from_json(text), InvalidInputError)


@EXAMPLES
@given(st.binary(max_size=600))
def test_verify_certificate_never_raises_on_random_bytes(data: bytes) -> None:
    certificate = decode(ag.Certificate, data)
    if certificate is not None:
        check = verify_certificate(certificate, min_share_bps=6667)
        assert isinstance(check.problems, tuple)
        assert not check.ok and check.problems  # random bytes never make a valid certificate


@EXAMPLES
@given(
    request=request_messages(),
    header=st.builds(
        op.BatchHeader,
        batch_index=st.integers(0, 2**64 - 1),
        leaves_root=words,
        reference_block=st.integers(0, 2**32 - 1),
        quorum_numbers=st.binary(max_size=4),
    ),
    sigma=g1_messages(),
    apk=g2_messages(),
    signers=st.lists(
        st.builds(
            ag.Signer,
            public_key=st.builds(pb.BlsPublicKey, g1=g1_messages(), g2=g2_messages(), operator_id=words),
            multiplicity=st.integers(0, 2**32 - 1),
        ),
        max_size=2,
    ),
    quorum_stakes=st.lists(
        st.builds(
            ag.QuorumStake,
            quorum_number=st.integers(0, 255),
            signed_stake=st.one_of(st.text(alphabet="0123456789", min_size=1, max_size=30), st.text(max_size=8)),
            total_stake=st.one_of(st.text(alphabet="0123456789", min_size=1, max_size=30), st.text(max_size=8)),
        ),
        max_size=2,
    ),
    chain_id=st.integers(0, 2**64 - 1),
    task_manager=st.one_of(st.text(max_size=42), st.just(DOMAIN.verifying_contract)),
    tokens=st.lists(st.integers(0, 2**32 - 1), max_size=4),
    proof=st.lists(words, max_size=3),
)
def test_verify_certificate_never_raises_on_structured_garbage(
    request: op.InferenceRequest,
    header: op.BatchHeader,
    sigma: pb.G1Point,
    apk: pb.G2Point,
    signers: list[ag.Signer],
    quorum_stakes: list[ag.QuorumStake],
    chain_id: int,
    task_manager: str,
    tokens: list[int],
    proof: list[bytes],
) -> None:
    certificate = ag.Certificate(
        chain_id=chain_id,
        task_manager=task_manager,
        request=request,
        batch_header=header,
        sigma=sigma,
        apk_g2=apk,
        signers=signers,
        quorum_stakes=quorum_stakes,
        output_token_ids=tokens,
        merkle_proof=proof,
    )
    check = verify_certificate(certificate, min_share_bps=6667)
    assert not check.ok
    # and the JSON round trip a user would do with `avs verify`
    again = certificate_from_json(certificate_to_json(certificate))
    assert verify_certificate(again).problems


@pytest.mark.parametrize("stake", ["", "12abc", "1e18"])
def test_verify_certificate_reports_non_decimal_stakes(stake: str) -> None:
    certificate = ag.Certificate(quorum_stakes=[ag.QuorumStake(quorum_number=0, signed_stake=stake, total_stake="1")])
    check = verify_certificate(certificate)  # documented: "never raises for a bad certificate"
    assert not check.ok


# --- keystores -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keystore_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keystores")


def _keystore_documents() -> st.SearchStrategy[Any]:
    crypto = st.fixed_dictionaries(
        {},
        optional={
            "cipher": st.one_of(st.just("aes-128-ctr"), st.text(max_size=10)),
            "ciphertext": st.one_of(st.text(alphabet="0123456789abcdef", max_size=64), json_trees),
            "cipherparams": st.one_of(
                st.fixed_dictionaries({"iv": st.text(alphabet="0123456789abcdefg", max_size=34)}), json_trees
            ),
            "kdf": st.one_of(st.sampled_from(["scrypt", "pbkdf2", "argon2"]), json_trees),
            "kdfparams": st.one_of(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "n": st.one_of(st.sampled_from([1, 2, 3, 16, 0, -1]), json_scalars),
                        "r": st.one_of(st.sampled_from([1, 8, 0]), json_scalars),
                        "p": st.one_of(st.sampled_from([1, 0]), json_scalars),
                        "c": st.one_of(st.sampled_from([1, 2, 0, -5]), json_scalars),
                        "prf": st.one_of(st.just("hmac-sha256"), json_scalars),
                        "dklen": st.one_of(st.sampled_from([32, 0, 16, 64, -1]), json_scalars),
                        "salt": st.one_of(st.text(alphabet="0123456789abcdef", max_size=66), json_scalars),
                    },
                ),
                json_trees,
            ),
            "mac": st.one_of(st.text(alphabet="0123456789abcdef", max_size=64), json_scalars),
        },
    )
    document = st.fixed_dictionaries(
        {},
        optional={
            "pubKey": st.one_of(st.just("E([1,2])"), st.just("E([1,2])"), st.text(max_size=30), json_scalars),
            "crypto": st.one_of(crypto, json_trees),
            "Crypto": st.one_of(crypto, json_trees),
            "version": st.one_of(st.just(3), json_scalars),
            "address": st.one_of(st.text(max_size=42), json_scalars),
            "id": st.text(max_size=10),
        },
    )
    return st.one_of(document, json_trees)


@EXAMPLES
@given(document=_keystore_documents())
def test_keystores_on_arbitrary_json_only_raise_keystore_errors(keystore_dir: Path, document: Any) -> None:
    path = keystore_dir / "fuzz.json"
    path.write_text(json.dumps(document))
    assert_clean(lambda: keystore.load_bls_keystore(path, "pw"), KeystoreError)
    assert_clean(lambda: keystore.load_ecdsa_keystore(path, "pw"), KeystoreError)


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"version": 3},
        {"version": 3, "crypto": "x"},
        {"version": 3, "crypto": {"kdf": "scrypt"}},
        {"version": "3"},
        {"version": 3, "crypto": {"kdf": "pbkdf2", "kdfparams": {"c": 1, "dklen": 32, "prf": "x", "salt": "00"}}},
    ],
    ids=["empty", "no-crypto", "crypto-string", "no-kdfparams", "version-string", "bad-prf"],
)
def test_ecdsa_keystore_on_malformed_json_raises_keystore_error(keystore_dir: Path, document: Any) -> None:
    path = keystore_dir / "malformed.json"
    path.write_text(json.dumps(document))
    with pytest.raises(KeystoreError):
        keystore.load_ecdsa_keystore(path, "pw")


@EXAMPLES
@given(data=st.binary(max_size=300))
def test_keystores_on_arbitrary_bytes_only_raise_keystore_errors(keystore_dir: Path, data: bytes) -> None:
    path = keystore_dir / "fuzz.bin"
    path.write_bytes(data)
    assert_clean(lambda: keystore.load_bls_keystore(path, "pw"), KeystoreError)
    assert_clean(lambda: keystore.load_ecdsa_keystore(path, "pw"), KeystoreError)


# --- config files --------------------------------------------------------------------------

_OPERATOR_VALID: dict[str, Any] = {
    "chain": {"chain_id": 31337, "task_manager": DOMAIN.verifying_contract},
    "keys": {"bls_keystore": "bls.json"},
    "models": [{"name": "tiny", "path": "/models/tiny"}],
    "auth": {"authorised_aggregators": ["0x" + "ab" * 20]},
}
_AGGREGATOR_VALID: dict[str, Any] = {
    "chain": {"rpc_url": "http://127.0.0.1:8545", "deployment_file": "deployment.json"},
    "keys": {"ecdsa_keystore": "aggregator.json"},
    "models": [{"name": "tiny", "model_id": "0x" + "11" * 32}],
    "batch": {"max_size": 4},
}


def _mutate(valid: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A valid config with one section or one field replaced by random YAML-like data."""

    def replace(path: tuple[str, ...], value: Any) -> Any:
        document = json.loads(json.dumps(valid))
        target = document
        for key in path[:-1]:
            target = target.setdefault(key, {}) if isinstance(target, dict) else target
        if isinstance(target, dict):
            target[path[-1]] = value
        return document

    paths = [(k,) for k in valid] + [(k, f) for k, v in valid.items() if isinstance(v, dict) for f in v]
    paths += [("unknown_section",), ("chain", "extra_field")]
    return st.builds(replace, st.sampled_from(paths), json_trees)


@EXAMPLES
@given(st.one_of(json_trees, _mutate(_OPERATOR_VALID)))
def test_operator_parse_config_only_raises_config_error(data: Any) -> None:
    assert_clean(lambda: operator_config.parse_config(data), operator_config.ConfigError)


@EXAMPLES
@given(st.one_of(json_trees, _mutate(_AGGREGATOR_VALID)))
def test_aggregator_parse_config_only_raises_config_error(data: Any) -> None:
    assert_clean(lambda: aggregator_config.parse_config(data), aggregator_config.ConfigError)


@EXAMPLES
@given(st.text(max_size=200))
def test_config_files_with_arbitrary_text_only_raise_config_error(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    folder = tmp_path_factory.mktemp("config", numbered=True)
    path = folder / "config.yaml"
    path.write_text(text)
    assert_clean(lambda: operator_config.load_config(path), operator_config.ConfigError)
    assert_clean(lambda: aggregator_config.load_config(path), aggregator_config.ConfigError)


# --- slashing-protection import ------------------------------------------------------------

hex32 = st.one_of(
    st.binary(min_size=32, max_size=32).map(lambda b: "0x" + b.hex()),
    st.text(max_size=70),
    json_scalars,
)
_attestation_items = st.fixed_dictionaries(
    {},
    optional={
        "domain_separator": hex32,
        "request_hash": hex32,
        "output_hash": hex32,
        "verdict": st.one_of(st.sampled_from(["ACCEPT", "REJECT", "accept", "MAYBE"]), json_scalars),
    },
)
_batch_items = st.fixed_dictionaries(
    {},
    optional={
        "domain_separator": hex32,
        "batch_index": st.one_of(st.integers(-5, 2**70), st.text(max_size=6), json_scalars),
        "leaves_root": hex32,
        "reference_block": st.one_of(st.integers(-5, 2**40), json_scalars),
        "quorum_numbers": st.one_of(st.sampled_from(["0x00", "0x", "0x0001", "0x0000", "zz"]), json_scalars),
    },
)
_interchange = st.one_of(
    json_trees,
    st.fixed_dictionaries(
        {"interchange_format_version": st.one_of(st.just("1"), json_scalars)},
        optional={
            "attestations": st.one_of(st.lists(st.one_of(_attestation_items, json_trees), max_size=3), json_trees),
            "batches": st.one_of(st.lists(st.one_of(_batch_items, json_trees), max_size=3), json_trees),
        },
    ),
)


@pytest.fixture(scope="module")
def protection(tmp_path_factory: pytest.TempPathFactory) -> SlashingProtection:
    return SlashingProtection(f"sqlite:///{tmp_path_factory.mktemp('protection') / 'p.sqlite'}")


@EXAMPLES
@given(document=_interchange)
def test_slashing_protection_import_only_raises_avs_errors(protection: SlashingProtection, document: Any) -> None:
    assert_clean(lambda: protection.import_records(document))


# --- aggregator intake (Submit validation) -------------------------------------------------


class _Context:
    """The bits of ``grpc.ServicerContext`` the servicer methods touch (none, on purpose)."""


@pytest.fixture(scope="module")
def servicer(tmp_path_factory: pytest.TempPathFactory) -> AggregatorServicer:
    network = FakeNetwork([{0: 100}])
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('intake') / 'agg.sqlite'}")
    pipeline = Pipeline(DOMAIN, store, network, network, network, PipelineSettings(workers=1, max_pending=10**9))
    models = {MODEL_ID: ServedModel("tiny", MODEL_ID, None)}
    return AggregatorServicer(pipeline, models, IntakeLimits(max_chat_chars=2000, max_new_tokens=64))


submit_requests = st.builds(
    ag.SubmitRequest,
    request=st.one_of(
        request_messages(),
        request_messages().map(lambda r: _with(r, model_id=MODEL_ID)),
        request_messages().map(lambda r: _with(r, model_id=b"")),
    ),
    model_name=st.sampled_from(["", "tiny", "other"]),
    quorum_numbers=st.binary(max_size=3),
    threshold_bps=st.integers(0, 2**32 - 1),
    requester_signature=st.one_of(st.just(b""), st.binary(max_size=70)),
)


def _with(request: op.InferenceRequest, **fields: Any) -> op.InferenceRequest:
    copy = op.InferenceRequest()
    copy.CopyFrom(request)
    for key, value in fields.items():
        setattr(copy, key, value)
    return copy


@EXAMPLES
@given(st.one_of(submit_requests, st.binary(max_size=300).map(lambda b: decode(ag.SubmitRequest, b))))
def test_submit_validation_only_raises_avs_errors(
    servicer: AggregatorServicer, message: ag.SubmitRequest | None
) -> None:
    if message is not None:
        context: Any = _Context()
        assert_clean(lambda: servicer.Submit(message, context))

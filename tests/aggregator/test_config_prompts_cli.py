"""Config parsing (the example file too), torch-free prompt hashes, the CLI entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from avs.prompts import PromptEncoder
from avs_aggregator.cli import main
from avs_aggregator.config import ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "aggregator" / "aggregator.example.yaml"


def test_example_config_parses_and_resolves_paths() -> None:
    config = load_config(EXAMPLE)
    assert config.chain.deployment_file.is_absolute()
    assert config.models[0].tokenizer_path is not None and config.models[0].tokenizer_path.is_absolute()
    assert config.policy.default_threshold_bps == 6667
    # a relative SQLite path lands next to the config file, not in the process's working directory
    assert config.database_url == f"sqlite:///{EXAMPLE.parent.resolve()}/aggregator-data/aggregator.sqlite"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"models": []}, "models"),
        ({"policy": {"default_quorums": [1]}}, "policy"),
        ({"batch": {"max_size": 0}}, "batch.max_size"),
        ({"models": [{"name": "m", "model_id": "0x12"}]}, "models.0.model_id"),
        ({"surprise": 1}, "surprise"),
        # accepted before (found by a review helper), each failing later: intake refusing every
        # request, a traceback at start, or an overflow at the first batch
        ({"policy": {"default_quorums": [0, 0]}}, "policy.default_quorums"),
        ({"policy": {"quorums": [300]}}, "policy.quorums"),
        ({"policy": {"quorums": [-1]}}, "policy.quorums"),
        ({"log_level": "VERBOSE"}, "log_level"),
        ({"batch": {"first_index": 2**63}}, "batch.first_index"),
        ({"grpc_listen": "nonsense"}, "grpc_listen"),
        (
            {"models": [{"name": "a", "model_id": "0x" + "00" * 32}, {"name": "b", "model_id": "0x" + "00" * 32}]},
            "models",
        ),
        # YAML's .inf and huge values: an OverflowError at start, a fee cap of 0 (nothing mined), a
        # gRPC deadline refused at once (every call DEADLINE_EXCEEDED)
        ({"chain": {"deployment_file": "d.json", "max_fee_gwei": float("inf")}}, "chain.max_fee_gwei"),
        ({"chain": {"deployment_file": "d.json", "max_fee_gwei": 1e-12}}, "chain.max_fee_gwei"),
        ({"deadlines": {"verify_seconds": 1e10}}, "deadlines.verify_seconds"),
        ({"deadlines": {"generate_seconds": float("nan")}}, "deadlines.generate_seconds"),
        ({"chain": {"deployment_file": "d.json", "receipt_timeout_seconds": float("inf")}}, "chain.receipt_timeout"),
        # a valid Submit or its certified status would not fit in one gRPC message (RESOURCE_EXHAUSTED,
        # which clients read as "overloaded")
        ({"policy": {"max_chat_chars": 2_000_000}}, "policy: Value error, max_chat_chars 2000000"),
        ({"policy": {"max_new_tokens": 40_000}}, "policy: Value error, max_new_tokens 40000"),
        # pruned within the hour: challengers and clients would find nothing
        ({"retention": {"keep_finished_hours": 1}}, "retention.keep_finished_hours"),
        # half a client certificate for mutual TLS: every call to an operator asking for one fails
        (
            {"keys": {"ecdsa_keystore": "k.json", "operator_tls_client_cert_file": "c.pem"}},
            "keys: Value error, operator_tls_client_cert_file and operator_tls_client_key_file go together",
        ),
    ],
)
def test_config_errors_name_the_field(patch: dict[str, object], field: str) -> None:
    base: dict[str, object] = {
        "chain": {"deployment_file": "d.json"},
        "keys": {"ecdsa_keystore": "k.json"},
        "models": [{"name": "m", "model_id": "0x" + "00" * 32}],
    }
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_config({**base, **patch})


def test_prompt_hash_matches_the_engine_without_torch(tmp_path: Path) -> None:
    from tests.inference.conftest import build_tokenizer

    build_tokenizer(tmp_path)
    from transformers import AutoTokenizer

    from avs.inference.params import compute_prompt_hash

    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the quick brown fox"}]
    tokenizer: Any = AutoTokenizer.from_pretrained(str(tmp_path))
    reference: Any = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    ids = reference["input_ids"] if hasattr(reference, "keys") else reference
    encoder = PromptEncoder(tmp_path)
    assert encoder.compute_prompt_hash(chat) == compute_prompt_hash([int(t) for t in ids])
    with pytest.raises(ValueError, match="special token"):
        encoder.encode_chat([{"role": "user", "content": "<|im_start|>system"}])


def test_challenger_example_config_parses() -> None:
    from avs_aggregator.challenger.app import load_challenger_config

    config = load_challenger_config(EXAMPLE.parent / "challenger.example.yaml")
    assert config.sample_rate == 0.1 and config.deployment_file.is_absolute()


def test_cli_version_and_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert "avs-aggregator" in capsys.readouterr().out
    assert main(["run", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no config file" in capsys.readouterr().err


def test_the_aggregator_and_the_sdk_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, avs_aggregator.app, avs_aggregator.challenger.app, avs.client; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_unreachable_rpc_is_one_line_without_its_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests' error holds the URL's path, where providers put the API key: it was a traceback on
    stderr, past the logs' redaction, and exit status 1."""
    import json

    import yaml

    from avs import keystore

    deployment: dict[str, object] = {"chain_id": 31337, "start_block": 0}
    deployment |= {key: "0x" + "11" * 20 for key in ("deployer", "aggregator", "allocation_manager")}
    deployment |= {key: "0x" + "22" * 20 for key in ("delegation_manager", "strategy", "stake_token")}
    deployment |= {key: "0x" + "33" * 20 for key in ("operator_registry", "model_registry", "task_manager")}
    (tmp_path / "deployment.json").write_text(json.dumps(deployment))
    keystore.save_ecdsa_keystore(tmp_path / "key.json", b"\x01" * 32, "pw", 1 << 12)
    config = {
        "chain": {"rpc_url": "http://127.0.0.1:1/v3/SECRETKEY", "deployment_file": "deployment.json"},
        "keys": {"ecdsa_keystore": "key.json"},
        "models": [{"name": "tiny", "model_id": "0x" + "ab" * 32}],
        "database_url": "sqlite://",
    }
    (tmp_path / "aggregator.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("AGGREGATOR_ECDSA_KEY_PASSWORD", "pw")
    assert main(["run", "--config", str(tmp_path / "aggregator.yaml")]) == 2
    err = capsys.readouterr().err
    assert "SECRETKEY" not in err and "the RPC node cannot be read" in err

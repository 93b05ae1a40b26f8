"""The ``avs`` command line, run as a user runs it: a subprocess with its own environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from avs.crypto import bls
from avs.errors import InvalidInputError
from tests.conftest import load_vectors

PASSWORD = "correct horse battery staple"


def run(*args: str, env: dict[str, str] | None = None, script: str = "avs") -> subprocess.CompletedProcess[str]:
    module = {"avs": "avs.cli", "avs-operator": "avs_operator.cli", "avs-aggregator": "avs_aggregator.cli"}[script]
    full_env = {k: v for k, v in os.environ.items() if k != "AVS_KEYSTORE_PASSWORD"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=full_env, stdin=subprocess.DEVNULL
    )


def test_bls_sign_prints_eigenlayer_ffi_json() -> None:
    case = load_vectors("bn254.json")["signatures"][0]
    out = run("bls", "sign", "--secret-key", case["secret_key"], "--message-hash", case["message_hash"])
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["signature"] == case["signature"]
    pair = bls.compute_key_pair(bls.SecretKey(int(case["secret_key"])))
    assert result["pubkey_g2"] == {
        "X": [str(pair.pubkey_g2.x_im), str(pair.pubkey_g2.x_re)],
        "Y": [str(pair.pubkey_g2.y_im), str(pair.pubkey_g2.y_re)],
    }
    assert result["operator_id"] == "0x" + pair.operator_id.hex()
    assert set(result) == {"hash_to_g1", "signature", "pubkey_g1", "pubkey_g2", "operator_id"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--secret-key", "0", "--message-hash", "0x" + "00" * 32], "secret key"),
        (["--secret-key", "seven", "--message-hash", "0x" + "00" * 32], "--secret-key"),
        (["--secret-key", "7", "--message-hash", "0x1234"], "32 bytes"),
        (["--secret-key", "7", "--message-hash", "0xzz"], "hex"),
    ],
)
def test_bls_sign_bad_input_is_one_clear_line(args: list[str], message: str) -> None:
    out = run("bls", "sign", *args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_keys_create_list_show(tmp_path: Path) -> None:
    env = {"AVS_KEYSTORE_PASSWORD": PASSWORD, "AVS_KEYS_DIR": str(tmp_path)}
    fast = ["--scrypt-n", "4096"]
    created = run("keys", "create", "--type", "bls", *fast, "alice", env=env)
    assert created.returncode == 0, created.stderr
    info = json.loads(created.stdout)
    assert PASSWORD not in created.stdout + created.stderr
    assert run("keys", "create", "--type", "ecdsa", *fast, "alice-eth", env=env).returncode == 0

    listed = run("keys", "list", env=env).stdout.splitlines()
    assert [line.split("\t")[:2] for line in listed] == [["alice", "bls"], ["alice-eth", "ecdsa"]]

    shown = json.loads(run("keys", "show", "--decrypt", "alice", env=env).stdout)
    assert shown["operator_id"] == info["operator_id"]
    assert shown["pubkey_g1"] == info["pubkey_g1"]
    assert set(shown["pubkey_g2"]) == {"X", "Y"}

    wrong = run("keys", "show", "--decrypt", "alice", env={**env, "AVS_KEYSTORE_PASSWORD": "nope"})
    assert wrong.returncode == 2 and "wrong password" in wrong.stderr

    again = run("keys", "create", "--type", "bls", *fast, "alice", env=env)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_no_password_and_no_terminal_is_a_clear_error(tmp_path: Path) -> None:
    out = run("keys", "create", "--type", "bls", "bob", env={"AVS_KEYS_DIR": str(tmp_path)})
    assert out.returncode == 2
    assert "AVS_KEYSTORE_PASSWORD" in out.stderr
    assert not list(tmp_path.iterdir())


def test_unknown_key_is_a_clear_error(tmp_path: Path) -> None:
    out = run("keys", "show", "ghost", env={"AVS_KEYS_DIR": str(tmp_path)})
    assert out.returncode == 2 and "no key named 'ghost'" in out.stderr


def test_service_binaries_report_their_version() -> None:
    assert "avs-aggregator" in run("version", script="avs-aggregator").stdout
    assert "BN254 backend: mcl" in run("version", script="avs-operator").stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--insure", "1", "--requester", "0x" + "ab" * 20], {}, "--insure and --resume need the requester's key"),
        (["--resume", "saved.json", "--requester", "0x" + "ab" * 20], {}, "from the file; drop a prompt"),
        (["--requester-key-env", "NOT_SET_ANYWHERE"], {}, "$NOT_SET_ANYWHERE is not set"),
        (["--requester-key-env", "REQ"], {"REQ": "0x1234"}, "$REQ does not hold an ECDSA secret key"),
        (
            ["--requester-key-env", "REQ", "--requester", "0x" + "ab" * 20],
            {"REQ": "0x" + "11" * 32},
            "is not the address",
        ),
        (["--requester-key-env", "REQ"], {"REQ": "0x" + "11" * 32}, "needs --deployment"),
        (["--requester-key", "ghost"], {}, "no ECDSA key named 'ghost'"),
        ([], {}, "name the requester"),
        (["--seed", "-1"], {}, "argument --seed: -1 is not in [0, 18446744073709551615]"),
        (["--max-tokens", "-5"], {}, "argument --max-tokens: -5 is not in [1, 4294967295]"),
        (["--quorum", "300"], {}, "argument --quorum: 300 is not in [0, 255]"),
        (["--threshold", "10001"], {}, "argument --threshold: 10001 is not in [0, 10000]"),
        (["--temperature", "nan"], {}, "argument --temperature: nan is not in [0.0, 10.0]"),
        (["--seed", "x"], {}, "argument --seed: 'x' is not an integer"),
        (
            ["--requester", "0x" + "ab" * 20, "--out", "/no/such/folder/cert.json"],
            {},
            "the folder /no/such/folder does not exist",
        ),
    ],
)
def test_request_key_and_insurance_options_are_checked_before_any_call(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    out = run(
        "request",
        "hi",
        "--model",
        "m",
        "--aggregator",
        "127.0.0.1:1",
        *args,
        env={"AVS_KEYS_DIR": str(tmp_path), **env},
    )
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert "11" * 32 not in out.stdout + out.stderr  # the secret is never echoed


def test_a_request_needs_a_prompt_and_a_model_unless_resumed() -> None:
    for args in ([], ["hi"], ["--model", "m"]):
        out = run("request", *args, "--requester", "0x" + "ab" * 20, "--aggregator", "127.0.0.1:1")
        assert out.returncode == 2 and "give the prompt and --model" in out.stderr, out.stderr
    out = run(
        "request",
        "--resume",
        "saved.json",
        "--insure",
        "1",
        "--requester-key-env",
        "REQ",
        env={"REQ": "0x" + "11" * 32},
    )
    assert out.returncode == 2 and "drop --insure" in out.stderr, out.stderr


def test_request_reads_the_requester_keystore_and_never_prints_it(tmp_path: Path) -> None:
    env = {"AVS_KEYSTORE_PASSWORD": PASSWORD, "AVS_KEYS_DIR": str(tmp_path)}
    created = run("keys", "create", "--type", "ecdsa", "--scrypt-n", "4096", "me", env=env)
    address = json.loads(created.stdout)["address"]
    out = run("request", "hi", "--model", "m", "--requester-key", "me", "--requester", address, env=env)
    assert out.returncode == 2 and "needs --deployment" in out.stderr  # the key opened and matched the address
    wrong = run("request", "hi", "--model", "m", "--requester-key", "me", env={**env, "AVS_KEYSTORE_PASSWORD": "no"})
    assert wrong.returncode == 2 and "wrong password" in wrong.stderr


@pytest.mark.parametrize("text", ["inf", "-Infinity", "nan", "1e400000", "abc", "0", "0.0000000000000000001"])
def test_insurance_amounts_that_are_not_token_amounts_are_clear_errors(text: str) -> None:
    from avs.cli import parse_token_amount
    from avs.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="--insure"):
        parse_token_amount(text, 18)


def test_insurance_amounts_are_in_the_pool_assets_own_decimals() -> None:
    """2 tokens of a 6-decimal asset (USDC-like) were read as 2e18 base units: a premium of 2e16,
    10^10 times the one meant, paid if the balance held it."""
    from avs.cli import format_tokens, parse_token_amount

    assert parse_token_amount("2", 6) == 2_000_000 and parse_token_amount("2.5", 18) == 25 * 10**17
    assert format_tokens(2_500_000, 6) == "2.5" and format_tokens(20_000, 6) == "0.02"
    with pytest.raises(ValueError, match="more than 6 decimals"):
        parse_token_amount("0.0000001", 6)


def test_request_prints_the_certified_tokens_decoded_with_the_given_tokenizer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Operators sign token ids, not text: with --tokenizer the text comes from the certified ids,
    and an aggregator text that differs is reported, not printed."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from avs.cli import get_certified_text, load_decoder
    from avs.rpc.aggregator.v1 import aggregator_pb2 as ag

    vocab = {"[UNK]": 0, "safe": 1, "unsafe": 2, "to": 3, "restake": 4}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    certificate = ag.Certificate(output_token_ids=[1, 3, 4], output_text="unsafe to restake")
    assert get_certified_text(certificate, load_decoder(tmp_path)) == "safe to restake"
    assert "not the certified tokens' decoding" in capsys.readouterr().err
    assert get_certified_text(certificate, None) == "unsafe to restake"  # without: the aggregator's, labelled
    assert "the aggregator's decoding" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InvalidInputError, match=r"not a tokenizer\.json"):
        load_decoder(tmp_path / "bad.json")


def test_verify_with_a_missing_or_broken_deployment_or_certificate_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "cert.json").write_text("{}")
    (tmp_path / "truncated.json").write_text('{"chain_id": 1,\n')
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe")
    cases = [
        (["--deployment", str(tmp_path / "missing.json")], "cannot read the deployment"),
        (["--deployment", str(tmp_path / "truncated.json")], "is not JSON"),
        (["--deployment", str(tmp_path / "binary.json")], "is not JSON"),
    ]
    for extra, message in cases:
        out = run("verify", str(tmp_path / "cert.json"), *extra)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
    out = run("verify", str(tmp_path / "binary.json"))
    assert out.returncode == 2 and "cannot read" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_request_and_claim_take_the_rpc_url_from_eth_rpc_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """An RPC URL holding an API key can stay out of argv (readable by every user in ps)."""
    from avs.cli import LOCAL_RPC_URL, build_parser

    claim = ["claim", "0x" + "11" * 32, "--deployment", "deployment.json"]
    monkeypatch.delenv("ETH_RPC_URL", raising=False)
    assert build_parser().parse_args(claim).rpc_url == LOCAL_RPC_URL
    monkeypatch.setenv("ETH_RPC_URL", "https://rpc.example.invalid/v3/KEY")
    for args in (claim, ["request", "hi", "--model", "m"]):
        assert build_parser().parse_args(args).rpc_url == "https://rpc.example.invalid/v3/KEY"
    assert build_parser().parse_args([*claim, "--rpc-url", "http://other:8545"]).rpc_url == "http://other:8545"


def test_verify_with_a_model_folder_checks_the_chat_and_text_the_signatures_do_not_cover(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A certificate carries its chat and output text beside what is signed (the prompt hash, the
    output tokens): edited, the offline check still passed. ``--tokenizer MODEL_DIR`` checks them."""
    from avs.cli import check_certified_text, main
    from avs.client import certificate_to_json
    from avs.gateway.models import load_local_model
    from avs.inference.params import compute_prompt_hash
    from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
    from tests.gateway.test_models import prepare
    from tests.test_client_certificate import certificate as self_made_certificate

    folder = tmp_path / "tiny"
    prepare(folder)
    model = load_local_model(folder)
    model_id, encoder = model.model_id, model.codec
    chat = [{"role": "user", "content": "is it safe to restake?"}]
    cert = ag.Certificate(output_token_ids=[5, 6], output_text=encoder.decode([5, 6]))
    cert.request.model_id = model_id
    cert.request.prompt_hash = compute_prompt_hash(encoder.encode_chat(chat))
    cert.request.messages.add(role="user", content=chat[0]["content"])
    assert check_certified_text(cert, folder) == []
    cert.request.messages[0].content = "wire your funds to 0xEVIL"
    cert.output_text = "all good"
    assert check_certified_text(cert, folder) == [
        "the certificate's chat is not the one its prompt hash commits to",
        "the certificate's output_text is not its output tokens' decoding",
    ]
    cert.request.model_id = b"\x07" * 32
    assert check_certified_text(cert, folder)[0] == f"the certificate is for another model than the one in {folder}"
    (tmp_path / "cert.json").write_text(certificate_to_json(self_made_certificate()))  # verifies offline
    assert main(["verify", str(tmp_path / "cert.json")]) == 0
    assert "chat and output text are not checked" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "cert.json"), "--tokenizer", str(folder)]) == 1
    assert "another model than the one in" in capsys.readouterr().out
    # bound to the request sent: the certificate of another request is refused
    mine = "0x" + bytes(self_made_certificate().request_hash).hex()
    assert main(["verify", str(tmp_path / "cert.json"), "--request-hash", mine]) == 0
    assert json.loads(capsys.readouterr().out)["request_checked"] is True
    assert main(["verify", str(tmp_path / "cert.json"), "--request-hash", "0x" + "77" * 32]) == 1
    assert "the certificate is for another request" in capsys.readouterr().out


def test_claim_prints_what_was_paid_and_what_stays_owed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A payout the pool cannot fund yet (its slash not cleared to it) is paid in parts: ``avs claim``
    says what this claim paid and what stays owed; ``avs claim-reward`` does the same for a challenger."""
    from types import SimpleNamespace

    import avs.chain.deployment
    import avs.chain.insurance
    from avs.cli import main

    class FakeBuyer:
        def __init__(self, w3: object, deployment: object, account: object) -> None:
            self.balance = 10

        def get_balance(self) -> int:
            return self.balance

        def claim_payout(self, request_hash: bytes) -> object:
            self.balance += 4
            return SimpleNamespace(paid=4, still_owed=6)

        def claim_reward(self) -> object:
            return SimpleNamespace(challenger="0xC4A11", paid=1, still_owed=2)

    monkeypatch.setattr(avs.chain.insurance, "InsuranceBuyer", FakeBuyer)
    monkeypatch.setattr(avs.chain.deployment, "load_deployment", lambda path: None)
    monkeypatch.setenv("CLAIM_KEY", "0x" + "11" * 32)
    common = ["--deployment", str(tmp_path / "d.json"), "--rpc-url", "http://127.0.0.1:1"]
    assert main(["claim", "0x" + "22" * 32, *common, "--requester-key-env", "CLAIM_KEY"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["paid"], printed["still_owed"], printed["balance_after"]) == ("4", "6", "14")
    assert main(["claim-reward", *common, "--key-env", "CLAIM_KEY"]) == 0
    assert json.loads(capsys.readouterr().out) == {"challenger": "0xC4A11", "paid": "1", "still_owed": "2"}
    assert main(["claim-reward", *common]) == 2  # no key
    assert "needs the challenger's key" in capsys.readouterr().err

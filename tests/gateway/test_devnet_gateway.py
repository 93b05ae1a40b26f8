"""The gateway on the real path: the devnet of ``make devnet`` (anvil, contracts, four operator
processes, the aggregator process) with a tiny model, the gateway in-process in front of its
aggregator, and the official ``openai`` client. Also the ``avs-gateway`` binary as a process."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from eth_account import Account
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from avs.chain.deployment import load_deployment
from avs.client import AggregatorClient, certificate_from_json, verify_certificate
from avs.devnet import Devnet, ServiceProcess, get_free_port
from avs.errors import UnavailableError
from avs.gateway.cli import build_service
from avs.gateway.config import load_config
from avs.gateway.models import load_local_model
from avs.gateway.server import GatewayServer
from avs.gateway.service import build_certificate_checker, connect_chain_check
from avs.inference.params import compute_prompt_hash
from avs.messages import Domain
from avs.prompts import PromptEncoder
from tests.inference.conftest import build_tiny_model
from tests.test_client_certificate import certificate as self_made_certificate

API_KEY = "sk-devnet-test"
QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "the quick brown fox"}]


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    model = build_tiny_model(tmp_path_factory.mktemp("gateway-model") / "tiny")
    network = Devnet(tmp_path_factory.mktemp("gateway-devnet"), model)
    network.start()
    yield network
    network.stop()


def start_gateway(
    devnet: Devnet, intake: AggregatorClient, deployment: Path, rpc_url: str | None = None
) -> GatewayServer:
    """The gateway as ``avs-gateway --model-dir MODEL --deployment DEPLOYMENT [--rpc-url URL]`` builds it."""
    config = load_config(
        rpc_url=rpc_url,
        aggregator=devnet.aggregator_url,
        requester=Account.create().address,
        model_dirs=[devnet.model_dir],
        deployment=deployment,
        threshold_bps=6667,
        request_timeout_seconds=120,
        listen="127.0.0.1:0",
        api_keys=API_KEY,
    )
    server = GatewayServer(build_service(intake, config), config)
    server.start()
    return server


@pytest.fixture(scope="module")
def gateway(devnet: Devnet) -> Iterator[GatewayServer]:
    with AggregatorClient(devnet.aggregator_url) as intake:
        server = start_gateway(devnet, intake, devnet.deployment_file)
        yield server
        server.stop()


@pytest.fixture(scope="module")
def client(gateway: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{gateway.port}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(devnet: Devnet) -> str:
    return devnet.model_dir.name


def test_models_list_the_aggregators_models(client: openai.OpenAI, model: str) -> None:
    assert [m.id for m in client.models.list().data] == [model]


def test_a_chat_completion_comes_with_a_certificate_that_verifies(
    client: openai.OpenAI, model: str, devnet: Devnet
) -> None:
    completion = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=6, temperature=0)
    verification = (completion.model_extra or {})["verification"]
    assert verification["state"] == "CERTIFIED" and verification["tx_hash"].startswith("0x")
    certificate = certificate_from_json(json.dumps(verification["certificate"]))
    check = verify_certificate(certificate, min_share_bps=6667)
    assert check.ok, check.problems
    assert completion.id == "chatcmpl-" + certificate.request_hash.hex()
    assert "0x" + certificate.request_hash.hex() == verification["request_hash"]
    assert completion.choices[0].message.content == certificate.output_text
    assert completion.choices[0].finish_reason == expected_finish(certificate, devnet)
    assert completion.usage is not None and completion.usage.completion_tokens == len(certificate.output_token_ids)
    prompt_ids = PromptEncoder(devnet.model_dir).encode_chat(QUESTION)
    assert completion.usage.prompt_tokens == len(prompt_ids) and compute_prompt_hash(prompt_ids) == bytes(
        certificate.request.prompt_hash
    )
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert certificate.request.max_tokens == 6 and certificate.request.temperature_milli == 0
    assert [(m.role, m.content) for m in certificate.request.messages] == [("user", "the quick brown fox")]


def expected_finish(certificate: Any, devnet: Devnet) -> str:
    """What OpenAI says of the certified output: cut by max_tokens, or ended by the model."""
    ids = list(certificate.output_token_ids)
    cut = len(ids) == certificate.request.max_tokens and ids[-1] not in load_local_model(devnet.model_dir).eos_ids
    return "length" if cut else "stop"


def test_a_streamed_chat_ends_with_the_certificate(client: openai.OpenAI, model: str, devnet: Devnet) -> None:
    stream = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=6, temperature=0, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = chunks[-1]
    certificate = certificate_from_json(json.dumps((final.model_extra or {})["verification"]["certificate"]))
    assert final.choices[0].finish_reason == expected_finish(certificate, devnet)
    assert text == certificate.output_text and verify_certificate(certificate).ok
    states = [(c.model_extra or {}).get("verification", {}).get("state") for c in chunks]
    assert "CERTIFIED" in states and states.index("CERTIFIED") == len(chunks) - 1


def test_a_text_completion(client: openai.OpenAI, model: str) -> None:
    completion = client.completions.create(model=model, prompt="operators sign", max_tokens=4, temperature=0)
    verification = (completion.model_extra or {})["verification"]
    assert completion.object == "text_completion"
    assert completion.choices[0].text == verification["certificate"]["output_text"]


def test_a_retry_under_one_idempotency_key_is_the_request_already_sent(client: openai.OpenAI, model: str) -> None:
    """The aggregator takes the second POST's request hash as the request it has: one inference,
    one certificate, for a client whose first wait timed out."""

    def ask(key: str) -> ChatCompletion:
        return client.chat.completions.create(
            model=model, messages=QUESTION, max_tokens=4, temperature=0.7, extra_headers={"Idempotency-Key": key}
        )

    first, again, other = ask("retry-1"), ask("retry-1"), ask("retry-2")
    assert first.id == again.id != other.id
    assert (first.model_extra or {})["verification"] == (again.model_extra or {})["verification"]


def test_the_certificate_can_be_fetched_later(client: openai.OpenAI, gateway: GatewayServer, model: str) -> None:
    completion = client.completions.create(model=model, prompt="hello world", max_tokens=3, temperature=0)
    body = fetch(gateway, (completion.model_extra or {})["verification"]["certificate_url"])
    certificate = body["certificate"]
    assert body["state"] == "CERTIFIED" and isinstance(certificate, dict)
    assert certificate["output_text"] == completion.choices[0].text


def test_a_client_that_goes_away_is_let_go_and_its_request_still_certified(gateway: GatewayServer, model: str) -> None:
    """A streamed request whose client closes after the first chunk: the gateway lets it go (its wait
    on the real status stream cancelled, or its next chunk refused: which comes first is a race on a
    fast devnet; the fake intake's test pins the cancellation), holds nothing, and the aggregator
    certifies the request anyway."""
    body = json.dumps({"model": model, "messages": QUESTION, "max_tokens": 8, "temperature": 0, "stream": True})
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
    head += "Content-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(head.encode() + body.encode())
        reply = b""
        while b"\n\ndata: " not in reply and b"\r\n\r\ndata: " not in reply:
            reply += sock.recv(4096)
    url = json.loads(reply.split(b"data: ", 1)[1].split(b"\n\n", 1)[0])["verification"]["certificate_url"]
    deadline = time.monotonic() + 60
    while (state := fetch(gateway, url)["state"]) != "CERTIFIED":
        assert time.monotonic() < deadline and state != "FAILED", state
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while gateway.in_flight:
        assert time.monotonic() < deadline, "the gateway still follows a request its client left"
        time.sleep(0.05)


def fetch(gateway: GatewayServer, path: str) -> dict[str, object]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{gateway.port}{path}", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body: dict[str, object] = json.loads(response.read())
    return body


def test_the_aggregator_refusal_reaches_the_client(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=model, prompt="x", max_tokens=100_000)


def test_a_certificate_of_another_deployment_is_refused(devnet: Devnet, model: str, tmp_path: Path) -> None:
    """The real check: a gateway told of another deployment (here, another chain) refuses the
    certificate the devnet's aggregator sends (502), though every signature in it verifies."""
    deployment = json.loads(devnet.deployment_file.read_text())
    (tmp_path / "other.json").write_text(json.dumps({**deployment, "chain_id": 1}))
    with AggregatorClient(devnet.aggregator_url) as intake:
        server = start_gateway(devnet, intake, tmp_path / "other.json")
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=API_KEY, max_retries=0)
            with pytest.raises(openai.APIStatusError) as refused:
                client.chat.completions.create(model=model, messages=QUESTION, max_tokens=3, temperature=0)
        finally:
            server.stop()
    assert refused.value.status_code == 502 and "not 1 / " in refused.value.message
    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "certificate_mismatch"


def test_with_rpc_url_certificates_are_checked_on_chain(devnet: Devnet, model: str) -> None:
    """Offline, a certificate is checked against itself: one an aggregator signed with its own keys
    (listed as the operators') passes. With ``rpc_url`` the gateway also asks the chain: the honest
    completion's leaf was certified there, the self-made certificate's was not."""
    assert devnet.anvil is not None
    deployment = load_deployment(devnet.deployment_file)
    forged = self_made_certificate(domain=Domain(deployment.chain_id, deployment.task_manager))
    offline = build_certificate_checker(Domain(deployment.chain_id, deployment.task_manager), 6667)
    assert offline(forged, bytes(forged.request_hash)) == ()
    on_chain = connect_chain_check(devnet.anvil.url, deployment, 6667)
    assert list(on_chain(forged)) == ["the chain has not certified this leaf (verifyLeaf)"]
    # a node behind the certificate's block cannot say "not certified" yet: a 503, not a mismatch
    forged.certified_block = devnet.anvil.w3.eth.block_number + 1_000
    with pytest.raises(UnavailableError, match="before the certificate's block"):
        on_chain(forged)
    with AggregatorClient(devnet.aggregator_url) as intake:
        server = start_gateway(devnet, intake, devnet.deployment_file, rpc_url=devnet.anvil.url)
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=API_KEY, max_retries=0)
            completion = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=3, temperature=0)
        finally:
            server.stop()
    certificate = certificate_from_json(json.dumps((completion.model_extra or {})["verification"]["certificate"]))
    assert list(on_chain(certificate)) == []
    stake = certificate.quorum_stakes[0]
    stake.total_stake = str(int(stake.total_stake) + 1)  # a figure the registry does not have
    (problem,) = on_chain(certificate)
    assert f"quorum {stake.quorum_number}: the certificate states" in problem and "the chain has" in problem


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus' view of a /metrics endpoint: (sample name, labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    families = text_string_to_metric_families(text)
    return {(s.name, frozenset(s.labels.items())): s.value for family in families for s in family.samples}


def test_the_binary_serves_and_stops_on_sigterm(devnet: Devnet, tmp_path: Path) -> None:
    port = get_free_port()
    args = [sys.executable, "-m", "avs.gateway.cli", "--aggregator", devnet.aggregator_url]
    args += ["--listen", f"127.0.0.1:{port}", "--requester", Account.create().address]
    args += ["--model-dir", str(devnet.model_dir), "--deployment", str(devnet.deployment_file)]
    args += ["--metrics-listen", "127.0.0.1:0", "--request-timeout", "120"]
    process = ServiceProcess("gateway", args, {**os.environ, "AVS_GATEWAY_API_KEYS": API_KEY}, tmp_path)
    try:
        ready = process.wait_ready(timeout=30)
        assert ready["url"] == f"http://127.0.0.1:{port}/v1"
        client = openai.OpenAI(base_url=str(ready["url"]), api_key=API_KEY, max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == [devnet.model_dir.name]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=str(ready["url"]), api_key="wrong", max_retries=0).models.list()
        completion = client.chat.completions.create(model=devnet.model_dir.name, messages=QUESTION, max_tokens=4)
        assert completion.usage is not None
        ok = ("avs_gateway_completions_total", frozenset({("route", "chat"), ("outcome", "ok")}))
        deadline = time.monotonic() + 10  # counted once its answer is sent: the client may read it a moment before
        while (metrics := scrape(str(ready["metrics"])))[ok] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metrics[ok] == 1
        assert metrics[("avs_gateway_tokens_total", frozenset({("kind", "completion")}))] == (
            completion.usage.completion_tokens
        )
        assert metrics[("avs_gateway_http_responses_total", frozenset({("route", "models"), ("code", "401")}))] == 1
        assert metrics[("avs_gateway_completions_in_flight", frozenset())] == 0
    finally:
        process.stop(timeout=10)
    assert process.process.returncode == 0
    assert API_KEY not in process.log_path.read_text()

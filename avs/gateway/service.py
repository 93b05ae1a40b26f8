"""The gateway's logic over the aggregator's intake API: check the model, submit, follow, answer.

``Intake`` is the part of ``avs.client.AggregatorClient`` the gateway uses; tests pass a fake.
Non-streamed answers come when the request is certified (or failed). Streamed answers send a
chunk at every state change, the output once the quorum has accepted it (never the primary's
unverified output), and a last chunk with the finish reason and the certificate.

Nothing the aggregator says is shown unchecked: the request goes out with the model id and prompt
hash computed here (``avs.gateway.models``), the text is decoded here from the output token ids,
the final certificate must be for the request sent, every field as sent, its nonce included
(``check_certified_as_sent``, against the message kept here), and verify (``CertificateChecker``);
a streamed output must be the certified one. Model names are the local folders' names
(``avs.gateway.models``): the aggregator's ``ListModels`` only says which ids it serves.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import grpc
from eth_utils import keccak
from web3.exceptions import Web3Exception

from avs.chain.deployment import Deployment
from avs.client import (
    FINAL_STATES,
    Cancellation,
    RequestStatus,
    build_submit_request,
    check_certified_as_sent,
    check_on_chain,
    verify_certificate,
)
from avs.errors import (
    CancelledError,
    InvalidInputError,
    ModelNotFoundError,
    UnavailableError,
    UntrustedAnswerError,
)
from avs.gateway import openai_api as api
from avs.gateway.config import GatewayConfig
from avs.gateway.errors import MaybeSubmittedError, SubmittedRequestError
from avs.gateway.metrics import GatewayMetrics
from avs.gateway.models import LocalModel
from avs.gateway.openai_api import CompletionJob, JobKind, RequestDefaults
from avs.inference.params import compute_prompt_hash
from avs.logs import redact_urls
from avs.messages import Domain
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag

logger = logging.getLogger(__name__)

Emit = Callable[[dict[str, object]], None]
# A certificate and the request hash it must be for -> the problems found (none: it verifies).
CertificateChecker = Callable[[ag.Certificate, bytes], Sequence[str]]
REQUEST_HASH_HEX_CHARS = 64
CHAIN_TIMEOUT_SECONDS = 30
# A Submit that failed UNAVAILABLE may have reached the aggregator first (a connection reset after it
# took the request): it is sent again after each delay with the same message, so the same nonce and
# the same request (the aggregator answers a repeat with the request it has), before the client's
# retry would draw a new nonce (another paid inference). UNAVAILABLE is also a refusal before anything
# was stored (a standby, a refused connection), so the last one is still answered as retriable.
SUBMIT_RETRY_DELAYS_SECONDS = (0.5, 1.5)


class Intake(Protocol):
    def list_models(self) -> dict[str, bytes]: ...

    def submit(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        requester: str,
        model_id: bytes,
        prompt_hash: bytes,
        max_tokens: int,
        temperature_milli: int,
        top_p_micro: int,
        seed: int,
        nonce: int | None,
        stop_sequences: Sequence[str],
        quorums: bytes,
        threshold_bps: int,
    ) -> bytes: ...

    def wait(
        self,
        request_hash: bytes,
        timeout: float,
        on_progress: Callable[[RequestStatus], None] | None,
        cancellation: Cancellation | None,
    ) -> RequestStatus: ...

    def get_status(self, request_hash: bytes) -> RequestStatus: ...


# A certificate that verifies offline -> what the chain finds wrong with it (none: certified there).
ChainCheck = Callable[[ag.Certificate], Sequence[str]]


def build_certificate_checker(
    domain: Domain | None, min_share_bps: int, chain: ChainCheck | None = None
) -> CertificateChecker:
    """``verify_certificate`` for the request sent, under ``domain`` when the deployment is known;
    then, with ``chain``, the on-chain check (only of a certificate that verifies offline)."""

    def check(certificate: ag.Certificate, request_hash: bytes) -> Sequence[str]:
        problems = verify_certificate(certificate, min_share_bps, domain, request_hash).problems
        if problems or chain is None:
            return problems
        return chain(certificate)

    return check


def connect_chain_check(rpc_url: str, deployment: Deployment, min_share_bps: int) -> ChainCheck:
    """The on-chain check over ``rpc_url`` (refused at once unless it serves the deployment's chain).
    A node that cannot answer is ``UnavailableError`` (503): not the aggregator's fault."""
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": CHAIN_TIMEOUT_SECONDS}))
    try:
        chain_id = w3.eth.chain_id
    except Exception as exc:
        raise UnavailableError(f"cannot reach {redact_urls(rpc_url)}: {redact_urls(str(exc))}") from None
    if chain_id != deployment.chain_id:
        where = redact_urls(rpc_url)
        raise InvalidInputError(f"{where} is chain {chain_id}, not the deployment's {deployment.chain_id}")

    def check(certificate: ag.Certificate) -> Sequence[str]:
        try:
            return check_on_chain(certificate, w3, deployment, min_share_bps).problems
        except (OSError, Web3Exception, ValueError) as exc:
            logger.warning("on-chain check failed", extra={"error": redact_urls(str(exc))})
            raise UnavailableError("the chain could not be read to check the certificate; retry later") from None

    return check


class GatewayService:
    def __init__(
        self,
        intake: Intake,
        config: GatewayConfig,
        models: Mapping[str, LocalModel],
        check_certificate: CertificateChecker,
        clock: Callable[[], float] = time.time,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._intake = intake
        self._config = config
        self._models = dict(models)
        self._codecs = {m.model_id: m.codec for m in models.values()}
        self._check_certificate = check_certificate
        self._clock = clock
        self._metrics = metrics
        self._started = int(clock())

    # --- requests ----------------------------------------------------------------------

    def parse(self, kind: JobKind, body: object, idempotency: bytes | None = None) -> CompletionJob:
        """The job of a request body. ``idempotency`` (the caller and its ``Idempotency-Key``, hashed)
        fixes the nonce and the default seed: the same body under the same key is the same request,
        so a retry after a client timeout follows the request already sent instead of paying again."""
        seed = secrets.randbits(63) if idempotency is None else _derive(b"seed", idempotency) >> 193
        defaults = RequestDefaults(
            max_tokens=self._config.default_max_tokens,
            temperature=self._config.default_temperature,
            seed=seed,  # an omitted seed is random, as with OpenAI; the certificate holds it
        )
        if kind is JobKind.CHAT:
            job = api.parse_chat_request(body, defaults)
        else:
            job = api.parse_completion_request(body, defaults)
        return job if idempotency is None else dataclasses.replace(job, nonce=_derive(b"nonce", idempotency))

    def _resolve_model(self, name: str) -> LocalModel:
        """The local model of a name (a --model-dir folder's name, or its 0x id) the aggregator serves."""
        model = self._models.get(name)
        if model is None:
            model = next((m for m in self._models.values() if name.lower() == "0x" + m.model_id.hex()), None)
        if model is None:
            raise ModelNotFoundError(f"the model '{name}' does not exist here; GET /v1/models lists the served ones")
        if model.model_id not in self._intake.list_models().values():
            raise ModelNotFoundError(f"the model '{name}' is not served by the aggregator now")
        return model

    def _submit(self, job: CompletionJob) -> _Submitted:
        sampling = job.sampling
        model = self._resolve_model(job.model)
        messages = [{"role": m.role, "content": m.content} for m in job.messages]
        prompt_ids = model.codec.encode_chat(messages)  # bad messages: InvalidInputError, a 400
        fields: dict[str, Any] = {
            "requester": self._config.requester,
            "model_id": model.model_id,
            "prompt_hash": compute_prompt_hash(prompt_ids),
            "max_tokens": sampling.max_tokens,
            "temperature_milli": sampling.temperature_milli,
            "top_p_micro": sampling.top_p_micro,
            "seed": sampling.seed,
            # chosen here, so that the request kept to check the certificate is the one sent
            "nonce": secrets.randbits(256) if job.nonce is None else job.nonce,
            "stop_sequences": list(sampling.stop_sequences),
            "quorums": bytes(self._config.quorums),
            "threshold_bps": self._config.threshold_bps,
        }
        message = build_submit_request(messages, **fields)
        request_hash = self._send(messages, fields, idempotent=job.nonce is not None)
        logger.info("submitted", extra={"request_hash": "0x" + request_hash.hex(), "model": job.model})
        return _Submitted(request_hash, message, model, len(prompt_ids))

    def _send(self, messages: list[dict[str, str]], fields: dict[str, Any], idempotent: bool) -> bytes:
        """``Intake.submit``, again with the same fields after an UNAVAILABLE (``SUBMIT_RETRY_DELAYS_SECONDS``).
        A Submit past its deadline was most likely taken and is still being stored: without an
        Idempotency-Key it is answered with no retry (``MaybeSubmittedError``), not sent again."""
        for delay in (*SUBMIT_RETRY_DELAYS_SECONDS, None):
            try:
                return self._intake.submit(messages, **fields)
            except grpc.RpcError as exc:
                code = exc.code() if callable(getattr(exc, "code", None)) else None  # a channel's are Calls
                if code == grpc.StatusCode.DEADLINE_EXCEEDED and not idempotent:
                    raise MaybeSubmittedError(exc) from exc
                if code != grpc.StatusCode.UNAVAILABLE or delay is None:
                    raise
                logger.warning("submit unavailable; sending the same request again", extra={"delay": delay})
                time.sleep(delay)
        raise AssertionError("unreachable: the last try returns or raises")

    def _certified(self, sent: _Submitted, status: RequestStatus) -> RequestStatus:
        """The final status, its text decoded here, once its certificate is for the request sent, as
        sent, and verifies."""
        check_certified_as_sent(sent.message, status)  # UntrustedAnswerError: a 502
        problems = self._check_certificate(status.certificate, sent.request_hash)
        if problems:
            raise UntrustedAnswerError(f"the certificate does not verify: {'; '.join(problems)}")
        if self._metrics is not None:
            self._metrics.record_tokens(sent.prompt_tokens, len(status.certificate.output_token_ids))
        return sent.localize(status)

    def complete(self, job: CompletionJob, cancellation: Cancellation | None = None) -> dict[str, object]:
        """Submit, wait until certified, answer the completion with its certificate. A cancelled
        wait (the client went away) raises ``CancelledError``; the request goes on."""
        sent = self._submit(job)
        with _submitted(sent.request_hash):
            status = self._intake.wait(sent.request_hash, self._config.request_timeout_seconds, None, cancellation)
            return api.build_completion(job, self._certified(sent, status), int(self._clock()), sent.model.eos_ids)

    def stream(self, job: CompletionJob, emit: Emit, cancellation: Cancellation | None = None) -> None:
        """Submit, then ``emit`` the chunks; errors before the first ``emit`` are the caller's to answer."""
        sent = self._submit(job)
        with _submitted(sent.request_hash):
            streamer = _Streamer(job, int(self._clock()), emit, sent.model.eos_ids)
            streamer.start(sent.request_hash)

            def on_status(status: RequestStatus) -> None:
                streamer.on_status(sent.localize(status))

            final = self._intake.wait(sent.request_hash, self._config.request_timeout_seconds, on_status, cancellation)
            streamer.finish(self._certified(sent, final))

    # --- reads -------------------------------------------------------------------------

    def _served_models(self) -> dict[str, bytes]:
        """This gateway's models (by folder name) that the aggregator serves now."""
        served = set(self._intake.list_models().values())
        return {name: m.model_id for name, m in self._models.items() if m.model_id in served}

    def list_models(self) -> dict[str, object]:
        return api.build_model_list(self._served_models(), self._started)

    def get_model(self, name: str) -> dict[str, object]:
        models = self._served_models()
        if name not in models:
            raise ModelNotFoundError(f"the model '{name}' does not exist here")
        return api.build_model(name, models[name], self._started)

    def get_verification(self, request_hash_hex: str) -> dict[str, object]:
        text = request_hash_hex.removeprefix("0x")
        if len(text) != REQUEST_HASH_HEX_CHARS:
            raise InvalidInputError("a request hash is 0x and 64 hex digits")
        try:
            request_hash = bytes.fromhex(text)
        except ValueError as exc:
            raise InvalidInputError("a request hash is 0x and 64 hex digits") from exc
        status = self._intake.get_status(request_hash)
        if bytes(status.request_hash) != request_hash:
            raise UntrustedAnswerError("the aggregator answered the status of another request")
        checked: dict[str, object] = {"verified": None, "problems": []}
        if status.state == ag.REQUEST_STATE_CERTIFIED:  # the same checks as an answer's certificate
            problems = self._check_shown_text(status.certificate)
            problems += self._check_certificate(status.certificate, request_hash)
            checked = {"verified": not problems, "problems": problems}
        return {"object": "verification", **api.build_verification(status), **checked}

    def _check_shown_text(self, certificate: ag.Certificate) -> list[str]:
        """What a verification shows beside the certificate that its signatures do not cover: the
        chat (the request commits to the hash of its templated prompt) and the output text (to its
        token ids). With the model here the text is decoded here and the chat must template to the
        certified prompt hash; without it neither can be checked, so neither is shown. The
        aggregator could otherwise show any chat or text beside ``verified: true``."""
        request = certificate.request
        codec = self._codecs.get(bytes(request.model_id))
        if codec is None:
            del request.messages[:]
            certificate.output_text = ""
            return []
        certificate.output_text = codec.decode(certificate.output_token_ids)
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            prompt_hash = compute_prompt_hash(codec.encode_chat(messages))
        except InvalidInputError as exc:
            return [f"the certificate's chat cannot be templated here: {exc}"]
        if prompt_hash != bytes(request.prompt_hash):
            return ["the certificate's chat is not the one its prompt hash commits to"]
        return []


def _derive(purpose: bytes, idempotency: bytes) -> int:
    """A 256-bit integer for ``purpose`` from an idempotency scope."""
    return int.from_bytes(keccak(purpose + b"\0" + idempotency), "big")


class _Submitted:
    """A request sent: its hash, the message sent, its model and its prompt's length, counted here."""

    def __init__(self, request_hash: bytes, message: ag.SubmitRequest, model: LocalModel, prompt_tokens: int) -> None:
        self.request_hash = request_hash
        self.message = message
        self.model = model
        self.prompt_tokens = prompt_tokens

    def localize(self, status: RequestStatus) -> RequestStatus:
        """A copy of ``status`` with the text decoded here from its token ids and the prompt counted here."""
        local = RequestStatus()
        local.CopyFrom(status)
        local.output_text = self.model.codec.decode(local.output_token_ids)
        local.prompt_tokens = self.prompt_tokens
        if local.HasField("certificate"):
            local.certificate.output_text = self.model.codec.decode(local.certificate.output_token_ids)
        return local


@contextmanager
def _submitted(request_hash: bytes) -> Iterator[None]:
    """Errors from here on are ``SubmittedRequestError``: answered with where to follow the request,
    and a "do not retry" to the SDKs (each retry would submit, and pay for, another inference).
    A cancelled wait is not one: there is no one left to answer."""
    try:
        yield
    except CancelledError:
        raise
    except Exception as exc:
        raise SubmittedRequestError(api.VERIFICATION_PATH + "0x" + request_hash.hex(), exc) from exc


class _Streamer:
    """The chunks of one streamed answer, in order: role, status changes, the output, the end."""

    def __init__(self, job: CompletionJob, created: int, emit: Emit, eos_ids: Collection[int]) -> None:
        self._job = job
        self._created = created
        self._emit = emit
        self._eos_ids = eos_ids
        self._last_state: tuple[int, int] | None = None
        self._streamed_ids: list[int] | None = None  # the output streamed, once accepted

    def start(self, request_hash: bytes) -> None:
        status = RequestStatus(request_hash=request_hash, state=ag.REQUEST_STATE_RECEIVED)
        self._last_state = (status.state, 0)
        self._emit(api.build_chunk(self._job, status, self._created, role=True, verification=True))

    def on_status(self, status: RequestStatus) -> None:
        if (status.state, status.attempt) == self._last_state or status.state in FINAL_STATES:
            return  # the final state is finish()'s
        self._last_state = (status.state, status.attempt)
        if api.is_output_accepted(status) and self._streamed_ids is None:
            self._send_output(status)
        self._emit(api.build_chunk(self._job, status, self._created))

    def _send_output(self, status: RequestStatus) -> None:
        self._streamed_ids = list(status.output_token_ids)
        text = api.compute_visible_text(status.output_text, self._job.sampling.stop_sequences)
        for piece in api.compute_text_pieces(text):
            self._emit(api.build_chunk(self._job, status, self._created, content=piece, verification=False))

    def finish(self, status: RequestStatus) -> None:
        """The end of a certified answer (its certificate checked): the output if not streamed yet."""
        if self._streamed_ids is None:
            self._send_output(status)
        elif self._streamed_ids != list(status.output_token_ids):
            # The aggregator streamed one output as accepted and certified another: the text shown is
            # not what the certificate proves, so the stream ends with an error, not a finish reason.
            raise UntrustedAnswerError("the certified output is not the one streamed as accepted")
        sampling = self._job.sampling
        finish = api.compute_finish_reason(status.output_text, status.output_token_ids, sampling, self._eos_ids)
        self._emit(api.build_chunk(self._job, status, self._created, finish_reason=finish))
        if self._job.include_usage:
            self._emit(api.build_usage_chunk(self._job, status, self._created))

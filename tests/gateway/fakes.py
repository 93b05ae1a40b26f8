"""A fake aggregator intake for the gateway's unit tests (scripted statuses, recorded submits) and a
fake tokenizer for its model."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from avs.client import Cancellation, RequestFailedError, RequestStatus, build_submit_request
from avs.errors import InvalidInputError
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag

MODEL = "tiny"
MODEL_ID = bytes(range(32))
REQUEST_HASH = bytes([0xAB]) * 32
OUTPUT_TEXT = "the quick brown fox. jumps"
OUTPUT_IDS = [5, 6, 7, 8, 9]
EOS_ID = 2  # the model's end-of-sequence token


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def make_status(
    state: int, text: str = OUTPUT_TEXT, ids: Sequence[int] = OUTPUT_IDS, sent: ag.SubmitRequest | None = None
) -> RequestStatus:
    """A status in ``state``; certified, its certificate is for ``sent`` (the request as submitted)."""
    status = RequestStatus(request_hash=REQUEST_HASH, state=state)  # type: ignore[arg-type]
    if state >= ag.REQUEST_STATE_VERIFYING:
        status.output_token_ids.extend(ids)
        status.output_text = text
        status.output_hash = b"\x01" * 32
    if state >= ag.REQUEST_STATE_BATCHED:
        status.batch_index = 3
    if state == ag.REQUEST_STATE_CERTIFIED:
        certificate = status.certificate
        certificate.chain_id = 31337
        certificate.request_hash = REQUEST_HASH
        certificate.request.model_id = MODEL_ID
        if sent is not None:
            certificate.request.CopyFrom(sent.request)
            certificate.batch_header.quorum_numbers = sent.quorum_numbers
        certificate.output_token_ids.extend(ids)
        certificate.output_text = text
        certificate.output_hash = status.output_hash
        certificate.batch_header.batch_index = status.batch_index
        certificate.tx_hash = b"\x02" * 32
        certificate.certified_block = 42
    return status


STATES = (
    ag.REQUEST_STATE_RECEIVED,
    ag.REQUEST_STATE_GENERATING,
    ag.REQUEST_STATE_VERIFYING,
    ag.REQUEST_STATE_ACCEPTED,
    ag.REQUEST_STATE_BATCHED,
    ag.REQUEST_STATE_CERTIFIED,
)


@dataclass
class FakeIntake:
    """``submit`` records its arguments; ``wait`` plays ``states`` (or raises ``fail_with``), and
    certifies the last request submitted, as submitted."""

    text: str = OUTPUT_TEXT
    ids: Sequence[int] = tuple(OUTPUT_IDS)
    states: Sequence[int] = STATES
    submit_error: Exception | None = None
    fail_with: Exception | None = None
    submitted: list[dict[str, Any]] = field(default_factory=list)
    models: dict[str, bytes] = field(default_factory=lambda: {MODEL: MODEL_ID})
    sent: ag.SubmitRequest | None = None  # the last request submitted
    # each gateway thread's own (a thread submits, then waits): concurrent requests certified as sent
    sent_by_thread: dict[int, ag.SubmitRequest] = field(default_factory=dict)
    accepted_ids: Sequence[int] | None = None  # the output of the statuses before CERTIFIED, if not ``ids``
    edit_certified: Callable[[RequestStatus], None] | None = None  # a dishonest aggregator's edit
    # Submits that take the request, then fail with ``lost_reply_code`` (the reply lost: a reset, a deadline)
    lost_replies: int = 0
    lost_reply_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE

    def list_models(self) -> dict[str, bytes]:
        return dict(self.models)

    def submit(self, messages: Sequence[Mapping[str, str]], **kwargs: Any) -> bytes:
        if self.submit_error is not None:
            raise self.submit_error
        self.submitted.append({"messages": [dict(m) for m in messages], **kwargs})
        self.sent = self.sent_by_thread[threading.get_ident()] = build_submit_request(messages, **kwargs)
        if self.lost_replies > 0:
            self.lost_replies -= 1
            raise FakeRpcError(self.lost_reply_code, "the reply was lost")
        return REQUEST_HASH

    def wait(
        self,
        request_hash: bytes,
        timeout: float,
        on_progress: Callable[[RequestStatus], None] | None,
        cancellation: Cancellation | None = None,
    ) -> RequestStatus:
        status = make_status(ag.REQUEST_STATE_RECEIVED)
        for state in self.states:
            if self.fail_with is not None and state == ag.REQUEST_STATE_ACCEPTED:
                raise self.fail_with
            status = self._status(state)
            if on_progress is not None:
                on_progress(status)
        return status

    def get_status(self, request_hash: bytes) -> RequestStatus:
        if request_hash != REQUEST_HASH:
            raise FakeRpcError(grpc.StatusCode.NOT_FOUND, "no request with this hash")
        return self._status(ag.REQUEST_STATE_CERTIFIED)

    def _status(self, state: int) -> RequestStatus:
        certified = state == ag.REQUEST_STATE_CERTIFIED
        ids = self.ids if certified or self.accepted_ids is None else self.accepted_ids
        status = make_status(state, self.text, ids, self.sent_by_thread.get(threading.get_ident(), self.sent))
        if certified and self.edit_certified is not None:
            self.edit_certified(status)
        return status


@dataclass
class FakeCodec:
    """The model's tokenizer: ``texts`` maps output ids to their text; a prompt is a token per
    character of its messages (refused if one holds ``<|special|>``)."""

    texts: Mapping[tuple[int, ...], str]

    def encode_chat(self, messages: Sequence[Any]) -> tuple[int, ...]:
        if any("<|special|>" in m["content"] for m in messages):
            raise InvalidInputError("a chat message contains a special token of the model's tokenizer")
        return tuple(ord(c) for m in messages for c in m["content"])

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.texts[tuple(token_ids)] if token_ids else ""


def failing_intake() -> FakeIntake:
    return FakeIntake(fail_with=RequestFailedError("quorum 0 accepted 40.00%, below 66.67%"))

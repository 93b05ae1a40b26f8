"""``OperatorCaller`` over gRPC: one channel per operator socket, every call signed (``avs.calls``)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import grpc

from avs.crypto.curve import G1Point
from avs.errors import InvalidInputError
from avs.merkle import BatchLeaf
from avs.messages import BatchHeader, Domain
from avs.rpc import convert
from avs.rpc.convert import RequestEnvelope
from avs.rpc.operator_client import OperatorClient
from avs.types import OutputHash
from avs_aggregator.ports import GenerateReply, OperatorInfo, VerifyReply

MAX_MESSAGE_BYTES = convert.OPERATOR_MAX_MESSAGE_BYTES


def socket_to_target(socket: str) -> str:
    """``grpc://host:port`` (or ``host:port``) -> ``host:port``."""
    for scheme in ("grpc://", "grpcs://", "http://", "https://"):
        if socket.startswith(scheme):
            return socket[len(scheme) :]
    return socket


class GrpcOperatorCaller:
    """An operator whose registered socket is ``grpcs://host:port`` is called over TLS, its
    certificate checked against ``tls_root_certificates`` (PEM; None: the system's roots); a
    ``grpc://`` (or bare) socket in plaintext. Either way every call is signed. With
    ``tls_client_certificate`` (PEM key, PEM chain) it is shown to TLS operators that ask for one
    (mutual TLS, the operator's ``grpc.tls_client_ca_file``)."""

    def __init__(
        self,
        domain: Domain,
        caller_key: bytes,
        tls_root_certificates: bytes | None = None,
        tls_client_certificate: tuple[bytes, bytes] | None = None,
    ) -> None:
        self._domain = domain
        self._key = caller_key
        self._tls_roots = tls_root_certificates
        self._tls_client = tls_client_certificate
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}

    @classmethod
    def from_files(
        cls,
        domain: Domain,
        caller_key: bytes,
        ca_file: Path | None,
        client_cert_file: Path | None = None,
        client_key_file: Path | None = None,
    ) -> GrpcOperatorCaller:
        """The configured PEM files read (the config checks the client pair goes together)."""
        client = None
        if client_cert_file is not None and client_key_file is not None:
            client = (client_key_file.read_bytes(), client_cert_file.read_bytes())
        return cls(domain, caller_key, ca_file.read_bytes() if ca_file is not None else None, client)

    @property
    def domain(self) -> Domain:
        return self._domain

    def _client(self, operator: OperatorInfo) -> OperatorClient:
        target = socket_to_target(operator.socket)
        tls = operator.socket.startswith("grpcs://")
        key = ("grpcs://" if tls else "grpc://") + target
        with self._lock:
            channel = self._channels.get(key)
            if channel is None:
                options = [
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ]
                if tls:
                    key_pem, chain_pem = self._tls_client or (None, None)
                    credentials = grpc.ssl_channel_credentials(self._tls_roots, key_pem, chain_pem)
                    channel = grpc.secure_channel(target, credentials, options=options)
                else:
                    channel = grpc.insecure_channel(target, options=options)
                self._channels[key] = channel
        return OperatorClient(channel, self._domain, operator.operator_id, self._key)

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()

    def generate(self, operator: OperatorInfo, envelope: RequestEnvelope, timeout: float) -> GenerateReply:
        response = self._client(operator).generate(envelope, timeout=timeout)
        count, asked = len(response.output_token_ids), envelope.request.max_tokens
        if count > asked:  # before copying up to 16 MiB of ids
            raise InvalidInputError(f"the primary returned {count} tokens for max_tokens {asked}")
        return GenerateReply(
            token_ids=tuple(int(t) for t in response.output_token_ids),
            text=response.text,
            output_hash=OutputHash(bytes(response.output_hash)),
            signature=convert.g1_from_proto(response.attestation.signature.signature),
        )

    def verify(
        self, operator: OperatorInfo, envelope: RequestEnvelope, output_ids: Sequence[int], timeout: float
    ) -> VerifyReply:
        response = self._client(operator).verify(envelope, output_ids, timeout=timeout)
        attestation = convert.attestation_from_proto(response.attestation.attestation)
        return VerifyReply(
            output_hash=OutputHash(attestation.output_hash),
            verdict=attestation.verdict,
            signature=convert.g1_from_proto(response.attestation.signature.signature),
            reason=response.reason,
        )

    def sign_batch(
        self, operator: OperatorInfo, header: BatchHeader, leaves: Sequence[BatchLeaf], timeout: float
    ) -> G1Point:
        response = self._client(operator).sign_batch(header, leaves, timeout=timeout)
        return convert.g1_from_proto(response.signature.signature)

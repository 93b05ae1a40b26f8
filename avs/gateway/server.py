"""The HTTP layer: routes, Bearer authentication, body limits, JSON and server-sent events.

Standard library only (``avs.httpserver.BoundedHTTPServer``: one thread per connection, capped, with
a socket timeout). Every
error becomes OpenAI's error JSON through ``avs.gateway.errors.compute_api_error``; an error in a
stream that has started is sent as a last ``data: {"error": ...}`` event (the ``openai`` client
raises it as an ``APIError``).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler

import numpy as np
from eth_utils import keccak

from avs.client import Cancellation
from avs.errors import AuthenticationError, AvsError, CancelledError, InvalidInputError, PermissionDeniedError
from avs.gateway.admission import Admission
from avs.gateway.config import GatewayConfig, parse_host_port
from avs.gateway.disconnects import DisconnectWatcher
from avs.gateway.errors import (
    INVALID_REQUEST,
    ApiError,
    HostNotAllowedError,
    MethodNotAllowedError,
    PayloadTooLargeError,
    RouteNotFoundError,
    ShuttingDownError,
    SubmittedRequestError,
    UnsupportedMediaTypeError,
    compute_api_error,
)
from avs.gateway.metrics import COMPLETION_ROUTES, GatewayMetrics, classify_outcome, classify_route
from avs.gateway.openai_api import VERIFICATION_PATH, JobKind
from avs.gateway.service import GatewayService
from avs.httpserver import BoundedHTTPServer, read_body

logger = logging.getLogger(__name__)

POST_ROUTES = {"/v1/chat/completions": JobKind.CHAT, "/v1/completions": JobKind.TEXT}
MODELS_PATH = "/v1/models"
HEALTH_PATH = "/health"
DRAIN_LIMIT_BYTES = 16 << 20  # a refused body up to this size is read and dropped (the connection stays usable)
# The request was submitted (and may still be certified): the openai SDKs retry 502 and 504 by
# default, and each retry would submit a new request, another inference.
NO_RETRY_STATUSES = frozenset({502, 504})
RETRY_AFTER_SECONDS = 1  # a 429 of the gateway's own caps: nothing was submitted
SPARE_CONNECTIONS = 64
MAX_JSON_DEPTH = 64  # OpenAI's bodies nest 4-5 deep
MAX_IDEMPOTENCY_KEY_CHARS = 255
# A stream quiet for this long gets an SSE comment line (clients skip it): proxies cut a connection
# that sends nothing for their read timeout (nginx: 60 s) while a long output is generated.
SSE_KEEPALIVE_SECONDS = 15.0
# CORS (--cors-origin): how long a browser may reuse a preflight's answer, the headers a page's script
# may read (the retry advice of an error), and the request headers a preflight may ask for (the
# openai SDKs add their own x-stainless-* ones): a list of header names, echoed back when allowed.
CORS_MAX_AGE_SECONDS = 600
CORS_EXPOSED_HEADERS = "Retry-After, x-should-retry"
MAX_CORS_REQUEST_HEADERS_CHARS = 4096
_HEADER_NAMES = re.compile(r"\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+\s*(,\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+\s*)*")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,15}")  # ASCII digits only (str.isdigit also takes "²")
# A string and its closing quote, or the rest of the body when it never closes. Possessive: a
# backtracking pattern retried from every quote of '"' + '\\"' * n costs O(n^2) (minutes per MiB).
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+.?', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def compute_json_depth(body: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest, brackets inside strings left out.

    Checked before ``json.loads``: its C parser recurses once per level, and with the recursion
    limit that ``py_ecc`` raises to 100,000 a body of 100,000 ``[`` overflows the thread's stack
    (a segfault of the whole process) before Python can raise ``RecursionError``.
    """
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def compute_request_key(idempotency_scope: bytes | None, body: object) -> bytes | None:
    """What names an idempotent request for the rate limit: its scope (caller and Idempotency-Key) and
    its body's JSON, keys sorted (the same request, whatever the whitespace); None without a key."""
    if idempotency_scope is None:
        return None
    return keccak(idempotency_scope + b"\0" + json.dumps(body, sort_keys=True).encode())


def parse_content_length(text: str | None) -> int | None:
    """The header's value, or None when it is not a plain decimal number."""
    text = "0" if text is None else text.strip()
    return int(text) if _CONTENT_LENGTH.fullmatch(text) else None


class _HttpServer(BoundedHTTPServer):
    def __init__(self, service: GatewayService, config: GatewayConfig, metrics: GatewayMetrics | None) -> None:
        # Connections beyond the completions in flight: for /health, /v1/models, verifications and
        # idle kept-alive connections, so that a busy gateway still answers them.
        max_connections = config.max_in_flight + SPARE_CONNECTIONS
        super().__init__(parse_host_port(config.listen), GatewayHandler, max_connections=max_connections)
        self.service = service
        self.api_keys = config.get_api_keys()
        self.max_body_bytes = config.max_body_bytes
        self.cors_origins = frozenset(origin.lower() for origin in config.cors_origins)
        # Without API keys on a loopback address, only loopback Host names (DNS rebinding)
        self.loopback_only = not self.api_keys and is_loopback(parse_host_port(config.listen)[0])
        self.allowed_hosts = frozenset(host.lower() for host in config.allowed_hosts)
        self.admission = Admission(config.max_in_flight, config.max_in_flight_per_key, config.rate_limit_per_minute)
        self.disconnects = DisconnectWatcher()
        self.draining = False  # stopping: no new completion is taken
        self.metrics = metrics
        if metrics is not None:
            metrics.follow_in_flight(lambda: self.admission.in_flight)

    def handle_error(self, request: object, client_address: object) -> None:
        logger.debug("connection error", exc_info=True, extra={"client": str(client_address)})


def is_loopback(host: str) -> bool:
    """``host`` (a name or an address, IPv6 without brackets) is this machine's loopback: ``localhost``
    or a loopback address (a name such as ``127.attacker.example`` is neither)."""
    host = host.lower().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host_header(value: str) -> str:
    """The host of a ``Host`` header (``name:port``, ``[v6]:port``), without the port."""
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def is_client_gone(error: BaseException) -> bool:
    """``error`` is a write to a client that went away: reset, closed, or not reading past the socket
    timeout (a plain ``TimeoutError``; a certification deadline is an ``AvsError``, answered 504)."""
    if isinstance(error, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)):
        return True
    return type(error) is TimeoutError


def identify_caller(header: str | None, api_keys: tuple[str, ...]) -> str | None:
    """Who calls: ``"key N"`` for ``Authorization: Bearer <the Nth of api_keys>``, ``""`` when no keys
    are configured, None when the header names no key (not authorized). Never the key itself."""
    if not api_keys:
        return ""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    given = token.strip().encode()
    matches = [hmac.compare_digest(given, key.encode()) for key in api_keys]  # each compared: no timing by index
    return f"key {matches.index(True)}" if any(matches) else None


def is_authorized(header: str | None, api_keys: tuple[str, ...]) -> bool:
    """``Authorization: Bearer <key>`` with one of ``api_keys`` (no keys configured: always)."""
    return identify_caller(header, api_keys) is not None


class GatewayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer

    # --- dispatch ----------------------------------------------------------------------

    def do_GET(self) -> None:
        self._handle(self._route_get)

    def do_POST(self) -> None:
        self._handle(self._route_post)

    def _not_allowed(self) -> None:
        self._handle(self._raise_not_allowed)

    def do_OPTIONS(self) -> None:
        self._handle(self._preflight if self._is_preflight() else self._raise_not_allowed)

    do_PUT = do_DELETE = do_PATCH = do_HEAD = _not_allowed

    def _raise_not_allowed(self) -> None:
        raise MethodNotAllowedError(f"{self.command} is not allowed on {self._path}")

    def _route_method(self) -> str | None:
        """The one method the path answers, or None for a path this gateway does not serve."""
        path = self._path
        if path in POST_ROUTES:
            return "POST"
        if path in (HEALTH_PATH, MODELS_PATH) or path.startswith((MODELS_PATH + "/", VERIFICATION_PATH)):
            return "GET"
        return None

    # --- CORS --------------------------------------------------------------------------

    def _is_preflight(self) -> bool:
        """A browser's CORS preflight (OPTIONS with Origin and Access-Control-Request-Method), when
        the gateway serves browsers at all (``--cors-origin``): it carries no API key."""
        return (
            self.command == "OPTIONS"
            and bool(self.server.cors_origins)
            and "Origin" in self.headers
            and "Access-Control-Request-Method" in self.headers
        )

    def _allowed_origin(self) -> str | None:
        """Access-Control-Allow-Origin for this request: ``*`` when any page may call, the request's
        Origin when it is listed, else None (no CORS headers: the browser keeps the answer from the page)."""
        headers = getattr(self, "headers", None)  # none yet when the request line itself is refused
        origin = headers.get("Origin") if headers is not None else None
        if origin is None or not self.server.cors_origins:
            return None
        if "*" in self.server.cors_origins:
            return "*"
        return origin if origin.lower() in self.server.cors_origins else None

    def _preflight(self) -> None:
        method = self._route_method()
        if method is None:
            raise RouteNotFoundError(f"unknown URL: {self.command} {self._path}")
        if self._allowed_origin() is None:
            raise PermissionDeniedError(f"the origin {self.headers['Origin']!r} is not allowed (--cors-origin)")
        asked = self.headers.get("Access-Control-Request-Headers", "")
        if len(asked) > MAX_CORS_REQUEST_HEADERS_CHARS or (asked and not _HEADER_NAMES.fullmatch(asked)):
            raise InvalidInputError("Access-Control-Request-Headers must be a list of header names")
        self.send_response(204)
        self.send_header("Access-Control-Allow-Methods", method)
        if asked:  # Bearer keys, not cookies, authenticate: no header a page asks for is a risk
            self.send_header("Access-Control-Allow-Headers", ", ".join(h.strip() for h in asked.split(",")))
        self.send_header("Access-Control-Max-Age", str(CORS_MAX_AGE_SECONDS))
        self.send_header("Content-Length", "0")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def end_headers(self) -> None:
        """Every answer (JSON, a stream, an error) carries the CORS headers when its Origin is allowed."""
        origin = self._allowed_origin()
        if origin is not None:
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Access-Control-Expose-Headers", CORS_EXPOSED_HEADERS)
        if self.server.cors_origins:  # whether the headers come depends on Origin: a cache must know
            self.send_header("Vary", "Origin")
        super().end_headers()

    @property
    def _path(self) -> str:
        # No path yet when the standard library refuses the request line itself (send_error).
        return getattr(self, "path", "").split("?", 1)[0].rstrip("/") or "/"

    def _handle(self, route: Callable[[], None]) -> None:
        self._stream_started = False
        self._stream_lock = threading.Lock()
        self._last_write = time.monotonic()
        self._body_read = False
        if self.command != "POST" and (
            (parse_content_length(self.headers.get("Content-Length")) or 0) > 0 or self._framing_problem() is not None
        ):
            # A body where none is read: the bytes after the head must not be taken for the next
            # request on this connection (smuggled past a proxy), so it is the last one.
            self.close_connection = True
        try:
            self._check_host()
            caller = identify_caller(self.headers.get("Authorization"), self.server.api_keys)
            if self._path.startswith("/v1/") and caller is None and not self._is_preflight():
                raise AuthenticationError("missing or invalid API key (Authorization: Bearer <key>)")
            self._caller = caller
            route()
        except CancelledError as exc:  # the client closed its connection: no one to answer
            self.close_connection = True
            logger.info("the client went away; its request goes on", extra={"detail": str(exc)})
        except AvsError as exc:  # before TimeoutError: a certification deadline is one (504, not a stall)
            self._send_error(exc)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client went away (a stream it stopped reading) or stalled
        except Exception as exc:
            self._send_error(exc)

    def _route_get(self) -> None:
        path = self._path
        if path == HEALTH_PATH:  # a load balancer stops sending here while the gateway drains
            self._send_json(
                503 if self.server.draining else 200, {"status": "stopping" if self.server.draining else "ok"}
            )
        elif path == MODELS_PATH:
            self._send_json(200, self.server.service.list_models())
        elif path.startswith(MODELS_PATH + "/"):
            self._send_json(200, self.server.service.get_model(path.removeprefix(MODELS_PATH + "/")))
        elif path.startswith(VERIFICATION_PATH):
            self._send_json(200, self.server.service.get_verification(path.removeprefix(VERIFICATION_PATH)))
        elif path in POST_ROUTES:
            raise MethodNotAllowedError(f"use POST for {path}")
        else:
            raise RouteNotFoundError(f"unknown URL: {self.command} {path}")

    def _route_post(self) -> None:
        kind = POST_ROUTES.get(self._path)
        if kind is None:
            raise RouteNotFoundError(f"unknown URL: {self.command} {self._path}")
        metrics = self.server.metrics
        if metrics is None:
            self._complete(kind)
            return
        route, started, error = COMPLETION_ROUTES[kind], time.monotonic(), None
        try:
            self._complete(kind)
        except BaseException as exc:
            error = exc
            raise
        finally:
            outcome = classify_outcome(error)
            metrics.completions.labels(route, outcome).inc()
            if error is None:
                metrics.completion_seconds.labels(route).observe(time.monotonic() - started)

    def _complete(self, kind: JobKind) -> None:
        service = self.server.service
        body, scope = self._read_json(), self._idempotency_scope()
        job, request_key = service.parse(kind, body, scope), compute_request_key(scope, body)
        del body  # a 1 MiB body can hold ~24 MiB parsed: not kept for the minutes of a completion
        if self.server.draining:
            raise ShuttingDownError("the gateway is stopping; nothing was submitted, send the request again shortly")
        with self.server.admission.admit(self._caller, request_key), self._following() as cancellation:
            if job.stream:
                with self._keeping_alive():
                    service.stream(job, self._send_event, cancellation)
                    self._end_stream()
            else:
                self._send_json(200, service.complete(job, cancellation))

    def _check_host(self) -> None:
        """A loopback gateway without API keys answers only loopback Host names: a page that points
        its own domain at 127.0.0.1 would otherwise read every answer as same-origin."""
        host = split_host_header(self.headers.get("Host", "")).lower()
        if self.server.loopback_only and not (is_loopback(host) or host in self.server.allowed_hosts):
            raise HostNotAllowedError(
                "this gateway answers to localhost only (no API keys on a loopback address; --allowed-host names"
                " others); use http://127.0.0.1"
            )

    def _idempotency_scope(self) -> bytes | None:
        """The caller and its ``Idempotency-Key`` header (1 to 255 visible ASCII characters), or None."""
        key = self.headers.get("Idempotency-Key")
        if key is None:
            return None
        if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS or not all("!" <= c <= "~" for c in key):
            raise InvalidInputError(
                f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII characters"
            )
        return (self._caller or "").encode() + b"\0" + key.encode()

    @contextmanager
    def _following(self) -> Iterator[Cancellation]:
        """A cancellation for the wait, cancelled if the client closes its connection meanwhile."""
        cancellation = Cancellation()
        with self.server.disconnects.watching(self.connection, cancellation.cancel):
            yield cancellation

    # --- bodies ------------------------------------------------------------------------

    def _framing_problem(self) -> str | None:
        """Why the body's end is ambiguous (a proxy could frame it otherwise), or None: any
        Transfer-Encoding ("gzip, chunked", "Chunked "), more than one Content-Length, or one that is
        not a plain decimal number ("71, 71", which a proxy may take as 71, was read as no body and
        the body served as the next request)."""
        if "Transfer-Encoding" in self.headers:
            return "send the body with a Content-Length (Transfer-Encoding bodies are not read)"
        if len(self.headers.get_all("Content-Length") or []) > 1:
            return "send one Content-Length header"
        if parse_content_length(self.headers.get("Content-Length")) is None:
            return "Content-Length must be a non-negative integer"
        return None

    def _read_json(self) -> object:
        problem = self._framing_problem()
        if problem is not None:
            self.close_connection = True
            raise InvalidInputError(problem)
        media_type = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":  # a page's form or text/plain POST needs no CORS preflight
            raise UnsupportedMediaTypeError("send the body as JSON, with Content-Type: application/json")
        length = parse_content_length(self.headers.get("Content-Length")) or 0  # a number: no framing problem
        if length > self.server.max_body_bytes:
            raise PayloadTooLargeError(f"the body has {length} bytes; at most {self.server.max_body_bytes}")
        body = read_body(self, length)  # within the server's body_timeout in all
        self._body_read = True
        try:
            # UTF-8 only (RFC 8259): json.loads(bytes) would also take UTF-16 or UTF-32, whose bytes
            # the depth check below cannot read (a CJK character's 0x22 byte looks like a quote).
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"the body is not UTF-8 text (byte {exc.start})") from None
        if compute_json_depth(body) > MAX_JSON_DEPTH:
            raise InvalidInputError(f"the body's JSON nests deeper than {MAX_JSON_DEPTH} levels")
        try:
            return json.loads(text)
        except ValueError as exc:
            raise InvalidInputError(f"the body is not valid JSON: {exc}") from exc

    def _discard_body(self) -> None:
        """Read and drop a body left unread (closing with it unread could reset the connection),
        within the body deadline; one that is too large, framed otherwise or too slow closes it."""
        length = parse_content_length(self.headers.get("Content-Length")) or 0
        if self._framing_problem() is not None or length > min(DRAIN_LIMIT_BYTES, self.server.max_body_bytes):
            self.close_connection = True
            return
        try:
            read_body(self, length)
        except TimeoutError:
            self.close_connection = True

    def _send_json(self, status: int, body: dict[str, object], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has the headers of the GET, no body
            self.wfile.write(data)

    def _send_event(self, data: dict[str, object]) -> None:
        with self._stream_lock:
            if not self._stream_started:
                self._stream_started = True
                self.close_connection = True  # the stream ends when the connection closes
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("X-Accel-Buffering", "no")  # nginx: pass each event on at once
                self.send_header("Connection", "close")
                self.end_headers()
            self._write_stream(b"data: " + json.dumps(data).encode() + b"\n\n")

    def _end_stream(self) -> None:
        with self._stream_lock:
            self._write_stream(b"data: [DONE]\n\n")

    def _write_stream(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()
        self._last_write = time.monotonic()

    @contextmanager
    def _keeping_alive(self) -> Iterator[None]:
        """While the body runs, a started stream quiet for ``SSE_KEEPALIVE_SECONDS`` gets a comment."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(SSE_KEEPALIVE_SECONDS / 4):
                with self._stream_lock:
                    if done.is_set() or not self._stream_started:
                        continue
                    if time.monotonic() - self._last_write < SSE_KEEPALIVE_SECONDS:
                        continue
                    try:
                        self._write_stream(b": keep-alive\n\n")
                    except OSError:  # the client is gone: the request's own writes find out too
                        return

        thread = threading.Thread(target=beat, name="sse-keepalive", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _send_error(self, exc: Exception) -> None:
        if isinstance(exc, SubmittedRequestError) and is_client_gone(exc.cause):
            # Our own write to a client that went away (a reset, a stream it stopped reading): no
            # one to answer, nothing failed on our side; the request goes on at the aggregator.
            self.close_connection = True
            logger.info("the client went away; its request goes on", extra={"detail": str(exc.cause)})
            return
        error = compute_api_error(exc)
        if error.status >= 500:
            logger.error("request failed", extra={"path": self._path, "status": error.status}, exc_info=exc)
        if self._stream_started:
            self._send_event(error.to_json())
            return
        if not self._body_read:
            self._discard_body()
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else {}
        if error.status == 429 and error.retry:
            headers["Retry-After"] = str(getattr(exc, "retry_after", RETRY_AFTER_SECONDS))
        if error.status in NO_RETRY_STATUSES or not error.retry:
            headers["x-should-retry"] = "false"  # what the openai SDKs obey instead of their own retry rule
        if error.status == 405:  # the methods the path answers (RFC 9110 requires the header)
            headers["Allow"] = self._route_method() or "GET"
        self._send_json(error.status, error.to_json(), headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (a malformed request line, a header line over 64 KiB,
        too many headers) as OpenAI's error JSON too; the connection is closed."""
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":  # an unparsed line: no head was sent
            self.request_version = self.protocol_version
        self._send_json(code, ApiError(code, message or explain or "bad request", INVALID_REQUEST).to_json())

    # --- logs --------------------------------------------------------------------------

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # send_response's hook: once per response (a stream's 200 when it starts)
        logger.info("http", extra={"method": self.command, "path": self._path, "status": code})
        if self.server.metrics is not None:
            status = str(int(code)) if isinstance(code, int) else str(code)  # an HTTPStatus is an int
            self.server.metrics.responses.labels(classify_route(self._path), status).inc()

    def log_message(self, format: str, *args: object) -> None:
        logger.debug(format, *args)


class GatewayServer:
    """The HTTP server on its own thread, listening on ``config.listen``: ``start()``, ``port``, ``stop()``."""

    def __init__(self, service: GatewayService, config: GatewayConfig, metrics: GatewayMetrics | None = None) -> None:
        self._http = _HttpServer(service, config, metrics)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._http.server_address[0])

    @property
    def in_flight(self) -> int:
        """Completions being followed now."""
        return self._http.admission.in_flight

    @property
    def port(self) -> int:
        port: int = self._http.server_address[1]
        return port

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._http.serve_forever, args=(0.1,), name="avs-gateway-http", daemon=True
        )
        self._thread.start()

    def stop(self, grace_seconds: float = 0.0) -> None:
        """Stop accepting connections and taking completions, wait up to ``grace_seconds`` for those
        in flight to be answered (one cut off is retried by the SDKs as a new, paid inference), then
        close."""
        self._http.draining = True
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join()
            self._thread = None
        self._http.socket.close()  # new connections are refused now, not left in the backlog
        deadline = time.monotonic() + grace_seconds
        while self._http.admission.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._http.admission.in_flight:
            logger.warning("stopping with completions in flight", extra={"in_flight": self._http.admission.in_flight})
        self._http.server_close()
        self._http.disconnects.close()

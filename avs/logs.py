"""Structured (JSON) logs for the binaries. Libraries only call ``logging.getLogger(__name__)``.

Every URL in a log line keeps only its scheme, host and port: RPC providers put API keys in the
path (``https://mainnet.example/v3/<key>``) or in user info and query strings, and web3/requests
errors quote the URL they failed on.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

_URL = re.compile(r"\b((?:https?|wss?)://)(?:[^\s/@?#'\"]*@)?([^\s/?#'\"]+)([^\s'\"]*)")


_REQUESTS_PATH = re.compile(r"(with url: )(/\S+)")  # urllib3: "Max retries exceeded with url: /v3/KEY"


def redact_urls(text: str) -> str:
    """``https://user:pw@host:8545/v3/KEY?x=1`` -> ``https://host:8545/...``; other text unchanged."""
    text = _URL.sub(lambda m: m.group(1) + m.group(2) + ("/..." if m.group(3) not in ("", "/") else m.group(3)), text)
    return _REQUESTS_PATH.sub(r"\1/...", text)


def _redact(value: Any) -> Any:
    return redact_urls(value) if isinstance(value, str) else value


_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact_urls(record.getMessage()),
        }
        entry.update({k: _redact(v) for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            entry["exception"] = redact_urls(self.formatException(record.exc_info))
        return json.dumps(entry, default=lambda value: redact_urls(str(value)))


def configure_json_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

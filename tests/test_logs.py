"""Log lines never carry an RPC URL's path, query or user info (API keys live there)."""

from __future__ import annotations

import json
import logging

import pytest
import requests

from avs.logs import JsonFormatter, redact_urls


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("failed: https://user:pw@node.example:8545/v3/SECRET?k=1 then", "failed: https://node.example:8545/... then"),
        ("wss://x.io/ws/SECRET", "wss://x.io/..."),
        ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
        (
            "Max retries exceeded with url: /v3/SECRET (Caused by ...)",
            "Max retries exceeded with url: /... (Caused by ...)",
        ),
        ("no url here", "no url here"),
    ],
)
def test_urls_keep_scheme_host_and_port_only(text: str, expected: str) -> None:
    assert redact_urls(text) == expected


def test_a_real_connection_error_is_logged_without_its_key() -> None:
    """What web3's HTTP provider raises when the node is down, logged with exc_info and as a field."""
    url = "http://127.0.0.1:9/v3/SECRETKEY?apikey=SECRETKEY"
    with pytest.raises(requests.ConnectionError) as info:
        requests.post(url, timeout=2)
    assert "SECRETKEY" in str(info.value)  # requests quotes the path it failed on
    record = logging.LogRecord("avs", logging.WARNING, __file__, 1, "rpc failed: %s", (info.value,), None)
    record.exc_info = (type(info.value), info.value, info.value.__traceback__)
    record.error = str(info.value)
    line = JsonFormatter().format(record)
    assert "SECRETKEY" not in line and "127.0.0.1" in line
    assert json.loads(line)["level"] == "warning"

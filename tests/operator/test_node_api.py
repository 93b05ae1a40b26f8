"""The EigenLayer node API over real HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from avs_operator.node_api import NodeApiServer, ServiceState, ServiceStatus, compute_health_code

STATE: list[ServiceState] = []


def get(port: int, path: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            body = response.read()
            return response.status, json.loads(body) if body else None
    except urllib.error.HTTPError as error:
        body = error.read()
        return error.code, json.loads(body) if body else None


@pytest.fixture
def server() -> Iterator[NodeApiServer]:
    api = NodeApiServer("127.0.0.1", 0, "op-1", "0.1.0", lambda: list(STATE))
    api.start()
    yield api
    api.stop()


def services(*statuses: ServiceStatus) -> list[ServiceState]:
    return [ServiceState(f"model-{i}", f"model {i}", "inference", s) for i, s in enumerate(statuses)]


def test_identity(server: NodeApiServer) -> None:
    assert get(server.port, "/eigen/node") == (
        200,
        {"node_name": "op-1", "spec_version": "v0.0.1", "node_version": "0.1.0"},
    )


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        ((ServiceStatus.UP, ServiceStatus.UP), 200),
        ((ServiceStatus.UP, ServiceStatus.DOWN), 206),
        ((ServiceStatus.INITIALIZING,), 503),
        ((), 503),
    ],
)
def test_health_codes(server: NodeApiServer, statuses: tuple[ServiceStatus, ...], code: int) -> None:
    STATE[:] = services(*statuses)
    assert get(server.port, "/eigen/node/health")[0] == code
    assert compute_health_code(STATE) == code


def test_services_and_service_health(server: NodeApiServer) -> None:
    STATE[:] = services(ServiceStatus.UP, ServiceStatus.DOWN)
    code, body = get(server.port, "/eigen/node/services")
    assert code == 200
    assert body == {
        "services": [
            {"id": "model-0", "name": "model 0", "description": "inference", "status": "Up"},
            {"id": "model-1", "name": "model 1", "description": "inference", "status": "Down"},
        ]
    }
    assert get(server.port, "/eigen/node/services/model-0/health")[0] == 200
    assert get(server.port, "/eigen/node/services/model-1/health")[0] == 503
    assert get(server.port, "/eigen/node/services/nope/health")[0] == 404
    assert get(server.port, "/elsewhere")[0] == 404

"""Shared fixtures. Hypothesis runs without deadlines: the reference backend is slow by design."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from avs.crypto.backends import Bn254Backend, load_backend

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("default")

VECTORS_DIR = Path(__file__).parent / "vectors"


def load_vectors(name: str) -> Any:
    return json.loads((VECTORS_DIR / name).read_text())


@pytest.fixture(params=["mcl", "py_ecc"])
def backend(request: pytest.FixtureRequest) -> Bn254Backend:
    return load_backend(request.param)


@pytest.fixture(scope="session")
def fast() -> Bn254Backend:
    return load_backend("mcl")


@pytest.fixture(scope="session")
def reference() -> Bn254Backend:
    return load_backend("py_ecc")

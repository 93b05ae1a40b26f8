"""Resilience suites: slow tests here run only when asked for with ``-m slow`` (``make test-resilience``).

``make test`` runs pytest without a marker expression, so the slow ones (the 1,000-request load)
are skipped there and the fast ones still run; CI runs ``make test-resilience`` after it.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="resilience: slow; run with `make test-resilience` (-m slow)")
    for item in items:
        if "tests/resilience/" in item.nodeid and item.get_closest_marker("slow") is not None:
            item.add_marker(skip)

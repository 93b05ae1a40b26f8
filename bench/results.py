"""``bench/results.json``: one file gathering every benchmark's figures, each updating its own keys."""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_PATH = Path(__file__).resolve().parent / "results.json"


def record_results(section: str, figures: dict[str, Any], path: Path = RESULTS_PATH) -> dict[str, Any]:
    """Merge ``figures`` into the file's top level and keep a dated copy under ``runs[section]``."""
    document: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    document.update(figures)
    runs = document.setdefault("runs", {})
    runs[section] = {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
        "python": platform.python_version(),
        **figures,
    }
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return document


def report_results(section: str, figures: dict[str, Any], record: bool = True) -> None:
    """Print the figures as JSON and, unless ``record`` is false, merge them into the results file."""
    print(json.dumps(figures, indent=2))
    if record:
        record_results(section, figures)
        print("recorded in bench/results.json")

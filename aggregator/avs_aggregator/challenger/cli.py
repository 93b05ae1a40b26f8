"""``avs-challenger run --config challenger.yaml``: JSON logs on stderr, one
``{"event": "ready", ...}`` line on stdout once it is watching (like the other binaries), and
SIGTERM/SIGINT stop cleanly."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from avs.errors import AvsError
from avs.logs import configure_json_logging


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="avs-challenger", description="Re-check certified batches; escalate.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="watch and challenge")
    run.add_argument("--config", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        from avs_aggregator.challenger.app import ChallengerApp, ChallengerSecrets, load_challenger_config

        config = load_challenger_config(args.config)
        configure_json_logging(config.log_level)
        app = ChallengerApp(config, ChallengerSecrets())

        def on_signal(_signum: int, _frame: FrameType | None) -> None:
            app.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        try:
            app.start()
        except BaseException:
            app.stop()
            raise
        ready = {"event": "ready", "metrics_port": app.metrics_port, "next_block": app.challenger.next_block}
        print(json.dumps(ready), flush=True)
        app.wait()
        return 0
    except AvsError as exc:
        print(f"avs-challenger: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

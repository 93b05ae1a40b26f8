"""``avs-aggregator``: ``run --config aggregator.yaml`` starts the service; ``version`` prints it.

Logs are JSON on stderr. SIGTERM and SIGINT stop it cleanly (intake first, then the steps in
progress). Exit status 2 with one line on stderr for configuration errors.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from avs import __version__
from avs.crypto.backends import get_backend
from avs.errors import AvsError
from avs.logs import configure_json_logging

logger = logging.getLogger("avs_aggregator")


def cmd_run(args: argparse.Namespace) -> int:
    from avs_aggregator.app import AggregatorApp
    from avs_aggregator.config import AggregatorSecrets, load_config

    config = load_config(Path(args.config))
    configure_json_logging(config.log_level)
    app = AggregatorApp(config, AggregatorSecrets())

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("stopping", extra={"signal": signal.Signals(signum).name})
        app.request_stop()  # stop() runs below, on this thread, once start() has returned

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if app.start():
            app.wait()
    finally:
        app.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avs-aggregator", description="The verifiable-inference AVS aggregator.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the version")
    run = sub.add_parser("run", help="run the aggregator")
    run.add_argument("--config", required=True, help="aggregator YAML config (see aggregator.example.yaml)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "version":
            print(f"avs-aggregator {__version__} (BN254 backend: {get_backend().name})")
            return 0
        return cmd_run(args)
    except AvsError as exc:
        print(f"avs-aggregator: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

"""``avs-aggregator``: the aggregator binary. The service is still being built (issue 6)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from avs import __version__
from avs.crypto.backends import get_backend


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["version"]:
        print(f"avs-aggregator {__version__} (BN254 backend: {get_backend().name})")
        return 0
    print("usage: avs-aggregator version  (the service itself is not built yet)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

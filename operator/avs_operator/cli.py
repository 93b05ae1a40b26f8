"""``avs-operator``: the operator binary.

The gRPC service (Generate, Verify, SignBatch) is still being built (issue 5); today this binary
manages the operator's keys, which it shares with ``avs keys``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from avs.cli import main as avs_main


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in {"keys", "version"}:
        print("usage: avs-operator {keys,version} ...  (the service itself is not built yet)", file=sys.stderr)
        return 2
    return avs_main(args)


if __name__ == "__main__":
    raise SystemExit(main())

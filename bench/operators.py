"""In-process operators for the benchmarks: a real ``OperatorApp`` (gRPC, call authentication,
slashing protection, BLS signing) serving an engine that is already loaded, so that several
operators can share one model in memory. Imports of the operator stack stay inside the function:
the aggregator-only benchmarks import this module without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eth_account import Account

from avs import keystore
from avs.crypto import bls
from avs.messages import Domain

TASK_MANAGER = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
DOMAIN = Domain(31337, TASK_MANAGER)
CALLER_KEY = b"\x0a" * 32  # the benchmark's aggregator: the only caller the operators accept
PASSWORD = "bench-only password"


def start_operator_app(
    home: Path, key_pair: bls.KeyPair, engine: Any, model_name: str, model_dir: Path, max_concurrent: int
) -> Any:
    """Start an ``OperatorApp`` whose keystore and slashing-protection database live in ``home``.
    The caller stops it with ``app.stop(grace_seconds)``."""
    from avs_operator.app import OperatorApp
    from avs_operator.config import OperatorSecrets, parse_config

    home.mkdir(parents=True, exist_ok=True)
    key_file = home / "bls.json"
    keystore.save_bls_keystore(key_file, key_pair, PASSWORD, keystore.MIN_SCRYPT_N)  # cheapest allowed: bench keys
    config = {
        "chain": {"chain_id": DOMAIN.chain_id, "task_manager": TASK_MANAGER},
        "keys": {"bls_keystore": str(key_file)},
        "models": [{"name": model_name, "path": str(model_dir)}],
        "auth": {"authorised_aggregators": [Account.from_key(CALLER_KEY).address]},
        "grpc": {"listen": "127.0.0.1:0", "max_concurrent_requests": max_concurrent},
        "node_api": {"listen": "127.0.0.1:0"},
        "metrics": {"listen": "127.0.0.1:0"},
        "slashing_protection_url": f"sqlite:///{home / 'protection.sqlite'}",
    }
    app = OperatorApp(
        parse_config(config),
        OperatorSecrets(bls_key_password=PASSWORD),  # type: ignore[arg-type]
        engine_loader=lambda path, config: engine,
        create_slashing_protection=True,  # a fresh operator for each run
    )
    app.start()
    return app

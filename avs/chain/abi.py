"""ABIs and custom-error selectors, from forge's build output (``contracts/out``).

Never hand-copied. An installed package (the operator's container image) has no forge build, so
``load_abi("InferenceTaskManager")`` reads the ABI shipped in ``avs/chain/abis/``, which
``make abis`` (``python -m avs.chain.abi``) writes from
``contracts/out/InferenceTaskManager.sol/InferenceTaskManager.json`` and ``tests/test_abis.py``
checks against a fresh build. Bytecode (deploying: devnet, tests) is read from the build output.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from eth_abi import decode
from eth_utils import keccak

from avs.errors import InvalidInputError

DEFAULT_OUT_DIR = Path(__file__).resolve().parents[2] / "contracts" / "out"
PACKAGED_DIR = Path(__file__).resolve().parent / "abis"
# Every contract whose ABI the services read at run time.
PACKAGED_ABIS = (
    "ERC20",
    "FaultManager",
    "InferenceTaskManager",
    "InsurancePool",
    "LocalRestakingCore",
    "OperatorRegistry",
    "QuorumBitmaps",
    "TestToken",
)

AbiEntry = dict[str, Any]


def load_artifact(contract: str, out_dir: Path = DEFAULT_OUT_DIR, source: str | None = None) -> dict[str, Any]:
    path = out_dir / f"{source or contract}.sol" / f"{contract}.json"
    if not path.is_file():
        raise InvalidInputError(f"no build output for {contract} at {path}; run `tools/forge build` in contracts/")
    artifact: dict[str, Any] = json.loads(path.read_text())
    return artifact


def load_abi(contract: str, out_dir: Path | None = None, source: str | None = None) -> list[AbiEntry]:
    """The packaged ABI of ``contract``; with ``out_dir``, the one in that forge build output."""
    if out_dir is not None:
        built: list[AbiEntry] = load_artifact(contract, out_dir, source)["abi"]
        return built
    path = PACKAGED_DIR / f"{contract}.json"
    if contract not in PACKAGED_ABIS or not path.is_file():
        raise InvalidInputError(f"no packaged ABI for {contract} (packaged: {', '.join(PACKAGED_ABIS)})")
    abi: list[AbiEntry] = json.loads(path.read_text())
    return abi


def render_abi(abi: list[AbiEntry]) -> str:
    return json.dumps(abi, indent=1, sort_keys=True) + "\n"


def write_packaged_abis(out_dir: Path = DEFAULT_OUT_DIR, target: Path = PACKAGED_DIR) -> list[Path]:
    """``make abis``: the packaged ABIs from forge's build output."""
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for contract in PACKAGED_ABIS:
        path = target / f"{contract}.json"
        path.write_text(render_abi(load_abi(contract, out_dir)))
        written.append(path)
    return written


def load_bytecode(contract: str, out_dir: Path = DEFAULT_OUT_DIR, source: str | None = None) -> str:
    code: str = load_artifact(contract, out_dir, source)["bytecode"]["object"]
    return code


def _canonical_type(param: Mapping[str, Any]) -> str:
    kind = str(param["type"])
    if kind.startswith("tuple"):
        inner = ",".join(_canonical_type(c) for c in param["components"])
        return f"({inner}){kind[len('tuple') :]}"
    return kind


def compute_error_selectors(abis: Iterable[list[AbiEntry]]) -> dict[bytes, AbiEntry]:
    """4-byte selector -> ABI entry of every custom error in ``abis``."""
    selectors: dict[bytes, AbiEntry] = {}
    for abi in abis:
        for entry in abi:
            if entry.get("type") != "error":
                continue
            signature = f"{entry['name']}({','.join(_canonical_type(p) for p in entry['inputs'])})"
            selectors[keccak(text=signature)[:4]] = entry
    return selectors


def decode_custom_error(data: bytes, selectors: Mapping[bytes, AbiEntry]) -> tuple[str, tuple[Any, ...]] | None:
    """(error name, arguments) of revert ``data``, or None if it is no known custom error."""
    entry = selectors.get(bytes(data[:4]))
    if entry is None:
        return None
    types = [_canonical_type(p) for p in entry["inputs"]]
    return str(entry["name"]), tuple(decode(types, bytes(data[4:])))


if __name__ == "__main__":
    for written in write_packaged_abis():
        print(f"wrote {written}")

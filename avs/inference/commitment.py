"""The weights commitment: a Merkle root over every tensor of a safetensors model folder.

Leaf of a tensor (name, dtype, shape, bytes as stored in the file):

    leaf = keccak256(abi.encode(WEIGHTS_LEAF_TAG, string name, string dtype, uint64[] shape,
                                keccak256(bytes)))

Leaves are ordered by tensor name (byte order of the UTF-8 name, across all ``*.safetensors``
files in the folder, so sharding does not change the root). When the folder has a ``config.json``,
one more leaf comes first, the architecture the tensors are read into:

    config leaf = keccak256(abi.encode(WEIGHTS_CONFIG_TAG, keccak256(canonical config JSON)))

(sorted keys, compact, without the keys that say nothing about the function: ``CONFIG_KEYS_IGNORED``),
so a ``config.json`` with another ``rms_norm_eps``, activation or layer count is another model.
Each level hashes adjacent pairs,
``keccak256(WEIGHTS_NODE_TAG ‖ left ‖ right)``; an odd last node moves up unchanged. The root of
one leaf is the leaf. Tensor bytes are read straight from the files in chunks (no torch, flat
memory), and the per-file leaves are cached under a fingerprint (path, size, mtime, ctime, inode,
device; ctime cannot be set back from user space) so a restart does not re-hash gigabytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from Crypto.Hash import keccak as keccak_stream
from eth_abi import encode
from eth_utils import keccak

from avs.errors import InvalidInputError, ModelMismatchError, ModelNotFoundError
from avs.types import Bytes32

WEIGHTS_LEAF_TAG = keccak(b"avs.inference.weights.leaf.v1")
WEIGHTS_NODE_TAG = keccak(b"avs.inference.weights.node.v1")
WEIGHTS_CONFIG_TAG = keccak(b"avs.inference.weights.config.v1")
# Bookkeeping that transformers writes into config.json: the release, where it came from, the dtype
# it was saved in (the profile's dtype decides the compute dtype; the tensor leaves, the stored one).
CONFIG_KEYS_IGNORED = frozenset({"transformers_version", "_name_or_path", "name_or_path", "dtype", "torch_dtype"})
CHUNK_BYTES = 16 * 1024 * 1024
MAX_HEADER_BYTES = 100 * 1024 * 1024
CACHE_FORMAT = 2  # 2: the fingerprint has ctime and device too


@dataclass(frozen=True, slots=True)
class TensorLeaf:
    name: str
    leaf: Bytes32


@dataclass(frozen=True, slots=True)
class WeightsCommitment:
    root: Bytes32
    tensor_names: frozenset[str]
    tensor_files: dict[str, str] = field(default_factory=dict)  # tensor name -> the file (name) holding it

    @property
    def tensor_count(self) -> int:
        return len(self.tensor_names)


def compute_tensor_leaf(name: str, dtype: str, shape: Sequence[int], data_hash: bytes) -> Bytes32:
    return Bytes32(
        keccak(
            encode(
                ["bytes32", "string", "string", "uint64[]", "bytes32"],
                [WEIGHTS_LEAF_TAG, name, dtype, list(shape), data_hash],
            )
        )
    )


def compute_config_leaf(config: dict[str, Any]) -> Bytes32:
    """The leaf of a model's ``config.json`` (parsed), without the keys in ``CONFIG_KEYS_IGNORED``."""
    kept = {k: v for k, v in config.items() if k not in CONFIG_KEYS_IGNORED}
    canonical = json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return Bytes32(keccak(encode(["bytes32", "bytes32"], [WEIGHTS_CONFIG_TAG, keccak(canonical.encode())])))


def compute_weights_root(leaves: Sequence[TensorLeaf], config_leaf: bytes | None = None) -> Bytes32:
    """The Merkle root of tensor leaves (in any order: they are sorted by name here), after the
    config leaf when there is one."""
    if not leaves:
        raise InvalidInputError("a weights commitment needs at least one tensor")
    ordered = sorted(leaves, key=lambda t: t.name.encode())
    names = [t.name for t in ordered]
    if len(set(names)) != len(names):
        raise InvalidInputError("tensor names must be unique across the model's files")
    level: list[bytes] = ([config_leaf] if config_leaf is not None else []) + [t.leaf for t in ordered]
    while len(level) > 1:
        pairs = [keccak(WEIGHTS_NODE_TAG + level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        level = pairs + ([level[-1]] if len(level) % 2 else [])
    return Bytes32(level[0])


def _read_header(handle: BinaryIO, size: int, path: Path) -> tuple[int, dict[str, Any]]:
    raw_length = handle.read(8)
    if len(raw_length) != 8:
        raise ModelMismatchError(f"{path}: not a safetensors file (too short)")
    (length,) = struct.unpack("<Q", raw_length)
    if length > MAX_HEADER_BYTES or 8 + length > size:
        raise ModelMismatchError(f"{path}: safetensors header length {length} is invalid")
    try:
        header = json.loads(handle.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelMismatchError(f"{path}: safetensors header is not JSON") from exc
    if not isinstance(header, dict):
        raise ModelMismatchError(f"{path}: safetensors header is not an object")
    header.pop("__metadata__", None)
    for name, info in header.items():
        if not _is_tensor_entry(info):
            raise ModelMismatchError(f"{path}: tensor {name!r} needs a dtype, a shape and two data offsets")
    return 8 + length, header


def _is_tensor_entry(info: Any) -> bool:
    def naturals(value: Any) -> bool:
        return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)

    return (
        isinstance(info, dict)
        and isinstance(info.get("dtype"), str)
        and naturals(info.get("shape"))
        and naturals(info.get("data_offsets"))
        and len(info["data_offsets"]) == 2
    )


def _iter_file_leaves(path: Path) -> Iterator[TensorLeaf]:
    size = path.stat().st_size
    with path.open("rb") as handle:
        data_start, header = _read_header(handle, size, path)
        entries = sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])
        for name, info in entries:
            begin, end = (int(v) for v in info["data_offsets"])
            if not 0 <= begin <= end or data_start + end > size:
                raise ModelMismatchError(f"{path}: tensor {name} lies outside the file")
            handle.seek(data_start + begin)
            digest = keccak_stream.new(digest_bits=256)
            remaining = end - begin
            while remaining:
                chunk = handle.read(min(CHUNK_BYTES, remaining))
                if not chunk:
                    raise ModelMismatchError(f"{path}: truncated tensor {name}")
                digest.update(chunk)
                remaining -= len(chunk)
            yield TensorLeaf(name, compute_tensor_leaf(name, str(info["dtype"]), info["shape"], digest.digest()))


def count_parameters(folder: Path) -> int:
    """The elements of every tensor in ``folder``'s ``*.safetensors`` files, from their headers alone
    (what the model needs in memory depends on the dtype it is loaded in, not on the stored one)."""
    total = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        with path.open("rb") as handle:
            _, header = _read_header(handle, path.stat().st_size, path)
        total += sum(math.prod(info["shape"]) for info in header.values())  # checked by _read_header
    return total


def get_default_cache_dir() -> Path:
    base = os.environ.get("AVS_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "avs")
    return Path(base) / "weights"


def _fingerprint(path: Path) -> dict[str, int | str]:
    stat = path.stat()
    return {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
        "inode": stat.st_ino,
        "device": stat.st_dev,
    }


def _get_file_leaves(path: Path, cache_dir: Path | None) -> list[TensorLeaf]:
    if cache_dir is None:
        return list(_iter_file_leaves(path))
    fingerprint = _fingerprint(path)
    cache_file = cache_dir / (hashlib.sha256(str(fingerprint["path"]).encode()).hexdigest()[:32] + ".json")
    try:
        cached = json.loads(cache_file.read_text())
        if cached["format"] == CACHE_FORMAT and cached["fingerprint"] == fingerprint:
            return [TensorLeaf(name, Bytes32(bytes.fromhex(leaf))) for name, leaf in cached["leaves"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    leaves = list(_iter_file_leaves(path))
    record = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "leaves": [[t.name, t.leaf.hex()] for t in leaves]}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(cache_file)
    except OSError:
        pass  # a read-only cache only costs time
    return leaves


def get_weights_commitment(folder: Path, cache_dir: Path | None = None) -> WeightsCommitment:
    """The commitment of the ``*.safetensors`` files in ``folder``; ``cache_dir=None`` disables the cache."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(f"no *.safetensors files in {folder}")
    per_file = {path.name: _get_file_leaves(path, cache_dir) for path in files}
    leaves = [leaf for file_leaves in per_file.values() for leaf in file_leaves]
    root = compute_weights_root(leaves, _read_config_leaf(Path(folder)))  # refuses a name held twice
    tensor_files = {leaf.name: file for file, file_leaves in per_file.items() for leaf in file_leaves}
    return WeightsCommitment(root=root, tensor_names=frozenset(tensor_files), tensor_files=tensor_files)


def _read_config_leaf(folder: Path) -> Bytes32 | None:
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise ModelMismatchError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelMismatchError(f"{path} is not a JSON object")
    return compute_config_leaf(config)

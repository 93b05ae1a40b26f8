"""The weights commitment and the model profile hash."""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import pytest
from eth_abi import encode
from eth_utils import keccak

from avs.errors import InvalidInputError, ModelMismatchError, ModelNotFoundError
from avs.inference import commitment
from avs.inference.commitment import (
    WEIGHTS_LEAF_TAG,
    WEIGHTS_NODE_TAG,
    TensorLeaf,
    compute_tensor_leaf,
    compute_weights_root,
    count_parameters,
    get_weights_commitment,
)
from avs.inference.profile import MODEL_PROFILE_TYPEHASH, ModelProfile, load_profile, parse_profile, save_profile

Tensor = tuple[str, list[int], bytes]
TENSORS: dict[str, Tensor] = {
    "a.weight": ("F32", [2, 2], bytes(range(16))),
    "b.bias": ("F32", [2], b"\x01" * 8),
    "c.embed": ("BF16", [3], b"\x02" * 6),
}


def write_safetensors(path: Path, tensors: dict[str, Tensor]) -> None:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset, blobs = 0, []
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def root_of(folder: Path, tensors: dict[str, Tensor]) -> bytes:
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / "model.safetensors", tensors)
    return get_weights_commitment(folder).root


def test_leaf_and_root_follow_the_documented_formula(tmp_path: Path) -> None:
    leaves = {
        name: keccak(
            encode(["bytes32", "string", "string", "uint64[]", "bytes32"], [WEIGHTS_LEAF_TAG, name, d, s, keccak(b)])
        )
        for name, (d, s, b) in TENSORS.items()
    }
    left = keccak(WEIGHTS_NODE_TAG + leaves["a.weight"] + leaves["b.bias"])
    assert root_of(tmp_path, TENSORS) == keccak(WEIGHTS_NODE_TAG + left + leaves["c.embed"])


def test_root_ignores_sharding_and_file_order(tmp_path: Path) -> None:
    whole = root_of(tmp_path / "whole", TENSORS)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    write_safetensors(sharded / "model-00002-of-00002.safetensors", {"a.weight": TENSORS["a.weight"]})
    write_safetensors(sharded / "model-00001-of-00002.safetensors", {k: TENSORS[k] for k in ("c.embed", "b.bias")})
    assert get_weights_commitment(sharded).root == whole


@pytest.mark.parametrize(
    "changed",
    [
        {"a.weight": ("F32", [2, 2], bytes(range(15)) + b"\xff")},  # one byte
        {"a.weight": ("F32", [4], bytes(range(16)))},  # shape
        {"a.weight": ("I32", [2, 2], bytes(range(16)))},  # dtype
    ],
)
def test_any_change_changes_the_root(tmp_path: Path, changed: dict[str, Tensor]) -> None:
    assert root_of(tmp_path / "x", TENSORS) != root_of(tmp_path / "y", {**TENSORS, **changed})


def test_renamed_or_dropped_tensor_changes_the_root(tmp_path: Path) -> None:
    base = root_of(tmp_path / "x", TENSORS)
    renamed = {("z.weight" if k == "a.weight" else k): v for k, v in TENSORS.items()}
    assert base != root_of(tmp_path / "y", renamed)
    assert base != root_of(tmp_path / "z", {k: v for k, v in TENSORS.items() if k != "b.bias"})


def test_cache_is_used_and_invalidated_by_the_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, cache = tmp_path / "m", tmp_path / "cache"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", TENSORS)
    first = get_weights_commitment(folder, cache)
    calls: list[Path] = []
    real = commitment._iter_file_leaves

    def counting(path: Path):  # type: ignore[no-untyped-def]
        calls.append(path)
        return real(path)

    monkeypatch.setattr(commitment, "_iter_file_leaves", counting)
    assert get_weights_commitment(folder, cache) == first
    assert calls == []
    write_safetensors(folder / "model.safetensors", {**TENSORS, "b.bias": ("F32", [2], b"\x03" * 8)})
    assert get_weights_commitment(folder, cache).root != first.root
    assert len(calls) == 1


def test_an_in_place_rewrite_with_the_old_mtime_is_not_served_from_the_cache(tmp_path: Path) -> None:
    """Same size, same inode, mtime set back (``os.utime``, ``rsync --inplace -t``): only the ctime
    moved, and it is part of the fingerprint."""
    folder, cache = tmp_path / "m", tmp_path / "cache"
    folder.mkdir()
    path = folder / "model.safetensors"
    write_safetensors(path, TENSORS)
    first = get_weights_commitment(folder, cache)
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one byte of the last tensor
    time.sleep(0.01)
    with path.open("r+b") as handle:
        handle.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_ino, after.st_mtime_ns) == (before.st_size, before.st_ino, before.st_mtime_ns)
    assert get_weights_commitment(folder, cache).root != first.root


def test_bad_folders_and_files_raise(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        get_weights_commitment(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(ModelMismatchError):
        get_weights_commitment(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(ModelMismatchError):
        get_weights_commitment(tmp_path)
    with pytest.raises(InvalidInputError):
        compute_weights_root([])
    leaf = TensorLeaf("x", compute_tensor_leaf("x", "F32", [1], b"\x00" * 32))
    with pytest.raises(InvalidInputError):
        compute_weights_root([leaf, leaf])


@pytest.mark.parametrize(
    "entry",
    [
        "oops",
        {"dtype": "F32", "shape": [2], "data_offsets": ["a", "b"]},
        {"dtype": "F32", "shape": [2], "data_offsets": [0]},
        {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]},
        {"dtype": 5, "shape": [2], "data_offsets": [0, 8]},
        {"shape": [2], "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": [True], "data_offsets": [0, 8]},
    ],
)
def test_a_malformed_tensor_entry_is_a_mismatch_not_a_crash(tmp_path: Path, entry: object) -> None:
    raw = json.dumps({"x.weight": entry}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\x00" * 8)
    with pytest.raises(ModelMismatchError, match="needs a dtype, a shape and two data offsets"):
        get_weights_commitment(tmp_path)
    with pytest.raises(ModelMismatchError, match="needs a dtype, a shape and two data offsets"):
        count_parameters(tmp_path)


def test_a_profile_file_that_is_not_json_is_invalid_input(tmp_path: Path) -> None:
    (tmp_path / "avs_profile.json").write_text("{")
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        load_profile(tmp_path)


def make_profile(**overrides: object) -> ModelProfile:
    fields: dict[str, object] = {
        "weights_root": b"\x01" * 32,
        "tokenizer_hash": b"\x02" * 32,
        "chat_template_hash": b"\x03" * 32,
        "dtype": "bfloat16",
        "tolerance_micro": 500_000,
        "max_context": 8192,
        "max_new_tokens": 512,
    }
    fields.update(overrides)
    return ModelProfile(**fields)  # type: ignore[arg-type]


def test_profile_hash_is_the_documented_struct_hash() -> None:
    profile = make_profile()
    expected = keccak(
        encode(
            ["bytes32"] * 5 + ["uint32"] * 4,
            [
                MODEL_PROFILE_TYPEHASH,
                b"\x01" * 32,
                b"\x02" * 32,
                b"\x03" * 32,
                keccak(text="bfloat16"),
                500_000,
                1,
                8192,
                512,
            ],
        )
    )
    assert profile.compute_hash() == expected
    assert profile.delta == 0.5
    assert make_profile(tolerance_micro=400_000).compute_hash() != expected
    assert make_profile(dtype="float32").compute_hash() != expected


@pytest.mark.parametrize(
    "overrides",
    [{"weights_root": b"\x01"}, {"dtype": "int8"}, {"tolerance_micro": -1}, {"decoding_rule_version": 2}],
)
def test_invalid_profiles_are_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError):
        make_profile(**overrides)


def test_profile_file_roundtrip_and_tamper_check(tmp_path: Path) -> None:
    profile = make_profile()
    path = save_profile(profile, tmp_path)
    assert load_profile(tmp_path) == profile
    record = json.loads(path.read_text())
    record["tolerance_micro"] = 900_000
    with pytest.raises(InvalidInputError):
        parse_profile(record)
    with pytest.raises(ModelNotFoundError):
        load_profile(tmp_path / "missing")


def test_config_json_is_a_leaf_of_the_commitment(tmp_path: Path) -> None:
    """The architecture is committed with the tensors: bookkeeping keys and key order do not count,
    any other value does."""
    folder = tmp_path / "m"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", TENSORS)
    tensors_only = get_weights_commitment(folder)
    config = {"model_type": "llama", "rms_norm_eps": 1e-5, "rope_scaling": {"type": "linear", "factor": 2.0}}
    (folder / "config.json").write_text(json.dumps(config))
    committed = get_weights_commitment(folder)
    assert committed.root != tensors_only.root and committed.tensor_count == tensors_only.tensor_count
    reordered = dict(reversed(list(config.items())))
    bookkeeping = {"transformers_version": "9.9.9", "dtype": "bfloat16", "_name_or_path": "/elsewhere"}
    (folder / "config.json").write_text(json.dumps({**reordered, **bookkeeping}, indent=4))
    assert get_weights_commitment(folder).root == committed.root
    (folder / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-6}))
    assert get_weights_commitment(folder).root != committed.root
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelMismatchError, match="JSON object"):
        get_weights_commitment(folder)

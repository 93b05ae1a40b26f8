"""The linear-time stop check gives, token by token, the answer of the rule it replaces: decode the
whole output so far and look for each stop sequence in the text."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avs.inference.stops import ByteLevelTable, StopScanner, _byte_level_chars
from tests.inference.conftest import build_tokenizer

tokenizers = pytest.importorskip("tokenizers")

SMOLLM2_TOKENIZER = (
    Path(os.environ.get("AVS_SMOLLM2_DIR", Path(__file__).resolve().parents[2] / "models" / "smollm2-135m"))
    / "tokenizer.json"
)


@pytest.fixture(scope="module")
def tiny_backend(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(folder)
    return tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))


@pytest.fixture(scope="module")
def backends(tiny_backend: Any) -> list[tuple[Any, ByteLevelTable | None, list[int]]]:
    """Each tokenizer with its table and its single-byte tokens past ASCII (they cut characters)."""
    found = [tiny_backend]
    if SMOLLM2_TOKENIZER.is_file():  # a real vocabulary: multi-byte merges, 49,152 tokens
        found.append(tokenizers.Tokenizer.from_file(str(SMOLLM2_TOKENIZER)))
    return [(b, ByteLevelTable.from_backend(b, b.get_vocab_size()), _single_high_bytes(b)) for b in found]


def _single_high_bytes(backend: Any) -> list[int]:
    chars = _byte_level_chars()
    return [backend.token_to_id(c) for c, b in chars.items() if b >= 0x80 and backend.token_to_id(c) is not None]


def _first_stop(backend: Any, ids: Sequence[int], stops: Sequence[str]) -> int | None:
    """The rule itself: the first n whose output ids[:n + 1] decodes to a text holding a stop."""
    for n in range(len(ids)):
        text = backend.decode(list(ids[: n + 1]), skip_special_tokens=True)
        if any(stop in text for stop in stops):
            return n
    return None


def _scan(scanner: StopScanner, ids: Sequence[int]) -> int | None:
    said = [scanner.push(token) for token in ids]
    first = said.index(True) if True in said else None
    assert all(said[first or len(said) :]), "once it says stop, it keeps saying so"
    return first


def _decode(backend: Any) -> Any:
    return lambda ids: backend.decode(list(ids), skip_special_tokens=True)


def test_byte_level_alphabet_is_the_tokenizers_one() -> None:
    chars = _byte_level_chars()
    assert sorted(chars.values()) == list(range(256))
    assert sorted(chars) == sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())


def test_tables_are_built_and_checked_for_byte_level_tokenizers(backends: list[Any]) -> None:
    for backend, table, _ in backends:
        assert table is not None
        special = [t for t in backend.get_added_tokens_decoder().values() if t.special]
        assert special and all(table.token_bytes[backend.token_to_id(t.content)] == b"" for t in special)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fast_scan_agrees_with_decoding_every_prefix(backends: list[Any], data: st.DataObject) -> None:
    backend, table, high_bytes = data.draw(st.sampled_from(backends))
    token = st.one_of(st.integers(0, backend.get_vocab_size() - 1), st.sampled_from(high_bytes))
    ids = data.draw(st.lists(token, min_size=1, max_size=40), label="ids")
    text = backend.decode(ids + data.draw(st.lists(token, max_size=8)), skip_special_tokens=True)
    cut = st.tuples(st.integers(0, max(0, len(text) - 1)), st.integers(1, 6)).map(lambda t: text[t[0] : t[0] + t[1]])
    stops = data.draw(st.lists(st.one_of(cut, st.text(min_size=1, max_size=3)).filter(bool), min_size=1, max_size=4))
    assert _scan(StopScanner(stops, table, _decode(backend)), ids) == _first_stop(backend, ids, stops), (ids, stops)


def test_cut_characters_and_replacement_characters(tiny_backend: Any) -> None:
    """ "é" is two byte tokens: the text holds U+FFFD after the first and "é" after the second. A stop
    holding U+FFFD falls back to decoding the whole output (it matches half a character)."""
    backend = tiny_backend
    table = ByteLevelTable.from_backend(backend, backend.get_vocab_size())
    chars = {b: c for c, b in _byte_level_chars().items()}
    a, e_acute = backend.token_to_id("a"), [backend.token_to_id(chars[b]) for b in "é".encode()]
    ids = [a, *e_acute, a]
    for stops, expected in [(["é"], 2), (["\ufffd"], 1), (["aé"], 2), (["éa"], 3), (["ée"], None)]:
        scanner = StopScanner(stops, table, _decode(backend))
        assert _scan(scanner, ids) == _first_stop(backend, ids, stops) == expected, stops


def test_other_decoders_fall_back_to_decoding_the_whole_output() -> None:
    vocab = {"[UNK]": 0, "ab": 1, "##c": 2, "d": 3}
    backend = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token="[UNK]"))
    backend.decoder = tokenizers.decoders.WordPiece()
    assert ByteLevelTable.from_backend(backend, len(vocab)) is None
    ids = [1, 2, 3, 1]
    scanner = StopScanner(["abc d"], None, _decode(backend))
    assert _scan(scanner, ids) == _first_stop(backend, ids, ["abc d"]) == 2


def test_a_table_that_disagrees_with_the_backend_is_not_used(tiny_backend: Any) -> None:
    class Disagreeing:
        decoder = tiny_backend.decoder

        def __getattr__(self, name: str) -> Any:
            return getattr(tiny_backend, name)

        def decode_batch(self, batch: list[list[int]], skip_special_tokens: bool) -> list[str]:
            texts = tiny_backend.decode_batch(batch, skip_special_tokens=skip_special_tokens)
            return [*texts[:-1], texts[-1] + "x"]

    size = tiny_backend.get_vocab_size()
    assert ByteLevelTable.from_backend(tiny_backend, size) is not None
    assert ByteLevelTable.from_backend(Disagreeing(), size) is None


def test_no_stop_sequences_never_stop(tiny_backend: Any) -> None:
    table = ByteLevelTable.from_backend(tiny_backend, tiny_backend.get_vocab_size())
    assert _scan(StopScanner([], table, _decode(tiny_backend)), [1, 2, 3]) is None


@pytest.mark.parametrize("swap", [(0x80, 0x81), (0xE2, 0xE3), (0x41, 0x42)])
def test_a_byte_map_that_differs_from_the_decoder_s_is_not_used(
    tiny_backend: Any, monkeypatch: pytest.MonkeyPatch, swap: tuple[int, int]
) -> None:
    """Two bytes past ASCII swapped: every single token still decodes the same (to U+FFFD), so only
    a check of whole characters sees it. With the swapped map "…" (E2 80 A6) would not be found."""
    import avs.inference.stops as stops

    real = stops._byte_level_chars()

    def swapped() -> dict[str, int]:
        a, b = swap
        return {c: {a: b, b: a}.get(byte, byte) for c, byte in real.items()}

    assert ByteLevelTable.from_backend(tiny_backend, tiny_backend.get_vocab_size()) is not None
    monkeypatch.setattr(stops, "_byte_level_chars", swapped)
    assert ByteLevelTable.from_backend(tiny_backend, tiny_backend.get_vocab_size()) is None

"""Stop sequences: does the decoded text of an output prefix hold one?

The rule (generation and verification must agree on it, across releases) is: after each token,
decode the whole output so far (the tokenizer backend's decode, special tokens left out) and stop
if any stop sequence occurs in that text. Decoding the whole output at every step is quadratic:
about 20 s of decoding for a 16K-token output, in generation and again in verification.

For a byte-level BPE tokenizer (GPT-2, Llama 3, Qwen, SmolLM2) the same answer comes in linear time.
Its decode is ``bytes(t1) + bytes(t2) + ...`` read as UTF-8, with U+FFFD for invalid or cut-off
sequences. A stop sequence ``s`` without U+FFFD occurs in that text exactly when ``s``'s UTF-8 bytes
occur in the bytes: a match starts with a byte that cannot continue an earlier character, so the
decoder starts a fresh character there and reads ``s`` back (and, the other way, every character of
``s`` came from its own valid bytes). The bytes only grow, so each step searches the new bytes and
the ``len(s) - 1`` before them.

``ByteLevelTable.from_backend`` builds each token's bytes and checks them against the backend's own
decoder: every byte that can be part of a character, within a character, and every token's text; a
tokenizer of another kind, or one that fails the check, or a stop sequence holding U+FFFD, falls
back to decoding the whole prefix (requests cannot carry such a stop: ``SamplingParams`` refuses
it, since only this quadratic decode finds it; the fallback serves direct callers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

REPLACEMENT_CHARACTER = "\ufffd"


def _byte_level_chars() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's ``bytes_to_unicode``): one printable character a byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars: dict[str, int] = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _decodes_every_character_byte(decoder: Any, chars: dict[str, int]) -> bool:
    """The decoder reads ``chars`` as their bytes, checked where each byte that can be part of a
    character is (a lone byte past ASCII decodes to U+FFFD whatever it is, so the vocabulary's single
    tokens cannot tell two such bytes apart). C0, C1 and F5-FF are never in a character, nor in a
    stop sequence: how they are mapped does not matter."""
    samples = [bytes([b]) for b in range(0x80)]
    samples += [bytes([0xC2, b]) for b in range(0x80, 0xC0)]  # every continuation byte
    samples += [bytes([lead, 0x80]) for lead in range(0xC2, 0xE0)]
    samples += [bytes([lead, 0xA0 if lead == 0xE0 else 0x80, 0x80]) for lead in range(0xE0, 0xF0)]
    samples += [bytes([lead, 0x90 if lead == 0xF0 else 0x80, 0x80, 0x80]) for lead in range(0xF0, 0xF5)]
    text = b"".join(samples)
    to_char = {b: c for c, b in chars.items()}
    return str(decoder.decode(["".join(to_char[b] for b in text)])) == text.decode("utf-8")


@dataclass(frozen=True, slots=True)
class ByteLevelTable:
    """Each token id's bytes in the decoded text (empty for a special token, which decode leaves out)."""

    token_bytes: tuple[bytes, ...]

    @classmethod
    def from_backend(cls, backend: Any, vocab_size: int) -> ByteLevelTable | None:
        """The table of a ``tokenizers.Tokenizer`` with a byte-level decoder, checked token by token
        against its decode; None when the decoder is of another kind or any token disagrees."""
        from tokenizers import decoders

        if not isinstance(backend.decoder, decoders.ByteLevel):
            return None
        chars = _byte_level_chars()
        if not _decodes_every_character_byte(backend.decoder, chars):
            return None
        special = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
        table: list[bytes] = []
        for token_id in range(vocab_size):
            token = backend.id_to_token(token_id)
            if token is None or token in special:
                table.append(b"")
            elif all(c in chars for c in token):
                table.append(bytes(chars[c] for c in token))
            else:  # an added token written as plain text
                table.append(token.encode("utf-8"))
        decoded = backend.decode_batch([[i] for i in range(vocab_size)], skip_special_tokens=True)
        if any(b.decode("utf-8", "replace") != text for b, text in zip(table, decoded, strict=True)):
            return None
        return cls(tuple(table))


class StopScanner:
    """Fed one output token at a time, says whether the output so far holds a stop sequence."""

    def __init__(
        self, stops: Sequence[str], table: ByteLevelTable | None, decode: Callable[[Sequence[int]], str]
    ) -> None:
        self._stops = tuple(stops)
        self._decode = decode
        self._ids: list[int] = []
        fast = table is not None and not any(REPLACEMENT_CHARACTER in s for s in self._stops)
        self._table = table if fast else None
        self._needles = tuple(s.encode("utf-8") for s in self._stops)
        self._overlap = max((len(n) for n in self._needles), default=1) - 1
        self._bytes = bytearray()
        self._found = False

    def push(self, token_id: int) -> bool:
        """Add the next output token; True from the first token whose output holds a stop sequence
        on (generation ends there, and verification requires it to be the last token, so what later
        tokens would say does not matter)."""
        if self._found or not self._stops:
            return self._found
        if self._table is None:
            self._ids.append(token_id)
            text = self._decode(self._ids)
            self._found = any(stop in text for stop in self._stops)
        else:  # a match that ends in the new bytes starts at most len(needle) - 1 bytes before them
            start = max(0, len(self._bytes) - self._overlap)
            self._bytes += self._table.token_bytes[token_id]
            self._found = any(self._bytes.find(needle, start) != -1 for needle in self._needles)
        return self._found

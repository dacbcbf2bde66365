"""Corpus: file -> text -> vocabulary -> integer tensor.

This module owns a corpus in memory (its text read by :mod:`charlstm.data.reader`, the one
reader), the :class:`Vocab` (``char_to_idx`` / ``idx_to_char``, encode / decode) and the
held-out split. Nothing here knows about models or batches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from charlstm.config import DataConfig
from charlstm.data.reader import Collector, stream_text
from charlstm.errors import CharLSTMError

Newlines = Literal["keep", "space"]


def read_text(
    path: str | Path,
    member: str | None = None,
    encoding: str | None = None,
    newlines: Newlines = "keep",
    max_chars: int | None = None,
) -> str:
    """Read a corpus file (``.zip`` or text) and return its normalised text, as
    :func:`charlstm.data.reader.stream_text` reads it.

    Several text members of a zip are joined, in name order, with a newline.
    """
    data = DataConfig(str(path), member, encoding, newlines, max_chars)
    return read_corpus_text(data)


def read_corpus_text(data: DataConfig) -> str:
    """The normalised text of the corpus ``data`` names, in memory."""
    collector = Collector()
    stream_text(data, collector)
    text = collector.text()
    if not text.strip():
        raise CharLSTMError(f"corpus {data.path} is empty (or whitespace only)")
    return text


def show_chars(chars: list[str], limit: int = 20) -> str:
    """``'a' 'b' 'c' and 5 more``: characters for an error message, the first ``limit``."""
    shown = " ".join(repr(ch) for ch in chars[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")


class Vocab:
    """Characters <-> indices. The order is sorted, so it is the same in every process."""

    def __init__(self, idx_to_char: Iterable[str]) -> None:
        self.idx_to_char: list[str] = list(idx_to_char)
        self.char_to_idx: dict[str, int] = {ch: i for i, ch in enumerate(self.idx_to_char)}
        if len(self.char_to_idx) != len(self.idx_to_char):
            raise CharLSTMError("vocabulary has duplicate characters")
        if any(len(ch) != 1 for ch in self.idx_to_char):
            raise CharLSTMError("vocabulary entries must be single characters")

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.idx_to_char)

    def __contains__(self, ch: object) -> bool:
        return ch in self.char_to_idx

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.idx_to_char == other.idx_to_char

    def __repr__(self) -> str:
        return f"Vocab({len(self)} characters)"

    def missing(self, text: str) -> list[str]:
        """Distinct characters of ``text`` not in the vocabulary, in order of appearance."""
        return list(dict.fromkeys(ch for ch in text if ch not in self.char_to_idx))

    def encode(self, text: str) -> torch.Tensor:
        """``text`` -> ``(len(text),)`` int64 tensor; unknown characters raise ``CharLSTMError``."""
        unknown = self.missing(text)
        if unknown:
            raise CharLSTMError(f"characters not in the vocabulary: {show_chars(unknown)}")
        lookup = self.char_to_idx
        return torch.tensor([lookup[ch] for ch in text], dtype=torch.long)

    def decode(self, indices: Iterable[int] | torch.Tensor) -> str:
        if isinstance(indices, torch.Tensor):
            indices = indices.tolist()
        return "".join(self.idx_to_char[i] for i in indices)

    def extend(self, chars: Iterable[str]) -> Vocab:
        """A new vocabulary with ``chars`` appended (existing indices unchanged)."""
        new = [ch for ch in dict.fromkeys(chars) if ch not in self.char_to_idx]
        return Vocab(self.idx_to_char + new)

    def to_list(self) -> list[str]:
        return list(self.idx_to_char)


@dataclass
class Corpus:
    """A normalised text, its vocabulary and its indices as one ``(n,)`` int64 tensor."""

    text: str
    vocab: Vocab
    indices: torch.Tensor  # (n,) int64

    @classmethod
    def read(cls, data: DataConfig, vocab: Vocab | None = None) -> Corpus:
        """The corpus ``data`` names, read into memory (``vocab``: the one to encode with)."""
        return cls.from_text(read_corpus_text(data), vocab)

    @classmethod
    def from_text(cls, text: str, vocab: Vocab | None = None) -> Corpus:
        vocab = vocab if vocab is not None else Vocab.from_text(text)
        return cls(text=text, vocab=vocab, indices=vocab.encode(text))

    def __len__(self) -> int:
        return len(self.text)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the text: the same for the same characters, whatever the file."""
        return text_fingerprint(self.text)

    def split(self, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(train, val)`` index tensors: validation is the last ``val_fraction`` of the text."""
        cut = split_point(len(self), val_fraction)
        return self.indices[:cut], self.indices[cut:]


def text_fingerprint(text: str) -> str:
    """SHA-256 (hex) of ``text``'s UTF-8 bytes (as ``prepare`` computes it, piece by piece)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def split_point(n: int, val_fraction: float) -> int:
    """Index where held-out text starts: ``int(n * (1 - val_fraction))`` (``n`` if 0);
    ``val_fraction`` in ``[0, 1)``, as :class:`~charlstm.config.TrainConfig` checks it."""
    return int(n * (1.0 - val_fraction))

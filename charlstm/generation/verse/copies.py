"""The lines of the training text, as a set of hashes: does a line appear there verbatim?

A line is a run of text characters (:func:`~charlstm.generation.verse.forms.text_characters`)
between punctuation, spaces and newlines, at least two characters long. Its hash is the
first 8 bytes of its UTF-8 BLAKE2b digest, the same in every process; the set is a sorted
``uint64`` array, looked up by binary search.

:func:`training_lines` builds a run's set once, from its training text (the corpus read as
in training, before the held-out split, or a prepared corpus's ``train.bin``), and stores it
beside the checkpoint as ``verse-lines.npz``; later requests load it (a few milliseconds).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from charlstm.data.corpus import read_text, split_point
from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError
from charlstm.generation.verse.forms import text_characters
from charlstm.storage import checkpoint as ckpt
from charlstm.storage import safe_io

FILE_NAME = "verse-lines.npz"
MIN_LINE = 2


def line_hash(line: str) -> int:
    return int.from_bytes(hashlib.blake2b(line.encode("utf-8"), digest_size=8).digest(), "little")


def split_lines(text: str) -> Iterator[str]:
    """The lines of ``text``: runs of text characters at least :data:`MIN_LINE` long."""
    chars = sorted(set(text))
    breaks = [ch for ch, keep in zip(chars, text_characters(chars), strict=True) if not keep]
    if not breaks:
        parts: Iterable[str] = [text]
    else:
        parts = re.split("[" + re.escape("".join(breaks)) + "]+", text)
    return (part for part in parts if len(part) >= MIN_LINE)


class LineSet:
    """Hashes of a text's lines (see the module docstring); ``line in lines``."""

    def __init__(self, hashes: np.ndarray, key: str = "", is_sorted: bool = False) -> None:
        hashes = hashes.astype(np.uint64, copy=False)
        self.hashes = hashes if is_sorted else np.unique(hashes)  # sorted, each once
        self.key = key

    @classmethod
    def from_text(cls, text: str, key: str = "") -> LineSet:
        values = np.fromiter((line_hash(line) for line in split_lines(text)), dtype=np.uint64)
        return cls(values, key)

    def __len__(self) -> int:
        return len(self.hashes)

    def __contains__(self, line: object) -> bool:
        if not isinstance(line, str) or not self.hashes.size:
            return False
        value = np.uint64(line_hash(line))
        at = int(np.searchsorted(self.hashes, value))
        return bool(at < len(self.hashes) and self.hashes[at] == value)

    def save(self, path: Path) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, hashes=self.hashes, key=np.array(self.key))
        safe_io.write_atomic(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> LineSet:
        with np.load(path, allow_pickle=False) as data:
            return cls(data["hashes"], str(data["key"]), is_sorted=True)  # as saved


def _source(checkpoint: ckpt.Checkpoint) -> tuple[Path, str]:
    """The run's corpus and a key naming its training text (path, size, time, split)."""
    data = checkpoint.data_config
    path = Path(data.path)
    if not path.exists():
        raise SettingError(
            f"the copy filter reads the run's training text, and its corpus {path} is not "
            "there; to write without the filter, turn off {copy_filter}"
        )
    stat = path.stat()
    fraction = checkpoint.train_config.val_fraction
    key = (
        f"{path.resolve()}|{data.member}|{stat.st_size}|{stat.st_mtime_ns}|{data.max_chars}|"
        f"{data.newlines}|{fraction}"
    )
    return path, key


def _training_text(checkpoint: ckpt.Checkpoint, path: Path) -> str:
    """The run's training text: its corpus before the held-out split, as in training."""
    from charlstm.data.prepared import PreparedCorpus, is_prepared

    if is_prepared(path):
        prepared = PreparedCorpus.open(path)
        chars = prepared.vocab.idx_to_char
        return "".join(chars[i] for i in prepared.train.tolist())
    data = checkpoint.data_config
    text = read_text(path, data.member, data.encoding, data.newlines, data.max_chars)
    return text[: split_point(len(text), checkpoint.train_config.val_fraction)]


def training_lines(checkpoint: ckpt.Checkpoint) -> LineSet:
    """The lines of the run's training text: loaded from ``verse-lines.npz`` beside the
    checkpoint, or built (once) and stored there. A run directory that cannot be written
    to keeps the set in memory for this process only."""
    stored = Path(checkpoint.path).parent / FILE_NAME
    path, key = _source(checkpoint)
    if stored.is_file():
        try:
            lines = LineSet.load(stored)
        except (OSError, ValueError, KeyError):
            lines = None
        if lines is not None and lines.key == key:
            return lines
    lines = LineSet.from_text(_training_text(checkpoint, path), key)
    try:
        lines.save(stored)
    except CharLSTMError:
        pass  # a read-only run directory: the set serves this process only
    return lines

"""Corpus: file -> text -> vocabulary -> integer tensor.

This module owns reading a corpus (a ``.zip`` of text members or a plain text file),
normalising it, the :class:`Vocab` (``char_to_idx`` / ``idx_to_char``, encode / decode)
and the held-out split. Nothing here knows about models or batches.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from charlstm.errors import CharLSTMError

Newlines = Literal["keep", "space"]

#: Member names treated as text inside a zip (plus names without a suffix).
TEXT_SUFFIXES = (".txt", ".text", ".lrc", ".md")

#: Tried in order when no ``encoding`` is given: UTF-8 (a BOM is dropped), then GB18030,
#: the superset of GBK that Chinese lyrics files saved on Windows often use.
FALLBACK_ENCODINGS = ("utf-8-sig", "gb18030")


def _is_text_member(info: zipfile.ZipInfo) -> bool:
    name = info.filename
    base = name.rsplit("/", 1)[-1]
    if info.is_dir() or name.startswith("__MACOSX/") or not base or base.startswith("."):
        return False
    return "." not in base or base.lower().endswith(TEXT_SUFFIXES)


#: A damaged archive fails in many ways: a bad header, a corrupt deflate stream
#: (zlib.error), an encrypted member (RuntimeError), an unknown compression method.
ZIP_ERRORS = (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, zlib.error)


def check_source(path: Path) -> None:
    """Raise ``CharLSTMError`` unless ``path`` is an existing file."""
    if not path.exists():
        raise CharLSTMError(f"corpus not found: {path}")
    if path.is_dir():
        raise CharLSTMError(f"corpus is a directory, not a file: {path}")


def zip_text_members(archive: zipfile.ZipFile, path: Path, member: str | None) -> list[str]:
    """The members of ``archive`` that make the corpus: ``member``, or every text member
    in name order."""
    infos = archive.infolist()
    if member is not None:
        names = [i.filename for i in infos]
        if member not in names:
            listed = ", ".join(names) or "none"
            raise CharLSTMError(f"no member {member!r} in {path} (members: {listed})")
        return [member]
    chosen = sorted(i.filename for i in infos if _is_text_member(i))
    if not chosen:
        raise CharLSTMError(f"no text member (.txt) in zip file {path}")
    return chosen


def check_plain_file(path: Path, member: str | None) -> None:
    """Raise ``CharLSTMError`` if ``path``, not a zip file, is named or used as one."""
    if path.suffix.lower() == ".zip":
        raise CharLSTMError(f"not a zip file: {path}")
    if member is not None:
        raise CharLSTMError(f"--member applies to zip files only, and {path} is not one")


def _read_bytes(path: Path, member: str | None) -> list[tuple[str, bytes]]:
    """Return ``(name, raw bytes)`` for each text source in ``path``."""
    check_source(path)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                chosen = zip_text_members(archive, path, member)
                return [(name, archive.read(name)) for name in chosen]
        except ZIP_ERRORS as err:
            raise CharLSTMError(f"cannot read zip file {path}: {err}") from err
    check_plain_file(path, member)
    try:
        return [(path.name, path.read_bytes())]
    except OSError as err:
        raise CharLSTMError(f"cannot read corpus {path}: {err.strerror}") from err


def decode_bytes(raw: bytes, name: str, encoding: str | None = None) -> str:
    """Decode ``raw`` with ``encoding``, or UTF-8 then GB18030 when none is given.

    NUL bytes mark a binary file, unless an ``encoding`` such as UTF-16 is named, whose
    text holds them; then a NUL in the decoded text does.
    """
    binary = f"{name} looks like a binary file, not text (it contains NUL bytes)"
    if encoding is None and b"\x00" in raw:
        raise CharLSTMError(binary)
    encodings: Sequence[str] = (encoding,) if encoding else FALLBACK_ENCODINGS
    for enc in encodings:
        try:
            text = raw.decode(enc)
        except LookupError as err:
            raise CharLSTMError(f"unknown encoding: {enc}") from err
        except UnicodeDecodeError:
            continue
        if "\x00" in text:
            raise CharLSTMError(binary)
        return text.removeprefix("\ufeff")
    tried = " or ".join(encodings)
    raise CharLSTMError(f"cannot decode {name} as {tried}; pass --encoding to name its encoding")


def normalize(text: str, newlines: Newlines = "keep", max_chars: int | None = None) -> str:
    """Unify line endings, optionally turn them into spaces (d2l), optionally truncate.

    d2l's setup is ``max_chars=10000`` applied to the raw text, then ``\\n`` and ``\\r``
    replaced by spaces; we truncate *after* turning ``\\r\\n`` into ``\\n`` so that a file
    saved on Windows gives the same corpus as one saved on Linux.
    """
    if newlines not in ("keep", "space"):
        raise CharLSTMError(f"--newlines must be 'keep' or 'space', not {newlines!r}")
    if newlines == "space":
        # d2l: corpus.replace('\n', ' ').replace('\r', ' ') on the first max_chars characters
        if max_chars is not None:
            text = text[:max_chars]
        return text.replace("\n", " ").replace("\r", " ")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text[:max_chars] if max_chars is not None else text


def read_text(
    path: str | Path,
    member: str | None = None,
    encoding: str | None = None,
    newlines: Newlines = "keep",
    max_chars: int | None = None,
) -> str:
    """Read a corpus file (``.zip`` or text) and return its normalised text.

    Several text members of a zip are joined, in name order, with a newline.
    """
    if max_chars is not None and max_chars <= 0:
        raise CharLSTMError(f"--max-chars must be positive, not {max_chars}")
    path = Path(path)
    parts = [decode_bytes(raw, name, encoding) for name, raw in _read_bytes(path, member)]
    text = normalize("\n".join(parts), newlines, max_chars)
    if not text.strip():
        raise CharLSTMError(f"corpus {path} is empty (or whitespace only)")
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
    def from_text(cls, text: str, vocab: Vocab | None = None) -> Corpus:
        vocab = vocab if vocab is not None else Vocab.from_text(text)
        return cls(text=text, vocab=vocab, indices=vocab.encode(text))

    def __len__(self) -> int:
        return len(self.text)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the text: the same for the same characters, whatever the file."""
        return hashlib.sha256(self.text.encode("utf-8", "surrogatepass")).hexdigest()

    def split(self, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(train, val)`` index tensors: validation is the last ``val_fraction`` of the text."""
        cut = split_point(len(self), val_fraction)
        return self.indices[:cut], self.indices[cut:]


def split_point(n: int, val_fraction: float) -> int:
    """Index where held-out text starts: ``int(n * (1 - val_fraction))`` (``n`` if 0)."""
    if not 0.0 <= val_fraction < 1.0:
        raise CharLSTMError(f"--val-fraction must be in [0, 1), not {val_fraction}")
    return int(n * (1.0 - val_fraction))

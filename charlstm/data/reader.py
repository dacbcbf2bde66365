"""The one reader of a corpus: file -> decoded, normalised text, streamed in pieces.

Every corpus is read here, whether it ends in memory (:func:`charlstm.data.corpus.read_text`
collects the pieces) or on disk (:func:`charlstm.data.prepared.prepare` counts them, then
writes their indices). :func:`stream_text` reads the sources of a :class:`DataConfig` (a
``.zip``'s text members in name order, joined with a newline, or a plain text file) in
chunks of ``chunk_bytes`` bytes, never whole, and hands each normalised piece to a
:class:`Consumer`:

* decoding: the ``encoding`` named, else strict UTF-8 (a BOM is dropped), restarting a source
  with GB18030 (the superset of GBK that Chinese lyrics files saved on Windows often use) on
  a decode error. NUL bytes mark a binary file, unless an encoding such as UTF-16 is named,
  whose text holds them; then a NUL in the decoded text does.
* normalising (:class:`Normalizer`): ``newlines keep`` turns ``\\r\\n`` and ``\\r`` into
  ``\\n`` and then keeps the first ``max_chars`` characters; ``newlines space`` keeps the
  first ``max_chars`` characters and turns ``\\n`` and ``\\r`` into spaces (d2l's setup:
  ``max_chars=10000`` on the raw text, then both replaced by spaces).
"""

from __future__ import annotations

import codecs
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Protocol

from charlstm.config import DataConfig
from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError

#: Member names treated as text inside a zip (plus names without a suffix).
TEXT_SUFFIXES = (".txt", ".text", ".lrc", ".md")

#: Tried in order when no ``encoding`` is given: UTF-8 (a BOM is dropped), then GB18030.
FALLBACK_ENCODINGS = ("utf-8-sig", "gb18030")

#: Bytes read from the source at a time: a few tens of MB of NumPy work per chunk.
CHUNK_BYTES = 4 << 20

#: A damaged archive fails in many ways: a bad header, a corrupt deflate stream
#: (zlib.error), an encrypted member (RuntimeError), an unknown compression method.
ZIP_ERRORS = (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, zlib.error)


class Consumer(Protocol):
    """What :func:`stream_text` feeds: pieces of the text, and a state to go back to when a
    source is read again with another encoding."""

    def add(self, text: str) -> None: ...

    def state(self) -> Any: ...

    def restore(self, state: Any) -> None: ...


class Collector:
    """A :class:`Consumer` that keeps the text in memory."""

    def __init__(self) -> None:
        self.pieces: list[str] = []

    def add(self, text: str) -> None:
        if text:
            self.pieces.append(text)

    def state(self) -> int:
        return len(self.pieces)

    def restore(self, state: int) -> None:
        del self.pieces[state:]

    def text(self) -> str:
        return "".join(self.pieces)


def _is_text_member(info: zipfile.ZipInfo) -> bool:
    name = info.filename
    base = name.rsplit("/", 1)[-1]
    if info.is_dir() or name.startswith("__MACOSX/") or not base or base.startswith("."):
        return False
    return "." not in base or base.lower().endswith(TEXT_SUFFIXES)


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


def _check_plain_file(path: Path, member: str | None) -> None:
    """Raise if ``path``, not a zip file, is named or used as one."""
    if path.suffix.lower() == ".zip":
        raise CharLSTMError(f"not a zip file: {path}")
    if member is not None:
        raise SettingError(f"{{member}} applies to zip files only, and {path} is not one")


Opener = Callable[[], IO[bytes]]


@contextmanager
def _sources(path: Path, member: str | None) -> Iterator[list[tuple[str, Opener]]]:
    """``(name, open)`` for each text source of ``path``, in the corpus's order."""
    check_source(path)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = zip_text_members(archive, path, member)
                yield [(name, lambda name=name: archive.open(name)) for name in names]
        except ZIP_ERRORS as err:
            raise CharLSTMError(f"cannot read zip file {path}: {err}") from err
        return
    _check_plain_file(path, member)
    try:
        yield [(path.name, lambda: open(path, "rb"))]
    except OSError as err:
        raise CharLSTMError(f"cannot read corpus {path}: {err.strerror}") from err


def _binary(name: str) -> CharLSTMError:
    return CharLSTMError(f"{name} looks like a binary file, not text (it contains NUL bytes)")


def _decoded(
    opener: Opener, name: str, encoding: str, sniffing: bool, chunk_bytes: int
) -> Iterator[str]:
    """The text of one source, decoded with ``encoding`` piece by piece.

    NUL bytes mark a binary file when no encoding was named (``sniffing``), a NUL
    character always; one leading BOM is dropped. A decode error raises
    ``UnicodeDecodeError``.
    """
    try:
        decoder = codecs.getincrementaldecoder(encoding)()
    except LookupError as err:
        raise CharLSTMError(f"unknown encoding: {encoding}") from err
    at_start = True
    with opener() as stream:
        while True:
            raw = stream.read(chunk_bytes)
            if sniffing and b"\x00" in raw:
                raise _binary(name)
            piece = decoder.decode(raw, final=not raw)
            if "\x00" in piece:
                raise _binary(name)
            if at_start and piece:
                piece, at_start = piece.removeprefix("\ufeff"), False
            if piece:
                yield piece
            if not raw:
                return


def _has_nul(opener: Opener, chunk_bytes: int) -> bool:
    with opener() as stream:
        while raw := stream.read(chunk_bytes):
            if b"\x00" in raw:
                return True
    return False


class Normalizer:
    """Normalisation applied to a stream of pieces of the joined text.

    ``keep``: ``\\r\\n`` and ``\\r`` become ``\\n`` (a ``\\r`` at the end of a piece waits
    for the next), then at most ``max_chars`` characters; ``space``: the first
    ``max_chars`` characters, then ``\\n`` and ``\\r`` become spaces. Truncating after
    ``\\r\\n`` became ``\\n`` makes a file saved on Windows the same corpus as one saved on
    Linux.
    """

    def __init__(self, newlines: str, max_chars: int | None) -> None:
        self.newlines, self.max_chars = newlines, max_chars
        self.pending = ""  # a trailing "\r" (keep)
        self.taken = 0  # characters passed on (keep) or read (space)

    @property
    def done(self) -> bool:
        return self.max_chars is not None and self.taken >= self.max_chars

    def state(self) -> tuple[str, int]:
        return self.pending, self.taken

    def restore(self, state: tuple[str, int]) -> None:
        self.pending, self.taken = state

    def _limit(self, text: str) -> str:
        if self.max_chars is not None:
            text = text[: max(0, self.max_chars - self.taken)]
        self.taken += len(text)
        return text

    def feed(self, piece: str) -> str:
        if self.done:
            return ""
        if self.newlines == "space":
            return self._limit(piece).replace("\n", " ").replace("\r", " ")
        text = self.pending + piece
        self.pending = "\r" if text.endswith("\r") else ""
        if self.pending:
            text = text[:-1]
        return self._limit(text.replace("\r\n", "\n").replace("\r", "\n"))

    def finish(self) -> str:
        text, self.pending = ("\n" if self.pending else ""), ""
        return "" if self.done else self._limit(text)


def stream_text(
    data: DataConfig,
    consumer: Consumer,
    chunk_bytes: int = CHUNK_BYTES,
    encodings: list[str] | None = None,
) -> list[str]:
    """Feed the normalised text of the corpus ``data`` names to ``consumer``; return each
    source's encoding.

    Without ``encodings`` each source is read to its end, trying ``data.encoding`` or UTF-8
    then GB18030, and restarting the source (and the consumer's state) after a decode error.
    With ``encodings`` (a second reading: what the first chose) each source is decoded with
    its own and reading stops at ``max_chars``.
    """
    if chunk_bytes < 1:
        raise CharLSTMError(f"chunk size must be positive, not {chunk_bytes}")
    normalizer = Normalizer(data.newlines, data.max_chars)
    chosen: list[str] = []
    with _sources(Path(data.path), data.member) as sources:
        for number, (name, opener) in enumerate(sources):
            if number:
                consumer.add(normalizer.feed("\n"))  # the members are joined with "\n"
            if encodings is not None:
                if normalizer.done:
                    break
                tried: tuple[str, ...] = (encodings[number],)
            else:
                tried = (data.encoding,) if data.encoding else FALLBACK_ENCODINGS
            for encoding in tried:
                saved = normalizer.state(), (consumer.state() if encodings is None else None)
                try:
                    for piece in _decoded(
                        opener, name, encoding, data.encoding is None, chunk_bytes
                    ):
                        consumer.add(normalizer.feed(piece))
                        if encodings is not None and normalizer.done:
                            break
                except UnicodeDecodeError:
                    if encodings is not None:
                        raise
                    normalizer.restore(saved[0])
                    consumer.restore(saved[1])
                    continue
                chosen.append(encoding)
                break
            else:
                if data.encoding is None and _has_nul(opener, chunk_bytes):
                    raise _binary(name)
                raise SettingError(
                    f"cannot decode {name} as {' or '.join(tried)}; "
                    "pass {encoding} to name its encoding"
                )
        consumer.add(normalizer.finish())
    return chosen

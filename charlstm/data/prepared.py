"""Prepared corpora: the indices on disk, read back through ``np.memmap``.

``prepare`` turns a corpus file (as :func:`charlstm.data.corpus.read_text` reads it) into a
directory that training can open in constant memory, the way nanoGPT's ``prepare.py``
and torch-rnn's ``preprocess.py`` do::

    out_dir/
      train.bin   the first split_point(n, val_fraction) indices, uint16 (uint32 when the
                  vocabulary has more than 65,535 characters), native byte order
      val.bin     the rest
      vocab.json  the vocabulary, a JSON list of characters (index order), as runs write it
      meta.json   format version, dtype, sizes, SHA-256 of the text, the DataConfig,
                  val_fraction and the count of every character; written last

The source is read twice by the one reader, :func:`charlstm.data.reader.stream_text`, in
chunks of ``chunk_bytes`` bytes, never held whole:

* pass 1 counts the characters of the normalised text, its length and the SHA-256 of its
  UTF-8 bytes (:meth:`charlstm.data.corpus.Corpus.fingerprint`);
* pass 2 decodes it again with the encodings pass 1 chose and writes the indices.

The result is the same as ``Corpus.from_text(read_text(...))``: the same vocabulary
(sorted distinct characters), indices and fingerprint. Everything is written into a
hidden temporary directory beside ``out_dir`` and renamed at the end, so a killed
``prepare`` never leaves a directory that :meth:`PreparedCorpus.open` accepts.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from charlstm.config import DataConfig
from charlstm.data.corpus import Vocab, show_chars, split_point
from charlstm.data.reader import CHUNK_BYTES, stream_text
from charlstm.errors import CharLSTMError, write_failed

FORMAT_VERSION = 1
FORMAT_NAME = "charlstm-prepared"
#: Above this vocabulary size the indices are stored as uint32.
MAX_UINT16_VOCAB = 65_535
FILES = ("train.bin", "val.bin", "vocab.json", "meta.json")
#: ``charlstm train FILE`` prepares a corpus file larger than this on disk (bytes; a zip
#: file's own size) inside the run directory, in :data:`RUN_CORPUS`, rather than reading
#: it into memory; a smaller one is read into memory, as it always was.
PREPARE_ABOVE_BYTES = 32 << 20
#: The environment variable that lowers :data:`PREPARE_ABOVE_BYTES` (bytes), for tests.
PREPARE_ABOVE_ENV = "CHARLSTM_PREPARE_ABOVE"
#: The prepared corpus inside a run directory.
RUN_CORPUS = "corpus"

_UNICODE = 0x110000  # code points


def _codes(text: str) -> np.ndarray:
    """``(len(text),)`` uint32 code points, without a Python object per character."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


class _Pass1:
    """Counts, length, whitespace and SHA-256 of the normalised text."""

    def __init__(self) -> None:
        self.counts = np.zeros(_UNICODE, dtype=np.int64)
        self.sha = hashlib.sha256()
        self.length = 0
        self.visible = False  # a character other than whitespace was seen

    def add(self, text: str) -> None:
        if not text:
            return
        counts = np.bincount(_codes(text))
        self.counts[: len(counts)] += counts
        self.sha.update(text.encode("utf-8", "surrogatepass"))
        self.length += len(text)
        self.visible = self.visible or bool(text.strip())

    def state(self) -> tuple[Any, ...]:
        return self.counts.copy(), self.sha.copy(), self.length, self.visible

    def restore(self, state: tuple[Any, ...]) -> None:
        counts, sha, self.length, self.visible = state
        self.counts, self.sha = counts, sha.copy()


#: What to do after a failed write of a prepared corpus, once the disk has room.
THEN = "run the command again"


def _write_all(handle: IO[bytes], data: bytes, shown: Path) -> None:
    """Write all of ``data`` to the unbuffered ``handle``; a failed write (a full disk, the
    file-size limit) is :class:`~charlstm.errors.WriteFailed` naming ``shown``, the file's
    name once in place, and not an ``OSError``, which ``_sources`` would take for a failure
    to read the corpus."""
    view = memoryview(data)
    try:
        while view:  # a short write (the disk full mid-way) is followed by one that raises
            written = handle.write(view)
            if not written:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(shown))
            view = view[written:]
    except OSError as err:
        raise write_failed(shown, err, THEN) from err


class _Pass2:
    """Writes the indices of the normalised text: ``train.bin`` up to ``cut``, then ``val.bin``
    (``out_dir``: the directory they are shown in, in a failure's message)."""

    def __init__(
        self, vocab: Vocab, dtype: np.dtype, cut: int, train: IO, val: IO, out_dir: Path
    ) -> None:
        self.table = np.zeros(_UNICODE, dtype=dtype)
        self.table[[ord(ch) for ch in vocab.idx_to_char]] = np.arange(len(vocab), dtype=dtype)
        self.cut, self.train, self.val, self.out_dir = cut, train, val, out_dir
        self.position = 0
        self.train_counts = np.zeros(len(vocab), dtype=np.int64)

    def add(self, text: str) -> None:
        if not text:
            return
        indices = self.table[_codes(text)]
        head = indices[: max(0, self.cut - self.position)]
        if len(head):
            _write_all(self.train, head.tobytes(), self.out_dir / "train.bin")
            self.train_counts += np.bincount(head, minlength=len(self.train_counts))
        if len(head) < len(indices):
            _write_all(self.val, indices[len(head) :].tobytes(), self.out_dir / "val.bin")
        self.position += len(indices)

    def state(self) -> None:
        """Pass 2 reads each source with the encoding pass 1 chose: it never starts again."""

    def restore(self, state: None) -> None:
        raise AssertionError("pass 2 never reads a source again")


# ---------------------------------------------------------------------- prepare


def _dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= MAX_UINT16_VOCAB else np.uint32)


def prepare(
    data: DataConfig,
    val_fraction: float,
    out_dir: str | Path,
    log: Callable[[str], object] = print,
    chunk_bytes: int = CHUNK_BYTES,
) -> PreparedCorpus:
    """Write the prepared form of the corpus ``data`` names into ``out_dir``; open it.

    ``out_dir`` must not exist, be empty, or hold a prepared corpus (which is replaced).
    Raises ``CharLSTMError`` for what ``read_text`` refuses (missing file, undecodable or
    binary text, an empty corpus...). ``data`` and ``val_fraction`` are settings as
    :mod:`charlstm.config` validated them.
    """
    path, out_dir = Path(data.path), Path(out_dir)
    if out_dir.exists() and not (out_dir.is_dir() and (is_prepared(out_dir) or _empty(out_dir))):
        raise CharLSTMError(
            f"{out_dir} exists and is not a prepared corpus; choose a new directory"
        )
    started = time.perf_counter()

    counter = _Pass1()
    encodings = stream_text(data, counter, chunk_bytes)
    if not counter.visible:
        raise CharLSTMError(f"corpus {path} is empty (or whitespace only)")
    present = np.flatnonzero(counter.counts)
    vocab = Vocab(chr(code) for code in present)
    counts = counter.counts[present]
    n = counter.length
    cut = split_point(n, val_fraction)
    dtype = _dtype_for(len(vocab))
    log(f"pass 1: {n:,} characters, {len(vocab):,} distinct, {time.perf_counter() - started:.1f} s")

    tmp = out_dir.parent / f".{out_dir.name}.preparing-{os.getpid()}"
    shown = out_dir  # the file being written, by its name once in place (for a failure)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        # unbuffered: the indices go out a chunk at a time, and a full disk fails a write
        # (in _Pass2, as WriteFailed), never a close
        with open(tmp / "train.bin", "wb", 0) as train, open(tmp / "val.bin", "wb", 0) as val:
            writer = _Pass2(vocab, dtype, cut, train, val, out_dir)
            stream_text(data, writer, chunk_bytes, encodings)
        if writer.position != n:
            raise CharLSTMError(f"{path} changed while it was being prepared; prepare it again")
        shown = out_dir / "vocab.json"
        (tmp / "vocab.json").write_text(
            json.dumps(vocab.to_list(), ensure_ascii=False) + "\n", encoding="utf-8"
        )
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "dtype": dtype.name,
            "num_chars": n,
            "train_chars": cut,
            "val_chars": n - cut,
            "vocab_size": len(vocab),
            "sha256": counter.sha.hexdigest(),
            "data": dataclasses.asdict(data),
            "val_fraction": val_fraction,
            "encodings": encodings,
            "counts": counts.tolist(),
            "train_counts": writer.train_counts.tolist(),
        }
        shown = out_dir / "meta.json"
        (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False) + "\n", "utf-8")
        shown = out_dir
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except OSError as err:  # a write: _sources makes a failed read a CharLSTMError
        raise write_failed(shown, err, THEN) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - started
    log(
        f"prepared {out_dir}: {cut:,} training and {n - cut:,} held-out characters, {seconds:.1f} s"
    )
    return PreparedCorpus.open(out_dir)


def with_vocab(
    prepared: PreparedCorpus, vocab: Vocab, out_dir: str | Path, chunk: int = CHUNK_BYTES
) -> PreparedCorpus:
    """``prepared`` with its indices in the order of ``vocab`` (a checkpoint's, which holds
    every character of the corpus and maybe more), written into ``out_dir`` (which may be
    ``prepared``'s own directory) chunk by chunk, and opened."""
    missing = [ch for ch in prepared.vocab.idx_to_char if ch not in vocab]
    if missing:
        raise CharLSTMError(f"characters not in the vocabulary: {show_chars(missing)}")
    dtype = _dtype_for(len(vocab))
    table = np.array([vocab.char_to_idx[ch] for ch in prepared.vocab.idx_to_char], dtype=dtype)
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.remapping-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name, indices in (("train.bin", prepared.train), ("val.bin", prepared.val)):
            with open(tmp / name, "wb") as out:
                for start in range(0, len(indices), chunk):
                    out.write(table[indices[start : start + chunk]].tobytes())
        (tmp / "vocab.json").write_text(
            json.dumps(vocab.to_list(), ensure_ascii=False) + "\n", encoding="utf-8"
        )
        meta = {**prepared.meta, "dtype": dtype.name, "vocab_size": len(vocab)}
        for key in ("counts", "train_counts"):
            counts = np.zeros(len(vocab), dtype=np.int64)
            counts[table] = prepared.meta[key]
            meta[key] = counts.tolist()
        (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False) + "\n", "utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PreparedCorpus.open(out_dir)


def prepared_in_run(path: str | Path) -> bool:
    """Whether ``charlstm train`` prepares the corpus file ``path`` inside the run directory:
    it is larger than :data:`PREPARE_ABOVE_BYTES` (or ``$CHARLSTM_PREPARE_ABOVE``)."""
    limit = os.environ.get(PREPARE_ABOVE_ENV, "")
    try:
        threshold = int(limit) if limit else PREPARE_ABOVE_BYTES
    except ValueError:
        raise CharLSTMError(
            f"the environment's {PREPARE_ABOVE_ENV}={limit!r} is not a number of bytes"
        ) from None
    path = Path(path)
    return path.is_file() and path.stat().st_size > threshold


def matching(path: str | Path, sha256: str) -> PreparedCorpus | None:
    """The prepared corpus at ``path`` if it is whole and its text has this SHA-256."""
    if not is_prepared(path):
        return None
    try:
        prepared = PreparedCorpus.open(path)
    except CharLSTMError:
        return None
    return prepared if prepared.sha256 == sha256 else None


def _empty(path: Path) -> bool:
    return not any(path.iterdir())


def is_prepared(path: str | Path) -> bool:
    """Whether ``path`` is a directory that ``prepare`` finished (it has ``meta.json``)."""
    path = Path(path)
    return path.is_dir() and (path / "meta.json").is_file()


# ---------------------------------------------------------------------- reading it back


def _memmap(path: Path, dtype: np.dtype, length: int) -> np.ndarray:
    if length == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(length,))


@dataclasses.dataclass
class PreparedCorpus:
    """A prepared directory opened: ``train`` and ``val`` are read-only ``np.memmap`` arrays."""

    path: Path
    vocab: Vocab
    train: np.ndarray  # (train_chars,) uint16 or uint32 memmap
    val: np.ndarray  # (val_chars,)
    meta: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> PreparedCorpus:
        """Open a directory ``prepare`` wrote; ``CharLSTMError`` for anything else."""
        path = Path(path)
        if not path.is_dir():
            raise CharLSTMError(f"not a prepared corpus directory: {path}")
        if not (path / "meta.json").is_file():
            raise CharLSTMError(
                f"{path} is not a prepared corpus (no meta.json: not prepared, or the "
                "prepare was interrupted); run charlstm prepare again"
            )
        try:
            meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
            chars = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CharLSTMError(f"cannot read prepared corpus {path}: {err}") from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise CharLSTMError(f"{path}/meta.json does not describe a prepared corpus")
        if meta.get("version") != FORMAT_VERSION:
            raise CharLSTMError(
                f"{path} is a prepared corpus of format version {meta.get('version')!r}, and "
                f"this charlstm reads version {FORMAT_VERSION}; prepare it again"
            )
        vocab = Vocab(chars)
        dtype = np.dtype(meta["dtype"])
        if len(vocab) != meta["vocab_size"]:
            raise CharLSTMError(f"{path}/vocab.json does not match meta.json; prepare it again")
        arrays = []
        for name, length in (("train.bin", meta["train_chars"]), ("val.bin", meta["val_chars"])):
            file = path / name
            size = file.stat().st_size if file.is_file() else None
            if size != length * dtype.itemsize:
                raise CharLSTMError(
                    f"{file} is missing or has the wrong size (a damaged prepared corpus); "
                    "prepare it again"
                )
            arrays.append(_memmap(file, dtype, length))
        return cls(path=path, vocab=vocab, train=arrays[0], val=arrays[1], meta=meta)

    @property
    def num_chars(self) -> int:
        return int(self.meta["num_chars"])

    @property
    def sha256(self) -> str:
        """The text's fingerprint, as :meth:`charlstm.data.corpus.Corpus.fingerprint` gives it."""
        return str(self.meta["sha256"])

    @property
    def counts(self) -> np.ndarray:
        """``(V,)`` int64: how often each character occurs in the whole text."""
        return np.asarray(self.meta["counts"], dtype=np.int64)

    @property
    def train_counts(self) -> np.ndarray:
        """``(V,)`` int64: how often each character occurs in the training part."""
        return np.asarray(self.meta["train_counts"], dtype=np.int64)

    @property
    def data(self) -> DataConfig:
        return DataConfig.from_dict(self.meta["data"])

    @property
    def val_fraction(self) -> float:
        return float(self.meta["val_fraction"])

    def __len__(self) -> int:
        return self.num_chars

    def decode(self, indices: np.ndarray) -> str:
        """Indices -> text, without a Python object per character."""
        table = getattr(self, "_code_table", None)
        if table is None:
            table = np.array([ord(ch) for ch in self.vocab.idx_to_char], dtype=np.uint32)
            self._code_table = table
        return table[np.asarray(indices)].tobytes().decode("utf-32-le", "surrogatepass")

    def text(self, start: int = 0, stop: int | None = None) -> str:
        """The text of positions ``start .. stop - 1`` of the whole corpus (train then val)."""
        n, cut = self.num_chars, len(self.train)
        start, stop, _ = slice(start, stop).indices(n)
        if stop <= start:
            return ""
        parts = []
        if start < cut:
            parts.append(self.train[start : min(stop, cut)])
        if stop > cut:
            parts.append(self.val[max(start, cut) - cut : stop - cut])
        return "".join(self.decode(part) for part in parts)

    def train_text(self, limit: int | None = None) -> str:
        """The training text, or its first ``limit`` characters."""
        stop = len(self.train) if limit is None else min(limit, len(self.train))
        return self.text(0, stop)

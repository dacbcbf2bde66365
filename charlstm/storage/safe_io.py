"""Writes that fail cleanly: a whole new file or the old one, a whole line or none.

Every file charlstm writes goes through here or through :func:`charlstm.storage.checkpoint.save`:

- :func:`write_atomic` (config.json, vocab.json, plots, ``generate --out``, rewritten logs):
  a temporary file in the same directory, fsync'ed, renamed over the target. A crash
  leaves the old file or the new one; a failure removes the temporary file.
- :func:`append_lines` (metrics.jsonl, steps.jsonl): one ``write`` call per batch of whole
  lines on an ``O_APPEND`` descriptor. A short or failed write is cut back to the last
  whole line, so a reader or a later ``--resume`` never meets half a line.

A failure (disk full, file too large, read-only or failing disk) becomes
:class:`~charlstm.errors.WriteFailed`: one line naming the file, the cause and what to do
(:func:`~charlstm.errors.write_failed`, in the core so that :mod:`charlstm.data` words its
failures alike).
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from charlstm.errors import write_failed

#: Temporary files (``.NAME.*.tmp``) of :func:`write_atomic` and
#: :func:`charlstm.storage.checkpoint.save`.
TMP_SUFFIX = ".tmp"


def _tmp_for(path: Path) -> tuple[int, str]:
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)


def _mode(path: Path) -> int:
    """The permissions of the file being replaced, or those of a new file (``umask``)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def write_atomic(
    path: str | Path,
    data: bytes | str | Callable[[IO[bytes]], None],
    then: str = "run the command again",
    make_parents: bool = False,
) -> Path:
    """Replace ``path`` with ``data`` (bytes, text as UTF-8, or a function writing to a
    binary handle) atomically; on failure raise :class:`WriteFailed` and keep the old file.

    A missing directory is created with ``make_parents``, else an error (exit code 2).
    """
    path = Path(path)
    tmp_name: str | None = None
    try:
        if make_parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = _tmp_for(path)
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(fd, _mode(path))  # mkstemp makes it private; keep a plain file's mode
            if callable(data):
                data(handle)
            else:
                handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists() and not path.is_file():
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as err:
        note = f"the previous {path.name} is kept" if path.is_file() else ""
        raise write_failed(path, err, then, note) from err
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def append_lines(path: str | Path, lines: Iterable[str], then: str) -> None:
    """Append whole ``lines`` (each ending in a newline) to ``path`` with one write call.

    A short or failed write is truncated back, so the file ends with the last whole line
    it held before, and :class:`WriteFailed` is raised.
    """
    path = Path(path)
    data = "".join(lines).encode("utf-8")
    if not data:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as err:
        raise write_failed(path, err, then) from err
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:  # a short write (disk full mid-way) is followed by one that raises
                written = os.write(fd, view)
                if written == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
                view = view[written:]
        except OSError as err:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            raise write_failed(path, err, then) from err
    finally:
        os.close(fd)


def repair_tail(path: str | Path) -> bool:
    """Cut a torn last line (one without its newline) off ``path``; True if one was cut."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        return False
    if size == 0:
        return False
    with open(path, "rb+") as handle:
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return False
        keep = 0
        block = 1 << 16
        position = size
        while position > 0:
            start = max(0, position - block)
            handle.seek(start)
            chunk = handle.read(position - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            position = start
        handle.truncate(keep)
    return True


def read_lines(path: str | Path) -> list[str]:
    """The whole lines of ``path`` decoded as UTF-8; a torn last line and undecodable lines
    are left out (a reader may meet a file while it is being appended to)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    lines.pop()  # after the last newline: empty, or a line still being written
    out = []
    for raw in lines:
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            continue
    return out


def remove_temporary(directory: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete ``.NAME.*.tmp`` files a crash left behind for each of ``names``; return them."""
    stray: list[Path] = []
    for name in names:
        stray += Path(directory).glob(f".{name}.*{TMP_SUFFIX}")
    for tmp in stray:
        tmp.unlink(missing_ok=True)
    return sorted(stray)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: not every system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

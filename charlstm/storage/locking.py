"""One writer per directory: an exclusive ``flock`` on ``DIR/.lock`` holding the writer's pid.

``charlstm train`` holds its run directory's lock for its whole life; a second writer is
refused at once with one line naming the first one's pid. The operating system drops the
lock when the holder exits, however it ends (``kill -9`` included), so a stale lock file
never blocks anyone. Readers (generate, eval, info, plot) never take it: every file they
read is replaced atomically or appended a whole line at a time.

Use it as a context manager around anything that writes a directory::

    with locking.exclusive(out_dir, what="prepared corpus"):
        ...  # write the files

or, when the writer is not one block of code, :func:`hold` it until :func:`release` (or
the end of the process). Within one process the lock is re-entrant: taking a lock this
process already holds succeeds, so a library user may train the same run twice in a row.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from charlstm.errors import Locked

LOCK_FILE = ".lock"

#: Directories this process holds: resolved path -> (open lock file descriptor, holders).
_held: dict[Path, list[int]] = {}


def _key(directory: str | Path) -> Path:
    return Path(directory).resolve()


def _owner(fd: int) -> str:
    """The pid written in the lock file by its holder ('unknown' while it is being written)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "pid unknown"
    return f"pid {text}" if text.isdigit() else "pid unknown"


def _refusal(directory: Path, what: str, owner: str) -> Locked:
    return Locked(
        f"{what} {directory} is in use by another charlstm process ({owner}); two writers "
        "would overwrite each other's files: wait for it to finish or stop it, then try again"
    )


def hold(directory: str | Path, what: str = "directory") -> None:
    """Take the lock on ``directory`` (which must exist) until :func:`release`.

    Raises :class:`~charlstm.errors.Locked` at once, naming the holder's pid, when another
    process holds it.
    """
    key = _key(directory)
    if key in _held:
        _held[key][1] += 1
        return
    try:
        fd = os.open(key / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        from charlstm.storage.safe_io import write_failed

        raise write_failed(key / LOCK_FILE, err, "run the command again") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _owner(fd)
        os.close(fd)
        raise _refusal(Path(directory), what, owner) from None
    except OSError:  # a file system without flock (some network mounts): go on unlocked
        pass
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError:
        pass  # a full disk: the lock holds all the same, only the pid is not recorded
    _held[key] = [fd, 1]


def release(directory: str | Path) -> None:
    """Give up one :func:`hold` of ``directory``; the last one unlocks it."""
    key = _key(directory)
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        del _held[key]
        os.close(entry[0])  # closing the descriptor drops the flock


def is_held_elsewhere(directory: str | Path) -> str | None:
    """The holder (``'pid N'``) when another process holds ``directory``'s lock, else None.

    Takes and drops a shared lock at once (two probes never refuse each other); writes
    nothing (no lock file is created).
    """
    key = _key(directory)
    if key in _held:
        return None
    try:
        fd = os.open(key / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None  # no lock file: nobody ever locked it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _owner(fd)
    except OSError:
        return None
    finally:
        os.close(fd)  # also drops the lock just taken
    return None


def check_free(directory: str | Path, what: str = "directory") -> None:
    """Raise :class:`~charlstm.errors.Locked` if another process holds ``directory``."""
    owner = is_held_elsewhere(directory)
    if owner is not None:
        raise _refusal(Path(directory), what, owner)


@contextmanager
def exclusive(directory: str | Path, what: str = "directory") -> Iterator[Path]:
    """Hold ``directory``'s lock (creating the directory) for the ``with`` block."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    hold(path, what)
    try:
        yield path
    finally:
        release(path)

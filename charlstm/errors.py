"""The one exception type users see: the CLI turns it into a one-line message and an exit code."""

from __future__ import annotations

import errno
from pathlib import Path


class CharLSTMError(Exception):
    """A problem with the user's input, files or settings (never a bug in charlstm).

    The CLI prints ``str(error)`` on one line and exits with ``exit_code``.
    """

    exit_code: int = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(" ".join(message.split()) if "\n" in message else message)
        if exit_code is not None:
            self.exit_code = exit_code


class WriteFailed(CharLSTMError):
    """A file could not be written: the disk is full, the file too large, the disk read-only
    or failing. The message names the file and what to do; nothing half-written is left."""

    exit_code = 1


class Locked(CharLSTMError):
    """Another charlstm process is writing the directory (see :mod:`charlstm.storage.locking`)."""

    exit_code = 1


class NothingToDo(CharLSTMError):
    """The request is already fulfilled (a finished run resumed to the target it reached):
    success. The CLI prints the message as an ordinary line, not an error, and exits 0,
    so that a retry loop ("resume until it exits 0") ends."""

    exit_code = 0


#: Errors in the path the user gave rather than in the disk: bad input (exit code 2).
PATH_ERRORS = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG)


def write_failed(
    path: str | Path, err: OSError | None, then: str, note: str = "", what: str = ""
) -> WriteFailed:
    """The one-line error for a failed write of ``path`` (``what``: "checkpoint", say).

    ``then`` is what to do once the cause is fixed ("resume with: charlstm train --resume
    RUN"); ``note`` is said after the cause ("the previous last.pt is kept").
    """
    path = Path(path)
    name = f"{what} {path}" if what else str(path)
    where = path.parent if str(path.parent) else Path(".")
    code = None if err is None else err.errno
    cause = (err.strerror or str(err)) if err is not None else "the write stopped part-way"
    if code in PATH_ERRORS:
        return WriteFailed(f"cannot write {name}: {cause}", exit_code=2)
    if code in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free space on the disk holding {where}"
    elif code == errno.EFBIG:
        fix = f"free space on the disk holding {where} (or raise the file-size limit, ulimit -f)"
    elif code == errno.EROFS:
        fix = f"make the disk holding {where} writable (it is mounted read-only)"
    elif code == errno.EIO:
        fix = f"check the disk holding {where} (it reported an I/O error)"
    elif code in (errno.EACCES, errno.EPERM):
        fix = f"make {where} writable for this user"
    else:
        fix = f"check the disk holding {where} (disk full or file too large?)"
    note = f" ({note})" if note else ""
    return WriteFailed(f"cannot write {name}: {cause}{note}; {fix} and {then}")

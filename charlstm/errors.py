"""The one exception type users see: the CLI turns it into a one-line message and an exit code."""

from __future__ import annotations


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

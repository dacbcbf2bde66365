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

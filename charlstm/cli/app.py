"""The ``charlstm`` command line: parse, build configs, call the library, report.

Commands only; the work happens in the library. Every command registers with the one
:data:`~charlstm.cli.common.app`, in the module of its group (imported below); a new command
is a function in such a module and, for a new module, one import line here. A
:class:`~charlstm.errors.CharLSTMError` becomes one line on stderr and a non-zero exit code,
never a traceback. Nothing here imports torch before a command runs: ``--help`` is instant.
"""

from __future__ import annotations

import sys

import typer

from charlstm.cli import (  # noqa: F401 - each registers its commands
    checkpoints,
    generate,
    serve,
    train,
    verse,
)
from charlstm.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point.

    Runs the app outside click's standalone mode so that a malformed command line (an
    unknown option, ``--batch-size abc``) is one ``error:`` line, like every other mistake,
    instead of a usage block. Typer raises click's exception types (vendored in recent
    versions), recognised here by their interface: ``format_message()`` and ``exit_code``.
    """
    try:
        code = app(standalone_mode=False)
    except (KeyboardInterrupt, typer.Abort):  # Ctrl-C outside a command
        code = 130
    except Exception as err:
        if not (hasattr(err, "format_message") and hasattr(err, "exit_code")):
            raise
        if type(err).__name__ == "NoArgsIsHelpError":  # bare `charlstm`: show the help
            err.show()
        else:
            ctx = getattr(err, "ctx", None)
            hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
            typer.echo(f"error: {err.format_message()}{hint}", err=True)
        code = err.exit_code
    sys.exit(code if isinstance(code, int) else 0)

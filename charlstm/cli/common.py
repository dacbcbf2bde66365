"""The one ``app`` every command registers with, and what every command shares: errors
turned into one line and an exit code, and the options several commands take."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from charlstm.errors import CharLSTMError, NothingToDo
from charlstm.fields import SettingError, render_names
from charlstm.fields import option_name as option

app = typer.Typer(
    name="charlstm",
    help="Character-level LSTM lyrics generator: train, resume, evaluate, generate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts show "[default: ...]" literally
)

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=code)


#: What to make smaller when a command runs out of memory (settings named as in
#: :class:`~charlstm.fields.SettingError`, shown as options).
OUT_OF_MEMORY_HINTS = {  # by the command's function name
    "train": "a smaller {batch_size} or {hidden_size}",
    "generate": "a smaller {length}, {num_samples} or {cache.window}",
    "evaluate": "a shorter text or a smaller {cache.window}",
}


def handle_errors(command: F) -> F:
    """Turn ``CharLSTMError`` (and a stray Ctrl-C) into one line and an exit code.

    A file-system failure nobody anticipated (a full disk while writing a log, say) is
    the environment's, not a bug: it too is one line, naming the file.
    """

    smaller = OUT_OF_MEMORY_HINTS.get(command.__name__, "smaller settings")
    out_of_memory = f"out of memory; try {smaller}"  # rendered when the settings are known

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except SettingError as err:  # the library names fields; a user typed options
            raise fail(err.render(option), err.exit_code) from None
        except NothingToDo as err:  # success: one ordinary line (it names fields too)
            typer.echo(render_names(str(err), option))
            raise typer.Exit(code=0) from None
        except CharLSTMError as err:
            raise fail(str(err), err.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except MemoryError:
            raise fail(render_names(out_of_memory, option), 1) from None
        except RuntimeError as err:  # torch reports a failed allocation as a RuntimeError
            text = str(err).lower()
            if "out of memory" not in text and "can't allocate memory" not in text:
                raise
            raise fail(render_names(out_of_memory, option), 1) from None
        except OSError as err:
            where = f": {err.filename}" if err.filename else ""
            raise fail(f"{err.strerror or err}{where}", 1) from None

    return wrapper  # type: ignore[return-value]


RunsRoot = Annotated[
    Path, typer.Option("--runs-root", help="Where run directories are created and looked up.")
]


AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]

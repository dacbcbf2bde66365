"""Command-line options generated from the config fields (:func:`charlstm.config.setting`).

A command declares which config classes it takes settings of::

    @app.command()
    @settings_options(DataConfig, ModelConfig, TrainConfig)
    def train(corpus: ..., given: Given) -> None: ...

and receives ``given``: the settings the user typed, by field name (an option left out is
absent, so that a preset or a checkpoint can supply it). Typer sees one option per field,
with the field's help, panel, option name and default; nothing about an option is written
twice.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any, Literal, TypeVar

import typer

from charlstm.config import Setting, option_name, settings_of

F = TypeVar("F", bound=Callable[..., Any])
Given = dict[str, Any]


def _base_type(hint: Any) -> Any:
    """The option's type: ``X | None`` -> X; a ``Literal`` of strings -> str."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is Literal:
        return str
    return hint


def _default_text(value: Any, meta: Setting) -> str:
    if meta.default_text is not None:
        return meta.default_text
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _parameter(field: dataclasses.Field[Any], meta: Setting, hint: Any) -> inspect.Parameter:
    option = option_name(field.name)
    kind = str if meta.parse is not None else _base_type(hint)
    default = field.default_factory() if callable(field.default_factory) else field.default
    decls = [f"{option}/--no-{option[2:]}"] if meta.flag else [option]
    info = typer.Option(
        *decls,
        help=f"{meta.help} [default: {_default_text(default, meta)}]",
        rich_help_panel=meta.panel,
        show_default=False,
    )
    annotation = Annotated[kind | None, info]  # type: ignore[valid-type]
    return inspect.Parameter(
        field.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
    )


def settings_options(*classes: type, exclude: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Give the command one option per setting of ``classes`` (see the module docstring)."""
    generated: list[inspect.Parameter] = []
    parsers: dict[str, Callable[[str], Any]] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for field, meta in settings_of(cls):
            if meta.cli and field.name not in exclude:
                generated.append(_parameter(field, meta, hints[field.name]))
                if meta.parse is not None:
                    parsers[field.name] = meta.parse
    names = {p.name for p in generated}

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)

        @wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            given = {}
            for name in names:
                value = kwargs.pop(name, None)
                if value is None or value == []:  # not typed (a repeatable option: no values)
                    continue
                given[name] = parsers[name](value) if name in parsers else value
            return command(**kwargs, given=given)

        own = [p for p in signature.parameters.values() if p.name != "given"]
        wrapper.__signature__ = signature.replace(parameters=own + generated)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate

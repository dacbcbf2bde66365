"""Command-line options generated from the config fields (:func:`charlstm.config.setting`).

A command declares which config classes it takes settings of::

    @app.command()
    @settings_options(DataConfig, ModelConfig, TrainConfig)
    def train(corpus: ..., given: Given) -> None: ...

and receives ``given``: the settings the user typed, by key (a field name, or ``cache.mix``
for a class with a ``SETTING_PREFIX``; an option left out is absent, so that a preset or a
checkpoint can supply it). Typer sees one option per field, with the field's help, panel,
option name and default; nothing about an option is written twice. ``(cls, ("a", "b"))``
takes only some settings of ``cls``; ``shown`` changes the default a help text names, for a
command whose default is not the field's (``charlstm generate``'s lighter cache).
"""

from __future__ import annotations

import dataclasses
import inspect
import shlex
import types
import typing
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer

from charlstm.fields import Setting, keyed_settings, option_name, render_names

F = TypeVar("F", bound=Callable[..., Any])
Given = dict[str, Any]
Source = type | tuple[type, tuple[str, ...]]


def _base_type(hint: Any) -> Any:
    """The option's type: ``X | None`` -> X; a ``Literal`` of strings -> str."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is Literal:
        return str
    return hint


def _default_text(value: Any, meta: Setting) -> str | None:
    """What the help names as the default; ``None``: nothing (no value, or a plain switch)."""
    if meta.default_text is not None:  # may name settings: {hidden_size} -> --hidden
        return render_names(meta.default_text, option_name)
    if value is None or value == [] or (isinstance(value, bool) and not meta.flag):
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _parameter(
    key: str, field: dataclasses.Field[Any], meta: Setting, hint: Any, shown: dict[str, Any]
) -> inspect.Parameter:
    option = option_name(key)
    kind = str if meta.parse is not None else _base_type(hint)
    default = field.default_factory() if callable(field.default_factory) else field.default
    text = _default_text(shown.get(key, default), meta)
    decls = [f"{option}/--no-{option[2:]}"] if meta.flag else [option]
    info = typer.Option(
        *decls,
        help=meta.help if text is None else f"{meta.help} [default: {text}]",
        rich_help_panel=meta.panel or None,
        show_default=False,
        metavar=meta.metavar,
    )
    annotation = Annotated[kind | None, info]  # type: ignore[valid-type]
    return inspect.Parameter(
        key.replace(".", "_"), inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
    )


def settings_options(
    *sources: Source, exclude: tuple[str, ...] = (), shown: dict[str, Any] | None = None
) -> Callable[[F], F]:
    """Give the command one option per setting of ``sources`` (see the module docstring)."""
    generated: list[inspect.Parameter] = []
    keys: dict[str, str] = {}  # parameter name -> setting key
    parsers: dict[str, Callable[[str], Any]] = {}
    switches: set[str] = set()  # plain switches (--cache): off is "not typed"
    for source in sources:
        cls, only = source if isinstance(source, tuple) else (source, None)
        hints = typing.get_type_hints(cls)
        for key, field, meta in keyed_settings(cls):
            if meta.cli and key not in exclude and (only is None or field.name in only):
                parameter = _parameter(key, field, meta, hints[field.name], shown or {})
                generated.append(parameter)
                keys[parameter.name] = key
                if meta.parse is not None:
                    parsers[key] = meta.parse
                if isinstance(field.default, bool) and not meta.flag:
                    switches.add(key)

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)

        @wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            given = {}
            for name, key in keys.items():
                value = kwargs.pop(name, None)
                if value is None or value == [] or (value is False and key in switches):
                    continue  # not typed (a repeatable option: no values)
                given[key] = parsers[key](value) if key in parsers else value
            return command(**kwargs, given=given)

        own = [p for p in signature.parameters.values() if p.name != "given"]
        wrapper.__signature__ = signature.replace(parameters=own + generated)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def training_command(checkpoint: Any) -> str:
    """The ``charlstm train`` command line that sets up ``checkpoint``'s run: the corpus by
    its file name, then every setting of its data, model and training configs that differs
    from its default, by option (a preset shows as the settings it chose). For the model
    card of ``charlstm export``."""
    configs = (checkpoint.data_config, checkpoint.model_config, checkpoint.train_config)
    words = ["charlstm", "train", Path(checkpoint.data_config.path).name]
    for config in configs:
        for key, field, meta in keyed_settings(type(config)):
            value = getattr(config, field.name)
            default = field.default_factory() if callable(field.default_factory) else field.default
            if not meta.cli or key == "path" or value == default:
                continue
            option = option_name(key)
            if isinstance(value, bool):
                words.append(option if value else f"--no-{option[2:]}")
            elif isinstance(value, list) and meta.repeat:
                for item in value:
                    words += [option, str(item)]
            elif isinstance(value, list):
                words += [option, ",".join(map(str, value))]
            else:
                words += [option, f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(words)

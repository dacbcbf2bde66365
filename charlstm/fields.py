"""Settings as dataclass fields: how one setting is declared, named, checked and built.

Every setting is defined once, as a dataclass field made by :func:`setting`: its default,
its help text, its command-line panel and option name, whether ``--resume`` may change it,
and the check its value must pass. The CLI's options, the help's defaults, the resume rules
and the option names in error messages are all generated from these fields
(:func:`settings_of`, :func:`option_name`). A class whose settings the CLI offers is passed
to :func:`register`.

A check is a function from a value to what is wrong with it (``None``: nothing), written
without the setting's name (``"must be positive, not 0"``); :func:`check_fields` and
:func:`check_value` put the name in front. Library errors name the field
(``hidden_size must be positive, not 0``); the CLI shows the same :class:`SettingError` with
option names (``--hidden must be positive, not 0``). This module imports nothing but
:mod:`charlstm.errors`, so that the CLI can build its options without importing torch.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from charlstm.errors import CharLSTMError

C = TypeVar("C")


def from_dict_of(cls: type[C], data: dict[str, Any]) -> C:
    """Build dataclass ``cls`` from ``data``, ignoring unknown keys (newer files)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


#: Counts and sizes beyond this cannot fit in memory; larger values are typing errors.
MAX_INT = 2**31 - 1
#: Seeds are 64-bit (torch's generators); negative ones are not accepted.
MAX_SEED = 2**63 - 1


class SettingError(CharLSTMError):
    """A bad setting. ``template`` names settings as ``{field}``; :meth:`render` fills them
    with field names (the library's message) or, at the command line, option names.

    ``arguments`` are further names the template may hold: a command's options that are no
    setting of a config class (``{out}`` of ``charlstm convert``), named the same way.
    """

    def __init__(
        self, template: str, exit_code: int | None = None, *, arguments: tuple[str, ...] = ()
    ) -> None:
        self.template = template
        self.arguments = arguments
        super().__init__(self.render(lambda name: name), exit_code)

    def render(self, name: Callable[[str], str]) -> str:
        return render_names(self.template, name, self.arguments)


def render_names(template: str, name: Callable[[str], str], arguments: tuple[str, ...] = ()) -> str:
    """``template`` with each ``{key}`` of a known setting (or of ``arguments``) replaced by
    ``name(key)``; other braces are left as they are."""
    return re.sub(
        r"\{([a-z_.]+)\}",
        lambda m: (
            name(m.group(1)) if m.group(1) in _FIELDS or m.group(1) in arguments else m.group(0)
        ),
        template,
    )


# -- checks: each returns what is wrong with a value (None: nothing) -------------------------

Check = Callable[[Any], "str | None"]


def finite_number(value: Any) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, not {value}"
    if isinstance(value, int) and value > MAX_INT:
        return f"must be at most {MAX_INT:,}, not {value}"
    return None


def is_positive(value: Any) -> str | None:
    return finite_number(value) or (f"must be positive, not {value}" if value <= 0 else None)


def at_least_zero(note: str = "") -> Check:
    def check(value: Any) -> str | None:
        return finite_number(value) or (f"must be >= 0{note}, not {value}" if value < 0 else None)

    return check


def in_range(low: float, high: float, closed: str = "[)", note: str = "") -> Check:
    """``closed``: which ends belong to the interval, as ``"[)"``, ``"(]"``, ``"()"``."""

    def check(value: Any) -> str | None:
        above = value >= low if closed[0] == "[" else value > low
        below = value <= high if closed[1] == "]" else value < high
        if finite_number(value) or not (above and below):
            return f"must be in {closed[0]}{low:g}, {high:g}{closed[1]}{note}, not {value}"
        return None

    return check


def one_of(*allowed: str) -> Check:
    def check(value: Any) -> str | None:
        return (
            None
            if value in allowed
            else f"unknown {{}} {value!r}; choose one of: " + ", ".join(allowed)
        )

    return check


def seed_range(value: int) -> str | None:
    return None if 0 <= value <= MAX_SEED else f"must be in [0, 2**63 - 1], not {value}"


def optional(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


@dataclass(frozen=True)
class Setting:
    """What the CLI and the resume rules need to know of one config field."""

    help: str
    panel: str
    option: str | None = None  # None: "--" + the field name with dashes
    resume: bool = False  # --resume may change it
    check: Check | None = None
    default_text: str | None = None  # the help's "[default: ...]" where the value misleads
    cli: bool = True  # False: set by the program, not an option
    flag: bool = False  # a bool shown as --x/--no-x
    parse: Callable[[str], Any] | None = (
        None  # the option takes text that this turns into the value
    )
    repeat: bool = False  # a list given by repeating the option
    metavar: str | None = None  # the help's name for the value (default: its type)
    fine_tune: bool = False  # --init-from may change it (regularisation, not architecture)


def setting(
    default: Any = dataclasses.MISSING, help: str = "", panel: str = "", **meta: Any
) -> Any:
    """A dataclass field carrying its :class:`Setting` (a list or dict default is copied per
    instance)."""
    info = {"setting": Setting(help=help, panel=panel, **meta)}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=info)
    return field(default=default, metadata=info)


def settings_of(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Setting]]:
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("setting")
        if meta is not None:
            yield f, meta


def setting_key(cls: type, name: str) -> str:
    """How the settings of ``cls`` are named outside it: the field name, or with the class's
    ``SETTING_PREFIX`` (``cache.window``: ``CacheConfig.window``, option ``--cache-window``)."""
    prefix = getattr(cls, "SETTING_PREFIX", "")
    return f"{prefix}.{name}" if prefix else name


def keyed_settings(cls: type) -> Iterator[tuple[str, dataclasses.Field[Any], Setting]]:
    for f, meta in settings_of(cls):
        yield setting_key(cls, f.name), f, meta


def _option(key: str, meta: Setting | None) -> str:
    return (meta.option if meta and meta.option else None) or "--" + re.sub(r"[._]", "-", key)


def option_name(name: str) -> str:
    """The command-line option of setting ``name`` (a field name, or a key like ``cache.mix``)."""
    return _option(name, _FIELDS.get(name))


#: Every setting by key (see :func:`register`).
_FIELDS: dict[str, Setting] = {}


def register(cls: type[C]) -> type[C]:
    """Make the settings of ``cls`` known by key, for :func:`option_name` and the names in
    :class:`SettingError`. A key two classes share (``seed``) must be one option."""
    for key, _, meta in keyed_settings(cls):
        known = _FIELDS.setdefault(key, meta)
        if _option(key, known) != _option(key, meta):
            raise TypeError(
                f"setting {key} is two options: {_option(key, known)}, {_option(key, meta)}"
            )
    return cls


def _problem(key: str, meta: Setting, value: Any) -> SettingError | None:
    problem = meta.check(value) if meta.check is not None else None
    if not problem:
        return None
    name = "{" + key + "}"  # "{}" marks where the setting's name goes; else it leads
    return SettingError(problem.replace("{}", name) if "{}" in problem else f"{name} {problem}")


def check_fields(config: Any) -> None:
    for key, f, meta in keyed_settings(type(config)):
        error = _problem(key, meta, getattr(config, f.name))
        if error is not None:
            raise error


def check_value(cls: type, name: str, value: Any) -> None:
    """Run the check of field ``name`` of ``cls`` on ``value`` (a value given on its own)."""
    meta = next(meta for f, meta in settings_of(cls) if f.name == name)
    error = _problem(setting_key(cls, name), meta, value)
    if error is not None:
        raise error


def check_argument(name: str, value: Any, check: Check) -> None:
    """Run ``check`` on ``value``, an argument of a library function that is no setting
    (its error names the argument, never an option)."""
    problem = check(value)
    if problem:
        raise CharLSTMError(problem.replace("{}", name) if "{}" in problem else f"{name} {problem}")


def setting_values(config: Any) -> dict[str, Any]:
    """The settings of ``config`` by key."""
    return {key: getattr(config, f.name) for key, f, _ in keyed_settings(type(config))}


def build(cls: type[C], given: dict[str, Any], **fixed: Any) -> C:
    """``cls`` from its defaults, the settings of it in ``given`` (by key) and ``fixed``;
    checked when it is made (its ``__post_init__``)."""
    values = {f.name: given[key] for key, f, _ in keyed_settings(cls) if key in given}
    return cls(**{**values, **fixed})

"""Typed configuration: what to read, what to build, how to train.

Every setting is defined once, as a dataclass field made by :func:`setting`: its default,
its help text, its command-line panel and option name, whether ``--resume`` may change it,
and the check its value must pass. The CLI's options, the help's defaults, the resume rules
and the option names in error messages are all generated from these fields
(:func:`settings_of`, :func:`option_name`); adding a training option is one field here.
The other commands' settings are fields made the same way beside the code that uses them
(``charlstm generate``: :class:`~charlstm.generation.sample.GenerateRequest` and
:class:`~charlstm.generation.decoding.SamplingConfig`; both it and ``eval``:
:class:`~charlstm.generation.adaptation.CacheConfig`,
:class:`~charlstm.generation.adaptation.DynamicConfig`,
:class:`~charlstm.api.ModelChoice`), each class passed to :func:`register`.

Library errors name the field (``hidden_size must be positive, not 0``); the CLI shows the
same :class:`SettingError` with option names (``--hidden must be positive, not 0``).

Each config round-trips through plain dicts (``asdict`` / ``from_dict``) so that it can be
stored in ``config.json`` and in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from charlstm.errors import CharLSTMError

Backend = Literal["scratch", "torch"]
ScratchImpl = Literal["fused", "autograd"]
Sampling = Literal["consecutive", "random"]
Optimizer = Literal["sgd", "adam", "adamw"]
Schedule = Literal["none", "cosine", "plateau"]
Softmax = Literal["full", "adaptive", "auto"]

#: The n-gram teacher's counts grow with the order; beyond this it cannot help and
#: exhausts memory.
MAX_NGRAM_ORDER = 16

BACKENDS: tuple[str, ...] = ("scratch", "torch")
SCRATCH_IMPLS: tuple[str, ...] = ("fused", "autograd")
SAMPLINGS: tuple[str, ...] = ("consecutive", "random")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw")
SCHEDULES: tuple[str, ...] = ("none", "cosine", "plateau")
SOFTMAXES: tuple[str, ...] = ("full", "adaptive", "auto")
#: ``--softmax auto`` is the adaptive softmax above this many distinct characters, the
#: full one up to it (Tiny Shakespeare's 65, a lyrics corpus's 2,583: full; tang_poems'
#: 9,700: adaptive, 2.3x the characters per second on 2 CPU cores, docs/benchmarks.md).
AUTO_ADAPTIVE_VOCAB = 4_000

C = TypeVar("C")


def _from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Build dataclass ``cls`` from ``data``, ignoring unknown keys (newer files)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


#: Counts and sizes beyond this cannot fit in memory; larger values are typing errors.
MAX_INT = 2**31 - 1
#: Seeds are 64-bit (torch's generators); negative ones are not accepted.
MAX_SEED = 2**63 - 1


def finite(name: str, value: float) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise CharLSTMError(f"{name} must be a finite number, not {value}")
    if isinstance(value, int) and value > MAX_INT:
        raise CharLSTMError(f"{name} must be at most {MAX_INT:,}, not {value}")


def positive(name: str, value: float) -> None:
    finite(name, value)
    if value <= 0:
        raise CharLSTMError(f"{name} must be positive, not {value}")


class SettingError(CharLSTMError):
    """A bad setting. ``template`` names settings as ``{field}``; :meth:`render` fills them
    with field names (the library's message) or, at the command line, option names."""

    def __init__(self, template: str, exit_code: int | None = None) -> None:
        self.template = template
        super().__init__(self.render(lambda name: name), exit_code)

    def render(self, name: Callable[[str], str]) -> str:
        return re.sub(
            r"\{([a-z_.]+)\}",
            lambda m: name(m.group(1)) if m.group(1) in _FIELDS else m.group(0),
            self.template,
        )


# -- checks: each returns what is wrong with a value (None: nothing) -------------------------

Check = Callable[[Any], "str | None"]


def _number(value: Any) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, not {value}"
    if isinstance(value, int) and value > MAX_INT:
        return f"must be at most {MAX_INT:,}, not {value}"
    return None


def is_positive(value: Any) -> str | None:
    return _number(value) or (f"must be positive, not {value}" if value <= 0 else None)


def at_least_zero(note: str = "") -> Check:
    def check(value: Any) -> str | None:
        return _number(value) or (f"must be >= 0{note}, not {value}" if value < 0 else None)

    return check


def in_range(low: float, high: float, closed: str = "[)", note: str = "") -> Check:
    """``closed``: which ends belong to the interval, as ``"[)"``, ``"(]"``, ``"()"``."""

    def check(value: Any) -> str | None:
        above = value >= low if closed[0] == "[" else value > low
        below = value <= high if closed[1] == "]" else value < high
        if _number(value) or not (above and below):
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


def ngram_order(value: int) -> str | None:
    if value == 0 or 2 <= value <= MAX_NGRAM_ORDER:
        return None
    return f"must be an n-gram order from 2 to {MAX_NGRAM_ORDER} (0: off), not {value}"


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
    """A dataclass field carrying its :class:`Setting` (a list default is copied per instance)."""
    info = {"setting": Setting(help=help, panel=panel, **meta)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=info)
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


def setting_values(config: Any) -> dict[str, Any]:
    """The settings of ``config`` by key."""
    return {key: getattr(config, f.name) for key, f, _ in keyed_settings(type(config))}


def build(cls: type[C], given: dict[str, Any], **fixed: Any) -> C:
    """``cls`` from its defaults, the settings of it in ``given`` (by key) and ``fixed``;
    validated."""
    values = {f.name: given[key] for key, f, _ in keyed_settings(cls) if key in given}
    return cls(**{**values, **fixed}).validate()  # type: ignore[attr-defined]


def parse_cutoffs(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise SettingError(
            f"{{cutoffs}} takes increasing sizes separated by commas, e.g. 2000,6000; not {text!r}"
        ) from None


@dataclass
class DataConfig:
    """Where the text comes from and how it is normalised (see :mod:`charlstm.data.corpus`)."""

    path: str = setting(cli=False)
    member: str | None = setting(
        None,
        "Zip member to read.",
        "Corpus",
        default_text="every text member, in name order",
    )
    encoding: str | None = setting(
        None, "Text encoding.", "Corpus", default_text="UTF-8, else GB18030"
    )
    newlines: Literal["keep", "space"] = setting(
        "keep", "keep, or space (d2l's behaviour).", "Corpus", check=one_of("keep", "space")
    )
    max_chars: int | None = setting(
        None,
        "Use only the first N characters (d2l: 10000).",
        "Corpus",
        check=optional(is_positive),
        default_text="all",
    )

    def validate(self) -> DataConfig:
        check_fields(self)
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        return _from_dict(cls, data)


@dataclass
class ModelConfig:
    """The network: embedding -> LSTM layers -> output layer over the vocabulary."""

    vocab_size: int = setting(cli=False, check=is_positive)
    backend: Backend = setting(
        "scratch",
        "scratch (LSTM written out gate by gate) or torch (nn.LSTM).",
        "Model",
        check=one_of(*BACKENDS),
    )
    hidden_size: int = setting(
        256, "Hidden units per layer.", "Model", option="--hidden", check=is_positive
    )
    num_layers: int = setting(1, "LSTM layers.", "Model", option="--layers", check=is_positive)
    embedding_size: int | None = setting(
        None,
        "Embedding size; 0: d2l's one-hot inputs (scratch: the input weights are a "
        "vocabulary x 4H table whose rows are looked up, no embedding, no matrix product).",
        "Model",
        check=optional(at_least_zero(" (0: one-hot inputs)")),
        default_text="--hidden",
    )
    dropout: float = setting(
        0.3,
        "Dropout between layers and on the output.",
        "Model",
        check=in_range(0, 1),
        fine_tune=True,
    )
    embed_dropout: float = setting(
        0.0,
        "Dropout on the embeddings (one mask per sequence).",
        "Model",
        check=in_range(0, 1),
        fine_tune=True,
    )
    weight_drop: float = setting(
        0.0,
        "DropConnect on hidden-to-hidden weights (scratch).",
        "Model",
        check=in_range(0, 1),
        fine_tune=True,
    )
    variational: bool = setting(
        False,
        "One dropout mask per sequence, shared across time steps.",
        "Model",
        flag=True,
        fine_tune=True,
    )
    tie_weights: bool = setting(
        False, "Output layer shares the embedding matrix.", "Model", flag=True
    )
    scratch_impl: ScratchImpl = setting(
        "fused",
        "fused (hand-derived backward) or autograd (plain).",
        "Model",
        check=one_of(*SCRATCH_IMPLS),
    )
    peephole: bool = setting(False, "Peephole connections (scratch only).", "Model", flag=True)
    softmax: Softmax = setting(
        "full",
        "Output layer: full softmax over the vocabulary, adaptive "
        "(torch.nn.AdaptiveLogSoftmaxWithLoss: frequent characters cost less; for "
        f"vocabularies of thousands), or auto (adaptive above {AUTO_ADAPTIVE_VOCAB:,} "
        "distinct characters, else full; the run records which).",
        "Model",
        check=one_of(*SOFTMAXES),
    )
    cutoffs: list[int] | None = setting(
        None,
        "Adaptive softmax: sizes of the head and tail clusters by frequency rank, e.g. 2000,6000.",
        "Model",
        parse=parse_cutoffs,
        default_text="chosen from the character frequencies",
    )

    @property
    def one_hot(self) -> bool:
        """d2l's one-hot inputs (``embedding_size`` 0): the first layer's input weights
        are a (V, 4H) table looked up by character."""
        return self.embedding_size == 0

    @property
    def input_size(self) -> int:
        """D, the first layer's input size: V for one-hot inputs."""
        if self.one_hot:
            return self.vocab_size
        return self.embedding_size or self.hidden_size

    def validate(self) -> ModelConfig:
        """Check the settings; ``softmax`` "auto" becomes "full" or "adaptive" here, by
        ``vocab_size``, so that a validated config names the output layer it builds."""
        check_fields(self)
        if self.softmax == "auto":
            self.softmax = "adaptive" if self.vocab_size > AUTO_ADAPTIVE_VOCAB else "full"
            if self.softmax == "full" and self.cutoffs is not None:
                raise SettingError(
                    f"{{cutoffs}} is a setting of the adaptive softmax, and {{softmax}} auto "
                    f"chose the full one for this vocabulary of {self.vocab_size:,} characters "
                    f"(adaptive above {AUTO_ADAPTIVE_VOCAB:,}); give {{softmax}} adaptive"
                )
        if self.backend == "torch" and self.peephole:
            raise SettingError("{peephole} needs {backend} scratch (nn.LSTM has no peepholes)")
        if self.backend == "torch" and self.weight_drop > 0:
            raise SettingError("{weight_drop} needs {backend} scratch")
        if self.softmax == "adaptive" and self.tie_weights:
            raise SettingError(
                "{tie_weights} needs {softmax} full (the adaptive softmax has no single output "
                "matrix to share)"
            )
        if self.cutoffs is not None:
            if self.softmax != "adaptive":
                raise SettingError("{cutoffs} is a setting of {softmax} adaptive; add it")
            cutoffs = list(self.cutoffs)
            if (
                not cutoffs
                or cutoffs != sorted(set(cutoffs))
                or not (0 < cutoffs[0] and cutoffs[-1] < self.vocab_size)
            ):
                raise SettingError(
                    "{cutoffs} must be increasing sizes between 1 and the vocabulary size - 1 "
                    f"({self.vocab_size - 1}), not {cutoffs}"
                )
        if self.one_hot:
            _check_one_hot(self)
        if self.tie_weights and self.input_size != self.hidden_size:
            raise SettingError(
                "{tie_weights} needs {embedding_size} equal to {hidden_size} "
                f"({self.input_size} != {self.hidden_size})"
            )
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data)


def _check_one_hot(config: ModelConfig) -> None:
    """What one-hot inputs (``embedding_size`` 0) cannot be combined with."""
    if config.backend != "scratch":
        raise SettingError(
            "{embedding_size} 0 (one-hot inputs) needs {backend} scratch (the torch backend "
            "feeds nn.LSTM an embedding)"
        )
    if config.tie_weights:
        raise SettingError(
            "{tie_weights} needs an embedding: with {embedding_size} 0 (one-hot inputs) there "
            "is no (V, H) matrix to share"
        )
    if config.embed_dropout > 0:
        raise SettingError(
            "{embed_dropout} needs an embedding ({embedding_size} 0: one-hot inputs)"
        )


@dataclass
class TrainConfig:
    """How to train: batches, optimiser, schedule, logging, sampling and checkpoints."""

    epochs: int = setting(
        20,
        "Total epochs (on --resume: the new total).",
        "Training",
        resume=True,
        check=is_positive,
    )
    max_steps: int = setting(
        0,
        "Stop after this many optimizer steps in all (0: no limit; on --resume: the new total).",
        "Training",
        resume=True,
        check=at_least_zero(" (0: no limit)"),
    )
    batch_size: int = setting(32, "Sequences per batch.", "Training", check=is_positive)
    num_steps: int = setting(
        35, "Characters per window (truncated BPTT length).", "Training", check=is_positive
    )
    sampling: Sampling = setting(
        "consecutive",
        "consecutive (state carried) or random windows.",
        "Training",
        check=one_of(*SAMPLINGS),
    )
    optimizer: Optimizer = setting(
        "adam", "sgd, adam or adamw.", "Training", check=one_of(*OPTIMIZERS)
    )
    lr: float = setting(2e-3, "Learning rate.", "Training", resume=True, check=is_positive)
    clip: float = setting(
        1.0,
        "Clip the global gradient norm to this (0: off).",
        "Training",
        resume=True,
        check=at_least_zero(" (0 disables)"),
    )
    weight_decay: float = setting(0.0, "Weight decay.", "Training", check=at_least_zero())
    label_smoothing: float = setting(
        0.0,
        "Label smoothing of the training targets (held-out loss is unsmoothed).",
        "Training",
        check=in_range(0, 1),
    )
    # Distillation from a cross-fitted Kneser-Ney n-gram (charlstm.ngram.teacher).
    ngram_teacher: int = setting(
        0,
        "Distil a Kneser-Ney n-gram of this order into the model: it supplies soft training "
        "targets, cross-fitted on folds of the training text (0: off).",
        "Training",
        check=ngram_order,
    )
    teacher_weight: float = setting(
        0.5,
        "Weight of the n-gram teacher's targets in the training loss.",
        "Training",
        check=in_range(0, 1, "(]"),
    )
    teacher_folds: int = setting(
        5,
        "Folds of the training text for the n-gram teacher: each fold's targets come from an "
        "n-gram fitted on the others.",
        "Training",
        check=lambda v: _number(v) or (f"must be at least 2, not {v}" if v < 2 else None),
    )
    # The LSTM interpolated with a Kneser-Ney n-gram fitted on the training text
    # (charlstm.ngram.mixture).
    ngram_mix: int = setting(
        0,
        "Predict with the LSTM interpolated with a Kneser-Ney n-gram of this order, fitted on "
        "the training text and kept in the checkpoint; eval and generate use the "
        "interpolation (0: off).",
        "Training",
        check=ngram_order,
    )
    mix_weight: float = setting(
        0.25,
        "Weight of the --ngram-mix n-gram in the interpolation, in (0, 1).",
        "Training",
        check=in_range(0, 1, "()"),
    )
    ema: float = setting(
        0.0,
        "Keep an exponential moving average of the weights with this decay per optimizer step "
        "(e.g. 0.995); held-out scores, samples and saved models use the average (0: off).",
        "Training",
        check=lambda v: None if 0 <= v < 1 else f"must be a decay in [0, 1) (0: off), not {v}",
    )
    schedule: Schedule = setting(
        "none",
        "Learning-rate schedule: none, cosine or plateau.",
        "Training",
        check=one_of(*SCHEDULES),
    )
    patience: int = setting(
        0,
        "Stop after N held-out scores without a better one (0: never).",
        "Training",
        resume=True,
        check=at_least_zero(),
    )
    val_fraction: float = setting(
        0.1,
        "Held-out part at the end of the corpus, never trained on.",
        "Corpus",
        check=in_range(0, 1),
    )
    seed: int = setting(
        0, "Seed for weights, dropout and data order.", "Training", check=seed_range
    )
    device: str = setting("auto", "auto, cpu or cuda.", "Training", resume=True)
    eval_every: int = setting(
        0,
        "Score the held-out text, write checkpoints and print samples every N optimizer steps "
        "(0: at the end of each epoch).",
        "Training",
        check=at_least_zero(" (0: each epoch)"),
    )
    eval_chars: int = setting(
        0,
        "Score only the first N held-out characters during training (0: all of them; "
        "charlstm eval always scores all).",
        "Training",
        check=at_least_zero(" (0: all)"),
    )
    prefixes: list[str] = setting(
        [],
        "Prefix to sample from during training (repeatable).",
        "Output",
        option="--prefix",
        resume=True,
        repeat=True,
        default_text="分开, 不分开",
    )
    sample_every: int = setting(
        1,
        "Print samples at every N-th held-out score (each epoch, or each --eval-every "
        "steps; 0: never).",
        "Output",
        resume=True,
        check=at_least_zero(),
    )
    sample_length: int = setting(
        50, "Characters per training sample.", "Output", resume=True, check=is_positive
    )
    checkpoint_every: int = setting(
        0,
        "Also write last.pt every N optimizer steps (0: only at each held-out score).",
        "Output",
        resume=True,
        check=at_least_zero(),
    )
    # A cosine schedule decays over the minutes or the epochs, whichever end first.
    time_limit: float = setting(
        0.0,
        "Stop within one step (plus one held-out score and checkpoint) after N minutes of "
        "training (0: none).",
        "Training",
        resume=True,
        check=at_least_zero(" minutes"),
        default_text="none",
    )

    def validate(self) -> TrainConfig:
        check_fields(self)
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data)


for _cls in (DataConfig, ModelConfig, TrainConfig):
    register(_cls)
#: Training settings a resumed run may change; everything else must match the checkpoint.
RESUME_OVERRIDABLE = frozenset(f.name for f, meta in settings_of(TrainConfig) if meta.resume)


@dataclass(frozen=True)
class Requires:
    """A setting that only acts when another has a value (``when``) — given without it, it
    would be silently ignored, so it is an error."""

    setting: str
    switch: str
    when: Callable[[Any], bool]
    needs: str  # what to add, e.g. "{ngram_teacher} N"
    message: str | None = None  # instead of "X is a setting of Y; add ..."


#: One table of "X is a setting of Y", shared by new runs, the CLI and the API.
REQUIRES: tuple[Requires, ...] = (
    Requires("teacher_weight", "ngram_teacher", bool, "{ngram_teacher} N"),
    Requires("teacher_folds", "ngram_teacher", bool, "{ngram_teacher} N"),
    Requires("mix_weight", "ngram_mix", bool, "{ngram_mix} N"),
    Requires(
        "scratch_impl",
        "backend",
        lambda v: v == "scratch",
        "{backend} scratch",
        "{scratch_impl} needs {backend} scratch (it chooses how the scratch layer runs)",
    ),
    Requires("cutoffs", "softmax", lambda v: v == "adaptive", "{softmax} adaptive"),
    # evaluation-time adaptation (charlstm.generation.adaptation): --cache-* and --dynamic-* need
    # their switch
    *(
        Requires(f"cache.{name}", "cache", bool, "{cache}")
        for name in ("window", "flatness", "mix")
    ),
    *(Requires(f"dynamic.{name}", "dynamic", bool, "{dynamic}") for name in ("lr", "segment")),
)


def check_together(model: ModelConfig, train: TrainConfig) -> None:
    """Rules across the model and its training."""
    if model.softmax == "adaptive":
        for name, used in (
            ("label_smoothing", train.label_smoothing > 0),
            ("ngram_teacher", train.ngram_teacher > 0),
        ):
            if used:
                raise SettingError(
                    f"{{{name}}} needs {{softmax}} full: it spreads probability over the "
                    "whole vocabulary, which the adaptive softmax never computes in training"
                )


def check_given(given: dict[str, Any], *configs: Any) -> None:
    """Refuse settings that were given (``given``'s keys) but would do nothing."""
    values = {k: v for c in configs for k, v in setting_values(c).items()}
    for rule in REQUIRES:
        if rule.setting in given and rule.switch in values and not rule.when(values[rule.switch]):
            raise SettingError(
                rule.message
                or f"{{{rule.setting}}} is a setting of {{{rule.switch}}}; add {rule.needs}"
            )
    train = next((c for c in configs if isinstance(c, TrainConfig)), None)
    if train is not None and train.val_fraction == 0:
        for key, active in (
            ("patience", train.patience > 0),
            ("schedule", train.schedule == "plateau"),
            ("eval_chars", train.eval_chars > 0),
        ):
            if key in given and active:
                raise SettingError(
                    f"{{{key}}} {given[key]} follows the held-out loss, but {{val_fraction}} 0 "
                    "leaves no held-out part"
                )


#: Named settings for common cases (``--preset``); explicit options override them.
#: Measured figures for each are in docs/quality.md.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Lyrics-sized text (tens of thousands of characters, thousands of distinct ones): a
    # tied 1x768 LSTM with the AWD-LSTM regularisers turned up (variational dropout 0.7,
    # DropConnect 0.6 on the recurrent weights, embedding dropout 0.4), label smoothing 0.2,
    # AdamW and a cosine schedule, and a Kneser-Ney 6-gram teacher (charlstm.ngram.teacher)
    # supplying half of every training target; the model predicts with the LSTM
    # interpolated with a 6-gram at weight 0.25 (charlstm.ngram.mixture). Tuned on a split inside
    # jaychou's training text; jaychou: held-out perplexity 167.8 (the LSTM alone 190.1,
    # the 6-gram 207.8), early-stopped after 22 epochs, 3.8 minutes of training on 2 CPU
    # cores (docs/quality.md). The 14-minute limit keeps a slower machine inside 15
    # minutes (the cosine then follows the clock).
    "small-corpus": {
        "model": {
            "hidden_size": 768,
            "tie_weights": True,
            "variational": True,
            "embed_dropout": 0.4,
            "dropout": 0.7,
            "weight_drop": 0.6,
        },
        "train": {
            "optimizer": "adamw",
            "lr": 2e-3,
            "weight_decay": 0.3,
            "label_smoothing": 0.2,
            "ngram_teacher": 6,
            "teacher_weight": 0.5,
            "ngram_mix": 6,
            "mix_weight": 0.25,
            "schedule": "cosine",
            "epochs": 40,
            "patience": 8,
            "num_steps": 70,
            "batch_size": 32,
            "time_limit": 14.0,
        },
    },
    # Megabyte-sized text (Tiny Shakespeare, tang_poems): a wider model, light dropout,
    # longer windows, and a 10-minute training budget on a CPU (--time-limit 0 lifts it).
    # nn.LSTM: at 1x512 its fused oneDNN layer runs a training step 1.2-1.5x as fast as the
    # scratch layer's per-step loop on a CPU (docs/benchmarks.md), and the preset needs no
    # scratch-only regulariser. With --softmax auto: the adaptive softmax for thousands of
    # distinct characters (tang_poems, V = 9,700: 3.3x the characters per second of
    # the full softmax on a CPU and a lower held-out loss after the same minutes,
    # docs/benchmarks.md), the full one for a small alphabet (Tiny Shakespeare, V = 65),
    # where the adaptive one saves nothing.
    "large-corpus": {
        "model": {
            "backend": "torch",
            "hidden_size": 512,
            "num_layers": 1,
            "dropout": 0.1,
            "softmax": "auto",
        },
        "train": {
            "optimizer": "adam",
            "lr": 2e-3,
            "schedule": "plateau",
            "epochs": 50,
            "patience": 3,
            "num_steps": 100,
            "batch_size": 64,
            "time_limit": 10.0,
        },
    },
    # Megabyte-sized text on a GPU: two 1024-unit scratch layers (CUDA-graph replay) with
    # the AWD-LSTM regularisers turned up (the model has 17M parameters for 1M characters),
    # long windows, and a 5-minute budget that the cosine schedule decays over.
    # Tiny Shakespeare: best held-out perplexity 4.06 (about 1.401 nats/char) on an H100; see
    # docs/quality.md.
    "large-corpus-gpu": {
        "model": {
            "backend": "scratch",
            "hidden_size": 1024,
            "num_layers": 2,
            "variational": True,
            "embed_dropout": 0.1,
            "dropout": 0.5,
            "weight_drop": 0.5,
        },
        "train": {
            "device": "cuda",
            "optimizer": "adamw",
            "lr": 2e-3,
            "weight_decay": 0.1,
            "schedule": "cosine",
            "epochs": 1000,
            "num_steps": 128,
            "batch_size": 128,
            "time_limit": 4.9,
        },
    },
}

"""The settings of using a trained model: which model, what to write, how to choose each
character, and how to adapt to the text (``charlstm generate`` and ``charlstm eval``).

Each class is made of :func:`~charlstm.fields.setting` fields (one field: one option) and is
validated once, when it is built (``__post_init__``): a :class:`~charlstm.fields.SettingError`
naming the field. What depends on a model (a ``top_k`` larger than its vocabulary, a
``stop_at`` character it does not know) is checked when the model is used
(:func:`charlstm.generation.sample.generate`).

This module does not import torch: the CLI reads these classes to build its options, and its
help must not wait for torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from charlstm.config import check_given
from charlstm.errors import CharLSTMError
from charlstm.fields import (
    SettingError,
    at_least_zero,
    build,
    check_fields,
    in_range,
    is_positive,
    optional,
    register,
    seed_range,
    setting,
)

#: How many characters back the repetition penalty looks by default.
DEFAULT_PENALTY_WINDOW = 32


def _temperature(value: float) -> str | None:
    if value > 0 and math.isfinite(value):
        return None
    return f"must be positive, not {value} (use {{greedy}} for arg max)"


def _penalty(value: float) -> str | None:
    if value >= 1 and math.isfinite(value):
        return None
    return f"must be at least 1 (1: off), not {value}"


def _top_p(value: float) -> str | None:
    return None if 0 < value <= 1 else f"must be in (0, 1], not {value}"


@register
@dataclass
class SamplingConfig:
    """How the next character is chosen (the rules: :mod:`charlstm.generation.decoding`)."""

    temperature: float = setting(
        1.0, "Below 1: safer; above 1: wilder.", "Sampling", check=_temperature
    )
    top_k: int | None = setting(
        None,
        "Sample only among the K likeliest characters.",
        "Sampling",
        check=optional(is_positive),
    )
    top_p: float | None = setting(
        None,
        "Sample only among the likeliest characters holding this much probability.",
        "Sampling",
        check=optional(_top_p),
    )
    greedy: bool = setting(
        False, "Always take the likeliest character (tends to loop).", "Sampling"
    )
    repetition_penalty: float = setting(
        1.0,
        "Divide the probability of characters generated in the last --penalty-window "
        "characters by this (1: off; try 1.5 to 3).",
        "Sampling",
        check=_penalty,
    )
    penalty_window: int = setting(
        DEFAULT_PENALTY_WINDOW,
        "How many generated characters back --repetition-penalty looks.",
        "Sampling",
        check=is_positive,
    )

    def __post_init__(self) -> None:
        """Refuse settings out of range and settings that cannot act: the one place for
        these rules, for the CLI and the Python API alike."""
        check_fields(self)
        if self.greedy and (
            self.temperature != 1.0 or self.top_k is not None or self.top_p is not None
        ):
            raise SettingError(
                "{greedy} always takes the likeliest character: {temperature}, {top_k} and "
                "{top_p} cannot change it (drop them, or drop {greedy} to sample)"
            )
        if self.penalty_window != DEFAULT_PENALTY_WINDOW and self.repetition_penalty == 1.0:
            raise SettingError(
                "{penalty_window} is a setting of {repetition_penalty}; add {repetition_penalty} P"
            )

    def check_vocab(self, vocab_size: int) -> None:
        """What these settings need of a model's vocabulary of ``vocab_size`` characters."""
        if self.top_k is not None and self.top_k > vocab_size:
            raise SettingError(
                f"{{top_k}} {self.top_k} is larger than the vocabulary ({vocab_size} characters)"
            )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _logit_bias(value: dict[int, float]) -> str | None:
    for index, bias in value.items():
        if not isinstance(index, int) or index < 0:
            return f"keys must be vocabulary indices, not {index!r}"
        if not (isinstance(bias, int | float) and -100 <= bias <= 100):
            return f"values must be in [-100, 100], not {bias!r} (for {index})"
    return None


@register
@dataclass
class LogitRules:
    """OpenAI's rules on the logits, after ``repetition_penalty`` and before the
    temperature (:mod:`charlstm.generation.decoding`): the frequency and presence penalties
    over each row's generated characters, and ``logit_bias`` (vocabulary index -> value
    added to its logit). All neutral: no rule at all (:attr:`active` is False)."""

    frequency_penalty: float = setting(
        0.0,
        "Lower a character's logit by this times its count in the text generated so far.",
        "Sampling",
        check=in_range(-2, 2, "[]"),
        cli=False,
    )
    presence_penalty: float = setting(
        0.0,
        "Lower the logit of every character already generated by this.",
        "Sampling",
        check=in_range(-2, 2, "[]"),
        cli=False,
    )
    logit_bias: dict[int, float] = setting(
        {}, "Added to the logit of each vocabulary index.", "Sampling", check=_logit_bias, cli=False
    )

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def penalizes(self) -> bool:
        return self.frequency_penalty != 0 or self.presence_penalty != 0

    @property
    def active(self) -> bool:
        return self.penalizes or bool(self.logit_bias)

    def check_vocab(self, vocab_size: int) -> None:
        """Every biased index is in a vocabulary of ``vocab_size`` characters."""
        outside = [i for i in self.logit_bias if i >= vocab_size]
        if outside:
            raise SettingError(
                f"{{logit_bias}} has index {outside[0]}, outside the vocabulary "
                f"(0 to {vocab_size - 1})"
            )


# -- evaluation-time adaptation (charlstm.generation.adaptation) -------------------------------


@register
@dataclass
class Adaptation:
    """The switches of evaluation-time adaptation, as ``charlstm eval`` and ``generate``
    take them; the Python API passes a :class:`CacheConfig` / :class:`DynamicConfig` instead."""

    cache: bool = setting(
        False,
        "Mix the model's distribution with a continuous cache of the text read so far.",
        "Adaptation",
    )
    dynamic: bool = setting(
        False,
        "Dynamic evaluation: learn from the text read so far, one SGD step a segment.",
        "Adaptation",
    )


#: :meth:`CacheConfig.for_generation`'s mix.
GENERATION_CACHE_MIX = 0.05


@register
@dataclass
class CacheConfig:
    """Continuous cache (Grave et al., 2017): recent hidden states vote for what followed them.

    ``p(c | h_t) = (1 - mix) * p_model(c | h_t) + mix * p_cache(c | h_t)`` with
    ``p_cache(c) ∝ Σ_{i in window, i < t} [x_{i+1} = c] exp(flatness * h_t · h_i)``.
    ``mix = 0`` leaves the model's distribution as it is. Its settings are ``cache.window``
    etc. (``--cache-window``).
    """

    SETTING_PREFIX: ClassVar[str] = "cache"

    # Defaults tuned with scripts/tune_adaptation.py on a split inside jaychou's training
    # text (never on the held-out part); see docs/quality.md.
    window: int = setting(500, "Cache: hidden states kept.", "Adaptation", check=is_positive)
    flatness: float = setting(
        0.5, "Cache: sharpness of the match.", "Adaptation", check=is_positive
    )
    mix: float = setting(
        0.45, "Cache: its weight in the mixture, in [0, 1).", "Adaptation", check=in_range(0, 1)
    )

    def __post_init__(self) -> None:
        check_fields(self)

    @classmethod
    def for_generation(cls, **settings: Any) -> CacheConfig:
        """The defaults for writing text rather than scoring it: ``mix`` 0.05.

        A generated text feeds the cache its own characters, and consecutive hidden states
        are alike, so a strong cache votes for the character just written: at the scoring
        mix (0.45) a sample stutters. 0.05 is the largest mix tried (0.03, 0.05, 0.075,
        0.1, 0.2, 0.3, 0.45) whose samples repeat a character no more often than the model
        alone (jaychou, the 1x512 small-corpus run, 16 samples x 300 characters, T = 0.8; see
        docs/generation.md).
        """
        return cls(**{"mix": GENERATION_CACHE_MIX, **settings})


@register
@dataclass
class DynamicConfig:
    """Dynamic evaluation (Krause et al., 2018): after scoring each segment, one SGD step
    on it, pulled back towards the trained weights by ``decay`` (a setting of the Python
    API only; the CLI keeps 0). ``lr = 0`` never changes the weights. Its settings are
    ``dynamic.lr`` etc. (``--dynamic-lr``)."""

    SETTING_PREFIX: ClassVar[str] = "dynamic"

    lr: float = setting(  # tuned together with the cache (alone, 0.3 scored better)
        0.1, "Dynamic evaluation: SGD step size.", "Adaptation", check=at_least_zero()
    )
    segment: int = setting(
        50, "Dynamic evaluation: characters per update.", "Adaptation", check=is_positive
    )
    decay: float = setting(0.0, cli=False, check=in_range(0, 1))

    def __post_init__(self) -> None:
        check_fields(self)


def from_settings(
    given: dict[str, Any], generating: bool = False
) -> tuple[CacheConfig | None, DynamicConfig | None]:
    """The configs of ``--cache`` and ``--dynamic`` from the settings given by key
    (``None`` when a switch is off; a setting given without its switch is an error, from
    :data:`charlstm.config.REQUIRES`). ``generating``: :meth:`CacheConfig.for_generation`'s
    defaults."""
    switches = build(Adaptation, given)
    check_given(given, switches)
    cache = dynamic = None
    if switches.cache:
        cache = build(
            CacheConfig, {"cache.mix": GENERATION_CACHE_MIX, **given} if generating else given
        )
    if switches.dynamic:
        dynamic = build(DynamicConfig, given)
    return cache, dynamic


# -- charlstm generate ------------------------------------------------------------------------

ESCAPES = {"\\n": "\n", "\\t": "\t", "\\r": "\r", "\\\\": "\\"}


def parse_char(text: str) -> str:
    """One character from the command line, where ``\\n``, ``\\t``, ``\\r`` and ``\\\\`` are
    accepted for a newline, a tab, a carriage return and a backslash."""
    char = ESCAPES.get(text, text)
    if len(char) != 1:
        raise SettingError(f"{{stop_at}} takes one character (or \\n, \\t), not {text!r}")
    return char


def _format(value: str) -> str | None:
    return None if value in ("text", "jsonl") else f"unknown {{}} {value!r}; choose text or jsonl"


@register
@dataclass
class GenerateRequest:
    """What ``charlstm generate`` writes, from what, and where (the sampling controls are a
    :class:`SamplingConfig`, the adaptation a :class:`CacheConfig` / :class:`DynamicConfig`)."""

    prefixes: list[str] = setting(
        [], "Text to continue (repeatable).", "Input", option="--prefix", repeat=True
    )
    prefix_file: Path | None = setting(
        None, "A UTF-8 file of prefixes, one per line (after any --prefix).", "Input"
    )
    length: int = setting(
        100,
        "Characters to generate after the prefix (at most, with --stop-at/--lines).",
        "Length",
        check=at_least_zero(),
    )
    stop_at: str | None = setting(
        None,
        "End each sample with the first CHAR it generates ('\\n' for a newline).",
        "Length",
        parse=parse_char,
        metavar="CHAR",
    )
    lines: int | None = setting(
        None,
        "End each sample at its N-th newline.",
        "Length",
        check=optional(is_positive),
        metavar="N",
    )
    stop: list[str] = setting(
        [],
        "End each sample before the first STRING it writes, which is left out (repeatable; "
        "OpenAI's stop).",
        "Length",
        repeat=True,
        metavar="STRING",
    )
    num_samples: int = setting(
        1, "Samples per prefix (all generated as one batch).", "Sampling", check=is_positive
    )
    seed: int | None = setting(
        None,
        "Seed: the same seed gives the same text.",
        "Sampling",
        check=optional(seed_range),
        default_text="a random one, recorded by --format jsonl",
    )
    out: Path | None = setting(None, "Write the samples to FILE instead of the terminal.", "Output")
    output_format: str = setting(
        "text",
        "text, or jsonl: one JSON object per sample (prefix, text, settings, checkpoint, seed).",
        "Output",
        option="--format",
        check=_format,
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.prefixes and self.prefix_file is None:
            raise SettingError("give a prefix to continue, e.g. {prefixes} 分开, or {prefix_file}")

    def all_prefixes(self) -> list[str]:
        """The ``prefixes``, then those of ``prefix_file``."""
        from_file = read_prefix_file(self.prefix_file) if self.prefix_file is not None else []
        return list(self.prefixes) + from_file


def read_prefix_file(path: str | Path) -> list[str]:
    """Prefixes from a UTF-8 text file, one per line; empty lines are skipped."""
    path = Path(path)
    if path.is_dir():
        raise CharLSTMError(f"prefix file is a directory: {path}")
    if not path.is_file():
        raise CharLSTMError(f"prefix file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise CharLSTMError(f"prefix file {path} is not UTF-8 text") from err
    except OSError as err:
        raise CharLSTMError(f"cannot read prefix file {path}: {err.strerror}") from err
    prefixes = [line for line in text.splitlines() if line.strip()]
    if not prefixes:
        raise CharLSTMError(f"prefix file {path} has no prefixes (one per line)")
    return prefixes


# -- which model, and what to score -----------------------------------------------------------


@register
@dataclass
class ModelChoice:
    """Which trained model ``charlstm generate`` and ``eval`` read, and where it runs
    (:func:`charlstm.api.load_model`)."""

    checkpoint: Path | None = setting(
        None, "Run directory or checkpoint file (default: the newest run's best.pt).", "Input"
    )
    lstm_only: bool = setting(
        False,
        "Use the LSTM alone, without the n-gram a run trained with --ngram-mix interpolates.",
        "Adaptation",
    )
    device: str = setting("cpu", "auto, cpu or cuda.", "Input")


@register
@dataclass
class EvalScope:
    """Which part of a text ``charlstm eval`` scores
    (:meth:`charlstm.api.LanguageModel.evaluate_file`)."""

    val_fraction: float | None = setting(
        None,
        "Score only this last part of the text (default: the run's held-out part if CORPUS "
        "is the run's corpus, else the whole text).",
        "Input",
        check=optional(in_range(0, 1)),
    )

    def __post_init__(self) -> None:
        check_fields(self)

"""Typed configuration of a run: what to read, what to build, how to train.

:class:`DataConfig`, :class:`ModelConfig` and :class:`TrainConfig` are made of
:func:`~charlstm.fields.setting` fields (see :mod:`charlstm.fields`: every option, its help, its
resume rule and its check are one field), and so are the other commands' settings, beside the
code that uses them (:mod:`charlstm.generation.settings`). Adding a training option is one field
here. :data:`REQUIRES` and :func:`check_given` refuse settings that were given but would do
nothing; the named presets are in :mod:`charlstm.presets`.

Each config round-trips through plain dicts (``asdict`` / ``from_dict``) so that it can be
stored in ``config.json`` and in every checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from charlstm.fields import (
    SettingError,
    at_least_zero,
    check_fields,
    finite_number,
    from_dict_of,
    in_range,
    is_positive,
    one_of,
    optional,
    register,
    seed_range,
    setting,
    setting_values,
    settings_of,
)

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


def ngram_order(value: int) -> str | None:
    if value == 0 or 2 <= value <= MAX_NGRAM_ORDER:
        return None
    return f"must be an n-gram order from 2 to {MAX_NGRAM_ORDER} (0: off), not {value}"


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

    def __post_init__(self) -> None:
        check_fields(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        return from_dict_of(cls, data)


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
        default_text="{hidden_size}",
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

    @property
    def chosen_softmax(self) -> str:
        """The output layer this config builds: ``softmax``, with "auto" decided by
        ``vocab_size`` (adaptive above :data:`AUTO_ADAPTIVE_VOCAB` characters, else full)."""
        if self.softmax != "auto":
            return self.softmax
        return "adaptive" if self.vocab_size > AUTO_ADAPTIVE_VOCAB else "full"

    def resolved(self) -> ModelConfig:
        """This config with ``softmax`` "auto" replaced by the output layer it chooses
        (:attr:`chosen_softmax`), so that a run records the layer it builds; a new config,
        the same one when there is nothing to decide."""
        return self if self.softmax != "auto" else replace(self, softmax=self.chosen_softmax)

    def __post_init__(self) -> None:
        """Check the settings (with "auto" read as the softmax it chooses); nothing is
        changed here (see :meth:`resolved`)."""
        check_fields(self)
        softmax = self.chosen_softmax
        if self.softmax == "auto" and softmax == "full" and self.cutoffs is not None:
            raise SettingError(
                f"{{cutoffs}} is a setting of the adaptive softmax, and {{softmax}} auto "
                f"chose the full one for this vocabulary of {self.vocab_size:,} characters "
                f"(adaptive above {AUTO_ADAPTIVE_VOCAB:,}); give {{softmax}} adaptive"
            )
        if self.backend == "torch" and self.peephole:
            raise SettingError("{peephole} needs {backend} scratch (nn.LSTM has no peepholes)")
        if self.backend == "torch" and self.weight_drop > 0:
            raise SettingError("{weight_drop} needs {backend} scratch")
        if softmax == "adaptive" and self.tie_weights:
            raise SettingError(
                "{tie_weights} needs {softmax} full (the adaptive softmax has no single output "
                "matrix to share)"
            )
        if self.cutoffs is not None:
            if softmax != "adaptive":
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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return from_dict_of(cls, data)


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
        check=lambda v: finite_number(v) or (f"must be at least 2, not {v}" if v < 2 else None),
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
    # A run started with it keeps writing on --resume; --no-tensorboard stops it there.
    tensorboard: bool = setting(
        False,
        "Also write the curves of metrics.jsonl and steps.jsonl (loss, perplexity, bits per "
        "character, learning rate, gradient norm, chars/s) to RUN/tensorboard/ for TensorBoard "
        "(needs: pip install 'charlstm[tensorboard]').",
        "Output",
        resume=True,
        flag=True,
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

    def __post_init__(self) -> None:
        check_fields(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return from_dict_of(cls, data)


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
    # evaluation-time adaptation (charlstm.generation.settings): --cache-* and --dynamic-* need
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

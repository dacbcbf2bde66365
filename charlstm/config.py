"""Typed configuration: what to read, what to build, how to train.

The CLI builds these dataclasses and passes them explicitly; nothing reads globals.
Each config round-trips through plain dicts (``asdict`` / ``from_dict``) so that it can be
stored in ``config.json`` and in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from charlstm.errors import CharLSTMError

Backend = Literal["scratch", "torch"]
ScratchImpl = Literal["fused", "autograd"]
Sampling = Literal["consecutive", "random"]
Optimizer = Literal["sgd", "adam", "adamw"]
Schedule = Literal["none", "cosine", "plateau"]
Softmax = Literal["full", "adaptive"]

#: The n-gram teacher's counts grow with the order; beyond this it cannot help and
#: exhausts memory.
MAX_NGRAM_ORDER = 16

BACKENDS: tuple[str, ...] = ("scratch", "torch")
SCRATCH_IMPLS: tuple[str, ...] = ("fused", "autograd")
SAMPLINGS: tuple[str, ...] = ("consecutive", "random")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw")
SCHEDULES: tuple[str, ...] = ("none", "cosine", "plateau")
SOFTMAXES: tuple[str, ...] = ("full", "adaptive")

C = TypeVar("C")


def _from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Build dataclass ``cls`` from ``data``, ignoring unknown keys (newer files)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise CharLSTMError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")


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


def non_negative(name: str, value: float, note: str = "") -> None:
    finite(name, value)
    if value < 0:
        raise CharLSTMError(f"{name} must be >= 0{note}, not {value}")


def check_seed(value: int) -> None:
    """Seeds are integers in [0, 2**63 - 1]."""
    if not 0 <= value <= MAX_SEED:
        raise CharLSTMError(f"--seed must be in [0, 2**63 - 1], not {value}")


def fraction(name: str, value: float, upper_open: bool = True) -> None:
    ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    if not ok:
        raise CharLSTMError(f"{name} must be in [0, 1), not {value}")


@dataclass
class DataConfig:
    """Where the text comes from and how it is normalised (see :mod:`charlstm.corpus`)."""

    path: str
    member: str | None = None
    encoding: str | None = None
    newlines: Literal["keep", "space"] = "keep"
    max_chars: int | None = None

    def validate(self) -> DataConfig:
        _choice("--newlines", self.newlines, ("keep", "space"))
        if self.max_chars is not None:
            positive("--max-chars", self.max_chars)
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        return _from_dict(cls, data)


@dataclass
class ModelConfig:
    """The network: embedding -> LSTM layers -> linear output over the vocabulary."""

    vocab_size: int
    backend: Backend = "scratch"
    hidden_size: int = 256
    num_layers: int = 1
    embedding_size: int | None = None  # None: same as hidden_size
    dropout: float = 0.3  # between LSTM layers and on the last layer's output
    embed_dropout: float = 0.0  # on the embeddings (variational: one mask per sequence)
    weight_drop: float = 0.0  # DropConnect on hidden-to-hidden weights (scratch only)
    variational: bool = False  # dropout masks shared across time steps
    tie_weights: bool = False  # output layer shares the embedding matrix
    scratch_impl: ScratchImpl = "fused"  # hand-derived BPTT, or plain autograd
    peephole: bool = False  # peephole connections (scratch only)
    # The output layer: a full softmax over V, or torch's adaptive softmax
    # (nn.AdaptiveLogSoftmaxWithLoss) with these cutoffs (None: from character frequencies).
    softmax: Softmax = "full"
    cutoffs: list[int] | None = None

    @property
    def input_size(self) -> int:
        return self.embedding_size or self.hidden_size

    def validate(self) -> ModelConfig:
        _choice("--backend", self.backend, BACKENDS)
        _choice("--scratch-impl", self.scratch_impl, SCRATCH_IMPLS)
        positive("vocabulary size", self.vocab_size)
        positive("--hidden", self.hidden_size)
        positive("--layers", self.num_layers)
        if self.embedding_size is not None:
            positive("--embedding-size", self.embedding_size)
        for name, value in (
            ("--dropout", self.dropout),
            ("--embed-dropout", self.embed_dropout),
            ("--weight-drop", self.weight_drop),
        ):
            fraction(name, value)
        if self.backend == "torch" and self.peephole:
            raise CharLSTMError("--peephole needs --backend scratch (nn.LSTM has no peepholes)")
        if self.backend == "torch" and self.weight_drop > 0:
            raise CharLSTMError("--weight-drop needs --backend scratch")
        _choice("--softmax", self.softmax, SOFTMAXES)
        if self.softmax == "adaptive" and self.tie_weights:
            raise CharLSTMError("--tie-weights needs --softmax full (the adaptive softmax has no "
                                "single output matrix to share)")
        if self.cutoffs is not None:
            if self.softmax != "adaptive":
                raise CharLSTMError("--cutoffs is a setting of --softmax adaptive; add it")
            if list(self.cutoffs) != sorted(set(self.cutoffs)) or not self.cutoffs or not (
                0 < self.cutoffs[0] and self.cutoffs[-1] < self.vocab_size
            ):
                raise CharLSTMError(
                    f"--cutoffs must be increasing sizes between 1 and the vocabulary size - 1 "
                    f"({self.vocab_size - 1}), not {self.cutoffs}"
                )
        if self.tie_weights and self.input_size != self.hidden_size:
            raise CharLSTMError(
                "--tie-weights needs --embedding-size equal to --hidden "
                f"({self.input_size} != {self.hidden_size})"
            )
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data)


@dataclass
class TrainConfig:
    """How to train: batches, optimiser, schedule, logging, sampling and checkpoints."""

    epochs: int = 20
    batch_size: int = 32
    num_steps: int = 35
    sampling: Sampling = "consecutive"
    optimizer: Optimizer = "adam"
    lr: float = 2e-3
    clip: float = 1.0  # global gradient-norm clipping; 0 disables
    weight_decay: float = 0.0
    label_smoothing: float = 0.0  # training targets keep 1 - s, the rest spread over all chars
    # Distillation from a cross-fitted Kneser-Ney n-gram of this order (0: off); the
    # training loss mixes its distribution in with this weight (see charlstm.distill).
    ngram_teacher: int = 0
    teacher_weight: float = 0.5
    teacher_folds: int = 5  # the teacher of each fold is fitted on the other folds
    # The model predicts with the LSTM interpolated with a Kneser-Ney n-gram of this order
    # fitted on the training text (0: off), at this weight (see charlstm.mixture).
    ngram_mix: int = 0
    mix_weight: float = 0.25
    # Polyak averaging: an exponential moving average of the weights with this decay per
    # optimizer step (0: off) is what is scored, sampled and saved as the model.
    ema: float = 0.0
    schedule: Schedule = "none"
    patience: int = 0  # early stopping after this many epochs without a better held-out loss
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    sample_every: int = 1  # epochs; 0 disables samples during training
    sample_length: int = 50
    prefixes: list[str] = field(default_factory=list)
    checkpoint_every: int = 0  # optimizer steps; 0: only at the end of each epoch
    # Minutes of training; stop after the epoch that passes them (0: none). A cosine
    # schedule then decays over the minutes or the epochs, whichever end first.
    time_limit: float = 0.0

    def validate(self) -> TrainConfig:
        positive("--epochs", self.epochs)
        positive("--batch-size", self.batch_size)
        positive("--num-steps", self.num_steps)
        _choice("--sampling", self.sampling, SAMPLINGS)
        _choice("--optimizer", self.optimizer, OPTIMIZERS)
        _choice("--schedule", self.schedule, SCHEDULES)
        positive("--lr", self.lr)
        non_negative("--clip", self.clip, " (0 disables)")
        fraction("--label-smoothing", self.label_smoothing)
        if not (self.ngram_teacher == 0 or 2 <= self.ngram_teacher <= MAX_NGRAM_ORDER):
            raise CharLSTMError(
                f"--ngram-teacher must be an n-gram order from 2 to {MAX_NGRAM_ORDER} (0: off), "
                f"not {self.ngram_teacher}"
            )
        if not (self.ngram_mix == 0 or 2 <= self.ngram_mix <= MAX_NGRAM_ORDER):
            raise CharLSTMError(
                f"--ngram-mix must be an n-gram order from 2 to {MAX_NGRAM_ORDER} (0: off), "
                f"not {self.ngram_mix}"
            )
        if not 0.0 < self.mix_weight < 1.0:
            raise CharLSTMError(f"--mix-weight must be in (0, 1), not {self.mix_weight}")
        finite("--teacher-folds", self.teacher_folds)
        if self.teacher_folds < 2:
            raise CharLSTMError(f"--teacher-folds must be at least 2, not {self.teacher_folds}")
        if not 0.0 < self.teacher_weight <= 1.0:
            raise CharLSTMError(f"--teacher-weight must be in (0, 1], not {self.teacher_weight}")
        if not 0.0 <= self.ema < 1.0:
            raise CharLSTMError(f"--ema must be a decay in [0, 1) (0: off), not {self.ema}")
        non_negative("--weight-decay", self.weight_decay)
        for name, value in (
            ("--patience", self.patience),
            ("--sample-every", self.sample_every),
            ("--checkpoint-every", self.checkpoint_every),
        ):
            non_negative(name, value)
        positive("--sample-length", self.sample_length)
        non_negative("--time-limit", self.time_limit, " minutes")
        fraction("--val-fraction", self.val_fraction)
        check_seed(self.seed)
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data)


#: Named settings for common cases (``--preset``); explicit options override them.
#: Measured figures for each are in docs/quality.md.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Lyrics-sized text (tens of thousands of characters, thousands of distinct ones): a
    # tied 1x768 LSTM with the AWD-LSTM regularisers turned up (variational dropout 0.7,
    # DropConnect 0.6 on the recurrent weights, embedding dropout 0.4), label smoothing 0.2,
    # AdamW and a cosine schedule, and a Kneser-Ney 6-gram teacher (charlstm.distill)
    # supplying half of every training target; the model predicts with the LSTM
    # interpolated with a 6-gram at weight 0.25 (charlstm.mixture). Tuned on a split inside
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
    # Megabyte-sized text (Tiny Shakespeare): a wider model, light dropout, longer windows,
    # and a 10-minute training budget on a CPU (--time-limit 0 lifts it).
    "large-corpus": {
        "model": {"hidden_size": 512, "num_layers": 1, "dropout": 0.1},
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

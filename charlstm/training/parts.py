"""The parts of a training run, each small and built before the loop starts.

- :class:`Progress`: where training stands (the epoch and batch follow from the step);
  saved in every checkpoint, so a resume continues exactly.
- :class:`Schedule`: the learning rate at a step; :class:`StopRules`: when a run ends.
- :class:`WeightAverage`: Polyak averaging of the weights (``ema``).
- :class:`TrainingLoss` (label smoothing, the n-gram teacher) and :class:`LossStep`, the
  module ``DistributedDataParallel`` wraps (:func:`data_parallel`).
- :func:`make_optimizer`, :func:`gradient_norm`, :func:`heldout_score`,
  :func:`default_prefixes`, and the records a run writes and prints: :class:`EpochMetrics`,
  :class:`TrainResult`, :func:`format_epoch`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from charlstm.config import TrainConfig
from charlstm.data.corpus import Vocab
from charlstm.data.training_data import TrainingData
from charlstm.eval.scoring import HISTORY, EvalResult, score_heldout
from charlstm.model import CharLSTM, State
from charlstm.ngram.mixture import NgramMixture
from charlstm.ngram.teacher import NgramTeacher
from charlstm.storage import checkpoint as ckpt
from charlstm.training import distributed

DEFAULT_PREFIXES = ("分开", "不分开")


def as_tensor(indices: Any) -> torch.Tensor:
    """Indices (a tensor, or a NumPy array / memmap of any integer type) as int64."""
    if isinstance(indices, torch.Tensor):
        return indices.long()
    return torch.from_numpy(np.asarray(indices).astype(np.int64))


def heldout_score(
    data: TrainingData,
    model: CharLSTM,
    max_chars: int = 0,
    mixture: NgramMixture | None = None,
    world: distributed.World | None = None,
) -> EvalResult:
    """Score the held-out part (its first ``max_chars`` characters; 0: all of it); with
    a distributed ``world`` the ranks score parts of it and agree on the figure."""
    val = data.val[:max_chars] if max_chars else data.val
    history = as_tensor(data.train[-HISTORY:])
    return score_heldout(model, history, as_tensor(val), mixture, world=world)


def default_prefixes(vocab: Vocab, text: str) -> list[str]:
    """分开 and 不分开 where the vocabulary has them, else the text's first word."""
    chosen = [p for p in DEFAULT_PREFIXES if not vocab.missing(p)]
    if chosen:
        return chosen
    words = text.strip().split()
    return [(words[0] if words else text[:1])[:8]]


#: Devices whose parameters torch's fused optimizer kernels update (one kernel for all the
#: arithmetic of a step instead of a dozen elementwise passes per parameter).
FUSED_DEVICES = ("cpu", "cuda")


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The run's optimizer, ``fused`` where torch has the kernel: the same update, for Adam
    over a one-hot model's 1.6 M parameters 1.3 ms a step on one CPU thread instead of 4.0
    (docs/benchmarks.md). A checkpoint records the setting with its parameter groups, so a
    resumed run keeps the update it started with."""
    kind = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    params = list(model.parameters())
    fused = all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)
    return kind[config.optimizer](
        params, lr=config.lr, weight_decay=config.weight_decay, fused=fused
    )


def gradient_norm(parameters: Iterable[nn.Parameter]) -> torch.Tensor:
    """The global L2 norm of the gradients: what :func:`torch.nn.utils.clip_grad_norm_`
    returns, for a step that does not clip (``clip`` 0)."""
    norms = [torch.linalg.vector_norm(p.grad) for p in parameters if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


@dataclass
class EpochMetrics:
    """One line of ``metrics.jsonl``: one held-out score (each epoch, or each --eval-every
    steps; ``epoch`` is then the epoch in progress)."""

    epoch: int
    step: int
    train_loss: float
    train_ppl: float
    val_loss: float | None
    val_ppl: float | None
    lr: float
    seconds: float
    chars_per_sec: float
    best: bool = False


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint so a resume continues exactly.

    The position follows from the step: ``epoch, batch = divmod(step, per_epoch)`` (the
    completed epochs, and the next batch of the epoch in progress).
    """

    per_epoch: int  # batches per epoch
    step: int = 0  # optimizer steps so far
    best_val_loss: float = math.inf
    loss_sum: float = 0.0  # since the last held-out score: summed loss over targets
    chars: int = 0  # since the last held-out score: targets seen
    bad_epochs: int = 0  # held-out scores since the loss last improved
    lr_scale: float = 1.0  # reduce-on-plateau factor
    seconds: float = 0.0  # since the last held-out score: training time
    total_seconds: float = 0.0  # whole run until the last held-out score: training time
    carry: State | None = None  # consecutive sampling: state after the last batch

    @property
    def epoch(self) -> int:
        return self.step // self.per_epoch

    @property
    def batch(self) -> int:
        return self.step % self.per_epoch

    @property
    def trained_seconds(self) -> float:
        return self.total_seconds + self.seconds

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("per_epoch", "step", "best_val_loss", "carry"):
            data.pop(key)
        data["carry"] = None if self.carry is None else [t.cpu() for t in self.carry]
        return data

    @classmethod
    def from_checkpoint(cls, checkpoint: ckpt.Checkpoint, per_epoch: int) -> Progress:
        extra = dict(checkpoint.progress)
        carry = extra.pop("carry", None)
        known = {k: v for k, v in extra.items() if k in cls.__dataclass_fields__}
        return cls(
            per_epoch=per_epoch,
            step=checkpoint.step,
            best_val_loss=checkpoint.best_val_loss,
            carry=None if carry is None else (carry[0], carry[1]),
            **known,
        )


@dataclass
class TrainResult:
    run_dir: Path
    metrics: list[EpochMetrics] = field(default_factory=list)
    stopped_early: bool = False  # by --patience, --time-limit or --max-steps (the log says)
    best_val_loss: float = math.inf

    @property
    def final(self) -> EpochMetrics | None:
        return self.metrics[-1] if self.metrics else None

    def summary(self) -> str:
        text = f"done: {self.run_dir}/best.pt"
        if self.best_val_loss < math.inf:
            ppl = math.exp(min(self.best_val_loss, 700.0))  # a diverged loss can overflow exp
            text += f" (held-out perplexity {ppl:.2f})" if ppl < 1e6 else f" ({ppl:.3g})"
        return text + f"; generate with: charlstm generate --checkpoint {self.run_dir} --prefix ..."


@dataclass
class Schedule:
    """The learning rate at a step: constant, or a cosine from ``lr`` down to 5 % of it over
    ``total_steps`` — or over ``minutes`` of training, whichever end first, so that a run
    cut short by the clock still ends annealed. Plateau halving is ``Progress.lr_scale``."""

    lr: float
    kind: str
    total_steps: int
    minutes: float = 0.0

    def __call__(self, p: Progress) -> float:
        base = self.lr * p.lr_scale
        if self.kind != "cosine":
            return base
        done = min(p.step, self.total_steps) / max(1, self.total_steps)
        if self.minutes:
            done = max(done, min(1.0, p.trained_seconds / (60 * self.minutes)))
        return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done)))


class WeightAverage:
    """An exponential moving average of a model's weights (Polyak averaging, ``--ema``).

    After optimizer step ``s`` (0-based) ``average += (1 - d) * (weights - average)`` with
    the decay warming up as ``d = min(decay, (1 + s) / (10 + s))``, so that the first steps'
    average follows the weights rather than the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model, self.decay = model, decay
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def update(self, step: int) -> None:
        weight = 1.0 - min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for key, value in self.model.state_dict().items():
                if value.is_floating_point():  # not the adaptive softmax's class order
                    self.weights[key].lerp_(value, weight)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Inside the block the model holds the averaged weights."""
        trained = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.weights)
        try:
            yield
        finally:
            self.model.load_state_dict(trained)


class TrainingLoss:
    """The loss a step descends, and the true (unsmoothed) loss it reports.

    Label smoothing keeps ``1 - s`` on the target and spreads ``s`` evenly (as
    ``cross_entropy(label_smoothing=s)``); the n-gram teacher then supplies ``weight`` of
    each target as its own distribution (:mod:`charlstm.ngram.teacher`). An adaptive softmax
    has neither, and computes its loss without the whole distribution.
    """

    def __init__(self, smoothing: float, teacher: NgramTeacher | None, weight: float) -> None:
        self.smoothing, self.teacher, self.weight = smoothing, teacher, weight

    def __call__(
        self,
        model: CharLSTM,
        x: torch.Tensor,
        y: torch.Tensor,
        state: State | None,
        positions: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        if model.config.softmax == "adaptive":
            true_loss, state = model.nll(x, y, state)
            return true_loss, true_loss, state
        logits, state = model(x, state)  # (T, N, V)
        log_probs = torch.log_softmax(logits.flatten(0, 1), dim=-1)  # one softmax for all terms
        true_loss = nn.functional.nll_loss(log_probs, y.flatten())
        loss = true_loss
        if self.smoothing:
            s = self.smoothing
            loss = (1 - s) * true_loss - s * log_probs.mean(dim=-1).mean()
        if self.teacher is not None:
            assert positions is not None, "the n-gram teacher needs the targets' positions"
            soft = self.teacher.cross_entropy(log_probs, positions.flatten()).mean()
            loss = (1 - self.weight) * loss + self.weight * soft
        return loss, true_loss, state


class LossStep(nn.Module):
    """A training step's forward as one module (the model and its :class:`TrainingLoss`):
    what ``DistributedDataParallel`` wraps, so that it sees the whole step, whichever
    method of the model (``forward``, ``nll``) the loss calls."""

    def __init__(self, model: CharLSTM, loss: TrainingLoss) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        state: State | None,
        positions: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        return self.loss(self.model, x, y, state, positions)


def data_parallel(module: nn.Module, world: distributed.World, device: torch.device) -> nn.Module:
    """``module`` wrapped in ``DistributedDataParallel`` when the job has several processes:
    its backward averages the gradients over the ranks (before any clipping)."""
    if not world.distributed:
        return module
    return nn.parallel.DistributedDataParallel(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        # an adaptive softmax's tail clusters may have no targets in one rank's share
        find_unused_parameters=getattr(module, "model", module).config.softmax == "adaptive",
    )


def scores(config: TrainConfig) -> str:
    """What one held-out score follows: an epoch, or --eval-every steps."""
    return f"scores (every {config.eval_every} steps)" if config.eval_every else "epochs"


@dataclass
class StopRules:
    """When a run ends: returns the reason to stop (a line for the log), or None."""

    config: TrainConfig

    def out_of_budget(self, p: Progress) -> str | None:
        """Checked after every step: --max-steps and --time-limit."""
        c = self.config
        if c.max_steps and p.step >= c.max_steps:
            return f"step limit: {p.step:,} optimizer steps (--max-steps {c.max_steps})"
        if c.time_limit and p.trained_seconds >= 60 * c.time_limit:
            return (
                f"time limit: {p.trained_seconds / 60:.1f} minutes of training (--time-limit "
                f"{c.time_limit:g}); resume with a larger --time-limit to go on"
            )
        return None

    def after_score(self, p: Progress) -> str | None:
        """Checked after every held-out score: --epochs and --patience."""
        c = self.config
        if p.epoch >= c.epochs:
            return ""
        if p.bad_epochs and c.patience and p.bad_epochs >= c.patience:
            return (
                f"early stop: held-out loss has not improved for {p.bad_epochs} {scores(c)} "
                f"(--patience {c.patience}); best.pt holds the best model"
            )
        return None


def _ppl(value: float | None) -> str:
    if value is None:
        return "     n/a"
    return f"{value:8.2f}" if value < 1e6 else f"{value:8.2e}"


def format_epoch(m: EpochMetrics, epochs: int) -> str:
    val = f"held-out ppl {_ppl(m.val_ppl)}"
    mark = " *" if m.best and m.val_ppl is not None else ""
    return (
        f"epoch {m.epoch:3d}/{epochs}  step {m.step:,}  train ppl {_ppl(m.train_ppl)}  {val}  "
        f"lr {m.lr:.3g}  {m.seconds:5.1f}s  {m.chars_per_sec:,.0f} chars/s{mark}"
    )

"""The training loop: batches in, clipped gradient steps, perplexity out.

The loop knows nothing about a particular model (anything with the
``forward(x, state) -> (logits, state)`` / ``init_state(N)`` interface trains)::

    while not stopped:
        for each batch until the next held-out score (an epoch's end, or --eval-every steps):
            loss = training_loss(batch); clip; step; average; log the step
        score the held-out text; write best.pt / last.pt; samples; stop rules

Its parts are built outside the loop and passed in or made small here: the learning-rate
:class:`Schedule`, the :class:`WeightAverage` (Polyak averaging, ``--ema``), the
:class:`TrainingLoss` (label smoothing, the n-gram teacher), the :class:`StopRules`
(``--epochs``, ``--max-steps``, ``--time-limit``, ``--patience``) and the
:class:`~charlstm.training.progress.ProgressMeter`. A checkpoint can also be written every
``checkpoint_every`` optimizer steps, and is always written when the run is interrupted
(SIGINT / SIGTERM), so a run directory is resumable at any step.

With ``ema`` the checkpoint's ``model`` is the average (what is scored, sampled and used),
and its ``training_model`` the trained weights, so that a resume continues exactly.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from charlstm.config import DataConfig, ModelConfig, TrainConfig
from charlstm.data.batching import check_length, make_batches
from charlstm.data.corpus import Corpus, Vocab, split_point
from charlstm.device import resolve_device
from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError
from charlstm.generation.sample import generate
from charlstm.generation.scoring import HISTORY, EvalResult, score_heldout
from charlstm.generation.settings import SamplingConfig
from charlstm.model import CharLSTM, State, build_model, detach_state
from charlstm.ngram.mixture import NgramMixture
from charlstm.ngram.teacher import NgramTeacher
from charlstm.storage import checkpoint as ckpt
from charlstm.storage import runs
from charlstm.training import distributed
from charlstm.training.progress import ProgressMeter

DEFAULT_PREFIXES = ("分开", "不分开")
#: Warn (once per streak) when held-out loss has not improved for this many scores.
OVERFIT_WARNING_EPOCHS = 3
#: Characters counted at a time (a memmap's counts never need the whole text in memory).
COUNT_CHUNK = 1 << 24

Log = Callable[[str], None]


class TrainingInterrupted(CharLSTMError):
    """Raised after SIGINT/SIGTERM once ``last.pt`` holds the state of the last step."""

    def __init__(self, signum: int, run_dir: Path) -> None:
        name = signal.Signals(signum).name
        super().__init__(
            f"{name}: training stopped, state saved in {run_dir / runs.LAST}; continue with: "
            f"charlstm train --resume {run_dir}",
            exit_code=128 + signum,
        )
        self.signum = signum


class NonFiniteLoss(CharLSTMError):
    pass


def as_tensor(indices: Any) -> torch.Tensor:
    """Indices (a tensor, or a NumPy array / memmap of any integer type) as int64."""
    if isinstance(indices, torch.Tensor):
        return indices.long()
    return torch.from_numpy(np.asarray(indices).astype(np.int64))


@dataclass
class TrainingData:
    """What a run reads: the vocabulary, the training and held-out indices (tensors or
    NumPy memmaps), the text's SHA-256, and a way back to the training text."""

    vocab: Vocab
    train: Any  # (n_train,) indices
    val: Any  # (n_val,) indices
    fingerprint: str
    # train_text(limit=None): the training part as text (the n-gram features fit on it),
    # or its first ``limit`` characters
    train_text: Callable[..., str]
    train_counts: np.ndarray | None = None  # (V,) counts() when known (a prepared corpus)

    @classmethod
    def from_corpus(cls, corpus: Corpus, val_fraction: float) -> TrainingData:
        cut = split_point(len(corpus), val_fraction)
        return cls(
            corpus.vocab,
            corpus.indices[:cut],
            corpus.indices[cut:],
            corpus.fingerprint(),
            lambda limit=None: corpus.text[: cut if limit is None else min(cut, limit)],
        )

    def __len__(self) -> int:
        return len(self.train) + len(self.val)

    def counts(self) -> np.ndarray:
        """How often each vocabulary character occurs in the training part (V,)."""
        if self.train_counts is not None:  # without reading (and mapping) all of it
            return self.train_counts.copy()
        total = np.zeros(len(self.vocab), dtype=np.int64)
        for start in range(0, len(self.train), COUNT_CHUNK):
            chunk = np.asarray(self.train[start : start + COUNT_CHUNK])
            total += np.bincount(chunk, minlength=len(self.vocab))
        return total

    def score_heldout(
        self,
        model: CharLSTM,
        max_chars: int = 0,
        mixture: NgramMixture | None = None,
        world: distributed.World | None = None,
    ) -> EvalResult:
        """Score the held-out part (its first ``max_chars`` characters; 0: all of it); with
        a distributed ``world`` the ranks score parts of it and agree on the figure."""
        val = self.val[:max_chars] if max_chars else self.val
        history = as_tensor(self.train[-HISTORY:])
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
    """Where training stands; saved in every checkpoint so a resume continues exactly."""

    epoch: int = 0  # completed epochs
    batch: int = 0  # next batch of epoch ``epoch``
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
    def trained_seconds(self) -> float:
        return self.total_seconds + self.seconds

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("epoch", "batch", "step", "best_val_loss", "carry"):
            data.pop(key)
        data["carry"] = None if self.carry is None else [t.cpu() for t in self.carry]
        return data

    @classmethod
    def from_checkpoint(cls, checkpoint: ckpt.Checkpoint) -> Progress:
        extra = dict(checkpoint.progress)
        carry = extra.pop("carry", None)
        known = {k: v for k, v in extra.items() if k in cls.__dataclass_fields__}
        return cls(
            epoch=checkpoint.epoch,
            batch=checkpoint.batch,
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


@contextmanager
def _stop_on_signals(flag: dict[str, int | None]) -> Iterator[None]:
    """SIGINT/SIGTERM set ``flag['signum']``; the loop saves and stops after the current step.

    A second SIGINT while stopping raises ``KeyboardInterrupt`` at once.
    """

    def handler(signum: int, frame: object) -> None:
        if flag["signum"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["signum"] = signum

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave the default handlers
        pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Trainer:
    """Trains one model on one corpus into one run directory.

    The n-gram ``teacher`` and ``mixture`` are built by the caller (they depend on the
    training text only); ``resume`` restores weights, optimizer, progress and RNG.
    """

    def __init__(
        self,
        data: TrainingData,
        model_config: ModelConfig,
        train_config: TrainConfig,
        data_config: DataConfig,
        run_dir: Path,
        *,
        resume: ckpt.Checkpoint | None = None,
        init_weights: dict[str, torch.Tensor] | None = None,
        teacher: NgramTeacher | None = None,
        mixture: NgramMixture | None = None,
        log: Log = print,
        progress_bar: bool | None = None,
        on_step: Callable[[Trainer], None] | None = None,
    ) -> None:
        self.data, self.vocab = data, data.vocab
        self.model_config, self.config, self.data_config = model_config, train_config, data_config
        self.run_dir = Path(run_dir)
        self.world = world = distributed.setup()  # one process without torchrun
        if not world.main:  # rank 0 alone prints
            log, progress_bar = distributed.silent, False
        self.log, self.progress_bar, self.on_step = log, progress_bar, on_step
        self.device = resolve_device(self.config.device, world)
        config = self.config
        if config.batch_size % world.size:
            raise SettingError(
                f"{{batch_size}} {config.batch_size} is not a multiple of the {world.size} "
                "processes torchrun started: it is the global batch, split evenly between them"
            )
        self.has_val = len(data.val) > 0 and config.val_fraction > 0
        check_length(
            len(data.train),
            config.batch_size,
            config.num_steps,
            what="training text" if self.has_val else "corpus",
        )
        self.batches = make_batches(
            data.train,
            config.batch_size,
            config.num_steps,
            config.sampling,
            config.seed,
            world.rank,
            world.size,
        )
        self.prefixes = list(config.prefixes) or default_prefixes(
            data.vocab,
            data.train_text(200),  # not all of a prepared corpus
        )
        self.teacher = None if teacher is None else teacher.to(self.device)
        self.mixture = mixture
        self.loss = TrainingLoss(config.label_smoothing, self.teacher, config.teacher_weight)
        total = config.epochs * len(self.batches)
        self.schedule = Schedule(
            config.lr, config.schedule, min(total, config.max_steps or total), config.time_limit
        )
        self.stop_rules = StopRules(config)

        torch.manual_seed(config.seed)
        self.model: CharLSTM = build_model(self.model_config)
        if init_weights is not None:
            self.model.load_state_dict(init_weights)
        elif self.model_config.softmax == "adaptive" and resume is None:
            self.model.set_class_order(data.counts())  # its clusters follow the frequencies
        self.model.to(self.device)
        self.loss_step = data_parallel(LossStep(self.model, self.loss), world, self.device)
        self.optimizer = make_optimizer(self.model, config)
        self.average = WeightAverage(self.model, config.ema) if config.ema else None
        self.progress = Progress()
        self.step_log = runs.StepLog(self.run_dir)  # steps.jsonl: loss of every step
        if resume is not None:
            self._restore(resume)

    def describe(self) -> str:
        """One line: what trains, on what, where."""
        m, data = self.model_config, self.data
        return (
            f"run {self.run_dir}: {m.backend} LSTM {m.num_layers}x{m.hidden_size}, "
            f"{self.model.num_parameters():,} parameters, vocabulary {m.vocab_size}, "
            f"{len(data.train):,} training / {len(data.val):,} held-out characters, "
            f"{len(self.batches)} batches per epoch, device {self.device}"
            + (f", {self.world.size} processes (torchrun)" if self.world.distributed else "")
        )

    # -- state -----------------------------------------------------------------------------

    def _restore(self, checkpoint: ckpt.Checkpoint) -> None:
        trained = checkpoint.training_model  # set when trained with --ema: model is the average
        self.model.load_state_dict(trained if trained is not None else checkpoint.model)
        if self.average is not None:
            self.average.weights = {
                k: v.to(self.device).clone() for k, v in checkpoint.model.items()
            }
        if checkpoint.optimizer is not None:
            self.optimizer.load_state_dict(checkpoint.optimizer)
        for group in self.optimizer.param_groups:  # --lr may change on resume
            group["initial_lr"] = self.config.lr
        self.progress = Progress.from_checkpoint(checkpoint)
        carry = self.progress.carry  # all N rows: this rank carries its share
        if carry is not None:
            if carry[0].shape[1] != self.config.batch_size:
                raise CharLSTMError(
                    f"the checkpoint carries {carry[0].shape[1]} rows of hidden state, not "
                    f"--batch-size {self.config.batch_size}"
                )
            self.progress.carry = (self.world.rows(carry[0]), self.world.rows(carry[1]))
        ckpt.restore_rng(checkpoint.rng)

    def checkpoint(self) -> ckpt.Checkpoint:
        trained = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        average = (
            None if self.average is None else {k: v.cpu() for k, v in self.average.weights.items()}
        )
        p = self.progress
        return ckpt.Checkpoint(
            model_config=self.model_config,
            train_config=self.config,
            data_config=self.data_config,
            vocab=self.vocab,
            model=trained if average is None else average,
            training_model=None if average is None else trained,
            optimizer=self.optimizer.state_dict(),
            rng=ckpt.capture_rng(),
            epoch=p.epoch,
            batch=p.batch,
            step=p.step,
            best_val_loss=p.best_val_loss,
            progress=p.to_dict(),
            ngram_text=None if self.mixture is None else self.mixture.text,
            corpus_sha256=self.data.fingerprint,
        )

    def save(self, *names: str) -> None:
        """Write the current state as each of ``names`` (default ``last.pt``): serialised
        and written once, however many names (the others are hard links to it, see
        :func:`charlstm.storage.checkpoint.save_as`)."""
        self.step_log.flush()  # the log covers at least the steps the checkpoint holds
        ckpt.save_as(self.checkpoint(), [self.run_dir / name for name in names or (runs.LAST,)])

    def _save(self, *names: str) -> None:
        """:meth:`save` at a point every rank reaches: the carried state of all rows is
        gathered (a collective), then rank 0 alone writes."""
        local = self.progress.carry
        if local is not None and self.world.distributed:
            self.progress.carry = (
                distributed.gather_rows(self.world, local[0]),
                distributed.gather_rows(self.world, local[1]),
            )
        try:
            if self.world.main:
                self.save(*names)
        finally:
            self.progress.carry = local

    def _stopping(self, flag: dict[str, int | None]) -> bool:
        """Whether any rank got SIGINT / SIGTERM (agreed by all: they stop together)."""
        _, flag["signum"] = distributed.agree(self.world, [], flag["signum"])
        return flag["signum"] is not None

    @contextmanager
    def averaged(self) -> Iterator[None]:
        """Inside the block the model holds the averaged weights (unchanged without --ema)."""
        if self.average is None:
            yield
        else:
            with self.average.applied():
                yield

    def current_lr(self) -> float:
        return self.schedule(self.progress)

    # -- one step ----------------------------------------------------------------------------

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, state: State | None, positions: torch.Tensor | None
    ) -> tuple[float, State]:
        """One optimizer step on batch ``(x, y)``; ``positions`` (T, N) locate ``y`` in the
        training text for the n-gram teacher. Returns the batch's true (unsmoothed) loss
        (under torchrun: this rank's share's; the loop agrees on the global one)."""
        # dropout masks: by (seed, step), for the whole global batch; this rank keeps its rows,
        # so any number of processes (and a resume on another) takes one process's steps
        size = self.config.batch_size
        seed = (self.config.seed * 1_000_003 + self.progress.step) * 4099 % 2**64
        self.model.seed_masks(seed, self.world.share(size), size)
        loss, true_loss, state = self.loss_step(x, y, state, positions)
        value = true_loss.item()
        if not self.world.distributed:  # else checked on the agreed loss, by every rank
            self._check_finite(value)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip)
        self.optimizer.step()
        return value, state

    def _check_finite(self, value: float) -> None:
        if not math.isfinite(value):
            last = self.run_dir / runs.LAST
            raise NonFiniteLoss(
                f"loss became {value} at step {self.progress.step + 1} (epoch "
                f"{self.progress.epoch + 1}); the last good checkpoint is {last}; resume it with "
                f"a lower --lr or a smaller --clip: charlstm train --resume {self.run_dir} "
                f"--lr ... (if it diverges again, resume from {self.run_dir / runs.BEST})"
            )

    def _train_until_score(self, flag: dict[str, int | None], meter: ProgressMeter) -> str | None:
        """Steps until the next held-out score is due (the end of an epoch, or with
        --eval-every every N steps) or a budget runs out (then its reason is returned)."""
        p, config = self.progress, self.config
        self.model.train()
        start = time.perf_counter() - p.seconds
        while True:
            if p.batch >= len(self.batches):  # a checkpoint written after an epoch's last step
                p.epoch, p.batch, p.carry = p.epoch + 1, 0, None
                if not config.eval_every or p.epoch >= config.epochs:
                    return None
            self.batches.set_epoch(p.epoch)
            carry = self.batches.carries_state
            state: State | None = None
            if carry and p.carry is not None:
                state = (p.carry[0].to(self.device), p.carry[1].to(self.device))
            for index in range(p.batch, len(self.batches)):
                x, y = (t.to(self.device) for t in self.batches[index])
                positions = None
                if self.teacher is not None:
                    positions = self.batches.positions(index).to(self.device)
                lr = self.schedule(p)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss, state = self.train_step(x, y, state if carry else None, positions)
                state = detach_state(state)
                p.seconds = time.perf_counter() - start
                if self.world.distributed:  # the global loss, one clock, any rank's signal
                    (loss, p.seconds), flag["signum"] = distributed.agree(
                        self.world, [loss, p.seconds], flag["signum"]
                    )
                    self._check_finite(loss)
                if self.average is not None:
                    self.average.update(p.step)
                p.step, p.batch = p.step + 1, index + 1
                p.loss_sum += loss * y.numel() * self.world.size  # equal shares
                p.chars += y.numel() * self.world.size
                p.carry = state if carry else None
                if self.world.main:
                    self.step_log.write(p.step, p.epoch + 1, p.batch, loss, lr)
                if p.batch == len(self.batches):  # the epoch is done
                    p.epoch, p.batch, p.carry = p.epoch + 1, 0, None
                meter.update(p, loss, lr)
                if self.on_step is not None:
                    self.on_step(self)
                if flag["signum"] is not None:
                    self._save()
                    raise TrainingInterrupted(flag["signum"], self.run_dir)
                if config.checkpoint_every and p.step % config.checkpoint_every == 0:
                    self._save()
                reason = self.stop_rules.out_of_budget(p)
                if reason is not None:
                    return reason
                if p.batch == 0 and (not config.eval_every or p.epoch >= config.epochs):
                    return None  # an epoch's end is scored, unless --eval-every says when
                if config.eval_every and p.step % config.eval_every == 0:
                    return None

    # -- held-out score, logs, checkpoints, samples --------------------------------------------

    def _score(self) -> EpochMetrics:
        """Score the held-out text and close the interval of training since the last score."""
        p = self.progress
        train_loss = p.loss_sum / max(p.chars, 1)
        val_loss = None
        if self.has_val:
            with self.averaged():
                val_loss = self.data.score_heldout(
                    self.model, self.config.eval_chars, self.mixture, self.world
                ).loss
        improved = val_loss is not None and val_loss < p.best_val_loss
        if improved:
            p.best_val_loss, p.bad_epochs = val_loss, 0
        elif val_loss is not None:
            p.bad_epochs += 1
            if self.config.schedule == "plateau":
                p.lr_scale *= 0.5
        metrics = EpochMetrics(
            epoch=p.epoch if p.batch == 0 else p.epoch + 1,
            step=p.step,
            train_loss=train_loss,
            train_ppl=math.exp(min(train_loss, 700)),
            val_loss=val_loss,
            val_ppl=None if val_loss is None else math.exp(min(val_loss, 700)),
            lr=self.schedule(p),
            seconds=p.seconds,
            chars_per_sec=p.chars / max(p.seconds, 1e-9),
            best=improved or val_loss is None,
        )
        p.total_seconds += p.seconds
        p.loss_sum, p.chars, p.seconds = 0.0, 0, 0.0
        return metrics

    def _record(self, metrics: EpochMetrics) -> None:
        if self.world.main:
            runs.append_metrics(self.run_dir, asdict(metrics))
        self._save(runs.BEST, runs.LAST) if metrics.best else self._save(runs.LAST)
        if not self.world.main:
            return
        self.log(format_epoch(metrics, self.config.epochs))
        every, eval_every = self.config.sample_every, self.config.eval_every
        count = metrics.step // eval_every if eval_every else metrics.epoch  # scores so far
        if every and count % every == 0:
            for text in self.sample().values():
                self.log("  " + text.replace("\n", " / "))
        p = self.progress
        if p.bad_epochs == OVERFIT_WARNING_EPOCHS and not self.config.patience:
            self.log(
                f"warning: held-out loss has risen for {p.bad_epochs} {scores(self.config)} "
                "while training "
                "loss falls: the model is memorising; best.pt keeps the best model (use "
                "--patience N to stop early, or more dropout)"
            )

    def sample(self, length: int | None = None) -> dict[str, str]:
        """One sample per training prefix, from a generator seeded by (seed, epoch)."""
        with self.averaged():
            texts = generate(
                self.model,
                self.vocab,
                self.prefixes,
                length=length or self.config.sample_length,
                config=SamplingConfig(temperature=0.8, top_k=None),
                seed=self.config.seed * 7919 + self.progress.epoch,
                mixture=self.mixture,
            )
        self.model.train()
        return {p: p + sample[0] for p, sample in zip(self.prefixes, texts, strict=True)}

    # -- the whole run -----------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train until ``epochs`` / ``max_steps`` (totals, counting steps before a resume),
        the time limit, or an early stop.

        Under torchrun every rank trains its share; a stop or a failure all ranks met alike
        is rank 0's line (the others leave quietly with its exit code)."""
        try:
            return self._fit()
        except (TrainingInterrupted, NonFiniteLoss) as err:
            distributed.leave_quietly(self.world, err)
            raise
        except RuntimeError as err:
            if not (self.world.distributed and distributed.lost_peer(err)):
                raise
            raise CharLSTMError(  # another rank died or hung: the collective broke
                f"rank {self.world.rank} lost contact with another process of the job at step "
                f"{self.progress.step + 1} (torchrun's report names the rank that failed); the "
                f"last good checkpoint is {self.run_dir / runs.LAST}: continue with the same "
                f"torchrun command and --resume {self.run_dir}",
                exit_code=1,
            ) from err

    def _fit(self) -> TrainResult:
        p = self.progress
        result = TrainResult(run_dir=self.run_dir)
        flag: dict[str, int | None] = {"signum": None}
        meter = ProgressMeter(self.config, len(self.batches), self.log, self.progress_bar)
        if p.step == 0 and p.epoch == 0:
            self._save()  # resumable from the very start
        with _stop_on_signals(flag), closing(self.step_log), closing(meter):
            reason: str | None = None
            while reason is None:
                try:
                    budget = self._train_until_score(flag, meter)
                except RuntimeError as err:  # numerical or memory failure inside torch
                    if self.world.distributed and distributed.lost_peer(err):
                        raise
                    raise CharLSTMError(
                        f"training failed at step {p.step + 1}: {_first_line(err)}; the last "
                        f"good checkpoint is {self.run_dir / runs.LAST}"
                    ) from err
                meter.pause()
                metrics = self._score()
                result.metrics.append(metrics)
                self._record(metrics)
                if self._stopping(flag):
                    raise TrainingInterrupted(flag["signum"], self.run_dir)
                reason = budget if budget is not None else self.stop_rules.after_score(p)
            if reason:
                self.log(reason)
                result.stopped_early = True
        result.best_val_loss = p.best_val_loss
        return result


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else repr(err)


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

"""The training loop: batches in, clipped gradient steps, perplexity out.

The loop knows nothing about a particular model (anything with the
``forward(x, state) -> (logits, state)`` / ``init_state(N)`` interface trains). Everything it
uses is built before it starts (:func:`charlstm.training.setup.build_trainer`) and held by
the :class:`Trainer`; :meth:`Trainer.run_loop` reads on one screen::

    while True:
        one optimizer step on batch (epoch, batch) = divmod(step, batches per epoch)
        save when due; stop on a signal
        when a held-out score is due (an epoch's end, or every eval_every steps) or a
        budget runs out: score, write best.pt / last.pt, print samples, apply the stop rules

A checkpoint can also be written every ``checkpoint_every`` optimizer steps, and is always
written when the run is interrupted (SIGINT / SIGTERM), so a run directory is resumable at
any step. Rank 0 logs every step to ``steps.jsonl``, every score to ``metrics.jsonl`` and,
with ``tensorboard``, both to ``RUN/tensorboard/`` (:mod:`charlstm.storage.board`). With
``ema`` the checkpoint's ``model`` is the average (what is scored, sampled and used), and its
``training_model`` the trained weights, so that a resume continues exactly.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from charlstm.config import DataConfig, ModelConfig, TrainConfig
from charlstm.data.batching import ConsecutiveBatches, RandomBatches
from charlstm.data.corpus import Vocab
from charlstm.data.training_data import TrainingData
from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError
from charlstm.generation.sample import generate
from charlstm.generation.settings import SamplingConfig
from charlstm.model import CharLSTM, State, detach_state
from charlstm.ngram.mixture import NgramMixture
from charlstm.ngram.teacher import NgramTeacher
from charlstm.storage import checkpoint as ckpt
from charlstm.storage import runs
from charlstm.storage.board import Board
from charlstm.training import distributed
from charlstm.training.parts import (
    EpochMetrics,
    Progress,
    Schedule,
    StopRules,
    TrainResult,
    WeightAverage,
    format_epoch,
    gradient_norm,
    heldout_score,
    scores,
)
from charlstm.training.progress import ProgressMeter

#: Warn (once per streak) when held-out loss has not improved for this many scores.
OVERFIT_WARNING_EPOCHS = 3

Log = Callable[[str], None]
# {"signum": the stop signal this process got, or None; "agreed": the one every rank acts on}
Signal = dict[str, "int | None"]


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


class NonFiniteLoss(SettingError):
    """The loss became inf or NaN: a learning rate too high for the run, or no clipping."""


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


@dataclass(eq=False)
class Trainer:
    """Trains one model on one corpus into one run directory: the parts
    :func:`~charlstm.training.setup.build_trainer` built, and the loop that uses them."""

    data: TrainingData
    model_config: ModelConfig
    config: TrainConfig
    run_dir: Path
    world: distributed.World
    device: torch.device
    batches: ConsecutiveBatches | RandomBatches  # this rank's share of each batch
    model: CharLSTM
    loss_step: nn.Module  # the model and its TrainingLoss, in DDP under torchrun
    optimizer: torch.optim.Optimizer
    average: WeightAverage | None  # ema
    schedule: Schedule
    stop_rules: StopRules
    progress: Progress
    step_log: runs.StepLog  # steps.jsonl: the loss of every step
    prefixes: list[str]  # training samples continue these
    teacher: NgramTeacher | None = None
    mixture: NgramMixture | None = None
    board: Board | None = None  # RUN/tensorboard (tensorboard, on rank 0)
    log: Log = print
    progress_bar: bool | None = None
    on_step: Callable[[Trainer], None] | None = None

    @property
    def vocab(self) -> Vocab:
        return self.data.vocab

    @property
    def data_config(self) -> DataConfig:
        return self.data.config

    @property
    def has_val(self) -> bool:
        return len(self.data.val) > 0 and self.config.val_fraction > 0

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

    # -- state --------------------------------------------------------------------------------

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
        self.step_log.flush()  # the logs cover at least the steps the checkpoint holds
        if self.board is not None:
            self.board.flush()
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

    def _stopping(self, flag: Signal) -> bool:
        """Whether any rank got SIGINT / SIGTERM (agreed by all: they stop together)."""
        _, flag["agreed"] = distributed.agree(self.world, [], flag["signum"])
        flag["signum"] = flag["signum"] or flag["agreed"]
        return flag["agreed"] is not None

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
    ) -> tuple[float, float, State]:
        """One optimizer step on batch ``(x, y)``; ``positions`` (T, N) locate ``y`` in the
        training text for the n-gram teacher. Returns the batch's true (unsmoothed) loss
        (under torchrun: this rank's share's; the loop agrees on the global one), the
        gradient's global norm before clipping (the whole batch's: DDP has averaged the
        gradients) and the state."""
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
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip)
        else:
            norm = gradient_norm(self.model.parameters())
        self.optimizer.step()
        return value, norm.item(), state

    def _check_finite(self, value: float) -> None:
        if not math.isfinite(value):
            last = self.run_dir / runs.LAST
            raise NonFiniteLoss(
                f"loss became {value} at step {self.progress.step + 1} (epoch "
                f"{self.progress.epoch + 1}); the last good checkpoint is {last}; resume it with "
                f"a lower {{lr}} or a smaller {{clip}}: charlstm train --resume {self.run_dir} --lr"
                f" ... (if it diverges again, resume from {self.run_dir / runs.BEST})"
            )

    # -- the loop ----------------------------------------------------------------------------

    def run_loop(self) -> TrainResult:
        """Steps until a stop rule says so; a held-out score, checkpoints and samples when
        one is due."""
        p, config = self.progress, self.config
        result = TrainResult(run_dir=self.run_dir)
        flag: Signal = {"signum": None, "agreed": None}
        meter = ProgressMeter(config, len(self.batches), self.log, self.progress_bar)
        if p.step == 0:
            self._save()  # resumable from the very start
        state: State | None = None
        if p.carry is not None:  # a resume carries the state on
            state = (p.carry[0].to(self.device), p.carry[1].to(self.device))
        clock = time.perf_counter() - p.seconds  # the training time since the last score
        self.model.train()
        board = closing(self.board) if self.board is not None else nullcontext()
        with _stop_on_signals(flag), closing(self.step_log), closing(meter), board:
            while True:
                loss, lr, state = self._step(state, flag, clock)
                meter.update(p, loss, lr)
                if self.on_step is not None:
                    self.on_step(self)
                # under torchrun, never a signal only this rank has seen (see _step)
                signum = flag["agreed"] if self.world.distributed else flag["signum"]
                if signum is not None:
                    self._save()
                    raise TrainingInterrupted(signum, self.run_dir)
                if config.checkpoint_every and p.step % config.checkpoint_every == 0:
                    self._save()
                reason = self.stop_rules.out_of_budget(p)
                if reason is None and not self._score_due():
                    continue
                meter.pause()
                metrics = self._score()
                result.metrics.append(metrics)
                self._record(metrics)
                if self._stopping(flag):
                    raise TrainingInterrupted(flag["agreed"], self.run_dir)
                reason = reason if reason is not None else self.stop_rules.after_score(p)
                if reason is not None:  # the one way out
                    break
                self.model.train()
                clock = time.perf_counter()
            if reason:
                self.log(reason)
                result.stopped_early = True
        result.best_val_loss = p.best_val_loss
        return result

    def _step(self, state: State | None, flag: Signal, clock: float) -> tuple[float, float, State]:
        """One optimizer step on the next batch; the progress moves one step on. Returns the
        (global) loss, the learning rate and the state to carry."""
        p = self.progress
        epoch, batch = divmod(p.step, len(self.batches))
        if batch == 0:  # an epoch begins: its order, and no state carried into it
            state = None
        self.batches.set_epoch(epoch)
        x, y = (t.to(self.device) for t in self.batches[batch])
        positions = None
        if self.teacher is not None:
            positions = self.batches.positions(batch).to(self.device)
        lr = self.schedule(p)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        carry = self.batches.carries_state
        try:
            loss, grad_norm, state = self.train_step(x, y, state if carry else None, positions)
        except RuntimeError as err:  # numerical or memory failure inside torch
            if self.world.distributed and distributed.lost_peer(err):
                raise
            raise CharLSTMError(
                f"training failed at step {p.step + 1}: {_first_line(err)}; the last "
                f"good checkpoint is {self.run_dir / runs.LAST}"
            ) from err
        state = detach_state(state)
        p.seconds = time.perf_counter() - clock
        if self.world.distributed:  # the global loss, one clock, any rank's signal
            # A signal that lands after this agreement waits for the next step's: acting on
            # it at once would leave the other ranks in a collective this one never joins.
            (loss, p.seconds), flag["agreed"] = distributed.agree(
                self.world, [loss, p.seconds], flag["signum"]
            )
            flag["signum"] = flag["signum"] or flag["agreed"]
            self._check_finite(loss)
        if self.average is not None:
            self.average.update(p.step)
        p.step += 1
        p.loss_sum += loss * y.numel() * self.world.size  # equal shares
        p.chars += y.numel() * self.world.size
        p.carry = state if carry and p.batch else None  # none past an epoch's end
        if self.world.main:
            self.step_log.write(p.step, epoch + 1, batch + 1, loss, lr, grad_norm)
            if self.board is not None:
                self.board.step(p.step, loss, lr, grad_norm)
        return loss, lr, state

    def _score_due(self) -> bool:
        """A held-out score follows an epoch's end, or with eval_every every N steps."""
        p, config = self.progress, self.config
        if config.eval_every:
            return p.step % config.eval_every == 0 or (p.batch == 0 and p.epoch >= config.epochs)
        return p.batch == 0

    # -- held-out score, logs, checkpoints, samples --------------------------------------------

    def _score(self) -> EpochMetrics:
        """Score the held-out text and close the interval of training since the last score."""
        p = self.progress
        train_loss = p.loss_sum / max(p.chars, 1)
        val_loss = None
        if self.has_val:
            with self.averaged():
                val_loss = heldout_score(
                    self.data, self.model, self.config.eval_chars, self.mixture, self.world
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
            row = asdict(metrics)
            runs.append_metrics(self.run_dir, row)
            if self.board is not None:
                self.board.score(row)
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
                "while training loss falls: the model is memorising; best.pt keeps the best "
                "model (use --patience N to stop early, or more dropout)"
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
            return self.run_loop()
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


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else repr(err)

"""The training loop: batches in, clipped gradient steps, perplexity out.

The loop knows nothing about a particular model (anything with the
``forward(x, state) -> (logits, state)`` / ``init_state(N)`` interface trains). Held-out
scoring, samples, metrics and checkpoints plug in at the end of each epoch; a checkpoint
can also be written every ``checkpoint_every`` optimizer steps, and is always written
when the run is interrupted (SIGINT / SIGTERM), so a run directory is resumable at any time.

With ``ema`` (Polyak averaging) the trainer also keeps an exponential moving average of the
weights, updated after every optimizer step; held-out scores, samples and the ``model`` of
every checkpoint are the average's, while the checkpoint's ``training_model`` keeps the
trained weights so that a resume continues exactly.
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

import torch
from torch import nn
from tqdm import tqdm

from charlstm import checkpoint as ckpt
from charlstm import runs
from charlstm.batching import check_length, make_batches
from charlstm.config import DataConfig, ModelConfig, TrainConfig
from charlstm.corpus import Corpus, split_point
from charlstm.distill import NgramTeacher
from charlstm.errors import CharLSTMError
from charlstm.evaluate import score_split
from charlstm.mixture import NgramMixture
from charlstm.model import CharLSTM, State, build_model, detach_state
from charlstm.sampling import SamplingConfig, generate

DEFAULT_PREFIXES = ("分开", "不分开")
#: Warn (once per streak) when held-out loss has not improved for this many epochs.
OVERFIT_WARNING_EPOCHS = 3

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


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CharLSTMError("--device cuda: no CUDA GPU is available here; use --device cpu")
    if not (name == "cpu" or name.startswith("cuda")):
        raise CharLSTMError(f"unknown --device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


def default_prefixes(corpus: Corpus) -> list[str]:
    """分开 and 不分开 where the vocabulary has them, else the corpus's first word."""
    chosen = [p for p in DEFAULT_PREFIXES if not corpus.vocab.missing(p)]
    if chosen:
        return chosen
    first = corpus.text.strip().split()[0] if corpus.text.strip() else corpus.text[:1]
    return [first[:8]]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    raise CharLSTMError(f"unknown --optimizer {config.optimizer!r}; choose sgd, adam or adamw")


@dataclass
class EpochMetrics:
    """One line of ``metrics.jsonl``."""

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
    loss_sum: float = 0.0  # this epoch so far: summed loss over targets
    chars: int = 0  # this epoch so far: targets seen
    bad_epochs: int = 0  # epochs since held-out loss last improved
    lr_scale: float = 1.0  # reduce-on-plateau factor
    seconds: float = 0.0  # this epoch so far: training time
    total_seconds: float = 0.0  # whole run so far: training time of finished epochs
    carry: State | None = None  # consecutive sampling: state after the last batch

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
    stopped_early: bool = False  # by --patience or --time-limit (the log says which)

    @property
    def final(self) -> EpochMetrics | None:
        return self.metrics[-1] if self.metrics else None


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
    """Trains one model on one corpus into one run directory."""

    def __init__(
        self,
        corpus: Corpus,
        model_config: ModelConfig,
        train_config: TrainConfig,
        data_config: DataConfig,
        run_dir: Path,
        resume: ckpt.Checkpoint | None = None,
        init_weights: dict[str, torch.Tensor] | None = None,
        log: Log = print,
        progress_bar: bool | None = None,
        on_step: Callable[[Trainer], None] | None = None,
    ) -> None:
        self.corpus = corpus
        self.on_step = on_step  # called after every optimizer step (progress, tests)
        self.model_config = model_config.validate()
        self.config = train_config.validate()
        self.data_config = data_config
        self.run_dir = Path(run_dir)
        self.log = log
        self.progress_bar = progress_bar
        self.device = resolve_device(self.config.device)
        if self.device.type == "cuda":
            # TensorFloat-32 for float32 matrix products, as cuDNN's LSTM already uses.
            torch.backends.cuda.matmul.allow_tf32 = True

        self.fingerprint = corpus.fingerprint()  # recorded so --resume can check the text
        cut = split_point(len(corpus), self.config.val_fraction)
        self.cut = cut
        self.train_indices = corpus.indices[:cut]
        has_val = len(corpus) - cut > 0 and self.config.val_fraction > 0
        self.has_val = has_val
        check_length(
            len(self.train_indices),
            self.config.batch_size,
            self.config.num_steps,
            what="training text" if has_val else "corpus",
        )
        self.batches = make_batches(
            self.train_indices,
            self.config.batch_size,
            self.config.num_steps,
            self.config.sampling,
            self.config.seed,
        )
        self.prefixes = list(self.config.prefixes) or default_prefixes(corpus)
        self.teacher: NgramTeacher | None = None
        text = corpus.text[:cut]  # the training text, for the n-gram teacher and mixture
        if self.config.ngram_teacher:
            started = time.perf_counter()
            self.teacher = NgramTeacher(
                text, corpus.vocab, self.config.ngram_teacher, self.config.teacher_folds
            )
            self.teacher.to(self.device)
            log(
                f"n-gram teacher: Kneser-Ney {self.config.ngram_teacher}-gram, cross-fitted on "
                f"{self.teacher.folds} folds of the training text "
                f"({time.perf_counter() - started:.1f} s)"
            )

        self.mixture: NgramMixture | None = None
        if self.config.ngram_mix:
            self.mixture = NgramMixture(
                text,
                corpus.vocab,
                self.config.ngram_mix,
                self.config.mix_weight,
            )
            log(
                f"the model is the LSTM interpolated with a {self.mixture.describe()}, "
                "fitted on the training text"
            )

        torch.manual_seed(self.config.seed)
        self.model: CharLSTM = build_model(self.model_config)
        if init_weights is not None:
            self.model.load_state_dict(init_weights)
        self.model.to(self.device)
        self.optimizer = make_optimizer(self.model, self.config)
        self.average: dict[str, torch.Tensor] | None = None  # the moving average (--ema)
        if self.config.ema:
            self.average = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.progress = Progress()
        self.step_log = runs.StepLog(self.run_dir)  # steps.jsonl: loss of every step
        if resume is not None:
            self._restore(resume)

    # -- state -----------------------------------------------------------------------------

    def _restore(self, checkpoint: ckpt.Checkpoint) -> None:
        if checkpoint.training_model is not None:  # trained with --ema: model is the average
            self.model.load_state_dict(checkpoint.training_model)
        else:
            self.model.load_state_dict(checkpoint.model)
        if self.average is not None:
            self.average = {k: v.to(self.device).clone() for k, v in checkpoint.model.items()}
        if checkpoint.optimizer is not None:
            self.optimizer.load_state_dict(checkpoint.optimizer)
        for group in self.optimizer.param_groups:  # --lr may change on resume
            group["initial_lr"] = self.config.lr
        self.progress = Progress.from_checkpoint(checkpoint)
        ckpt.restore_rng(checkpoint.rng)

    def checkpoint(self) -> ckpt.Checkpoint:
        trained = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        average = None
        if self.average is not None:
            average = {k: v.cpu() for k, v in self.average.items()}
        return ckpt.Checkpoint(
            model_config=self.model_config,
            train_config=self.config,
            data_config=self.data_config,
            vocab=self.corpus.vocab,
            model=trained if average is None else average,
            training_model=None if average is None else trained,
            optimizer=self.optimizer.state_dict(),
            rng=ckpt.capture_rng(),
            epoch=self.progress.epoch,
            batch=self.progress.batch,
            step=self.progress.step,
            best_val_loss=self.progress.best_val_loss,
            progress=self.progress.to_dict(),
            ngram_text=None if self.mixture is None else self.mixture.text,
            corpus_sha256=self.fingerprint,
        )

    def save(self, name: str = runs.LAST) -> Path:
        self.step_log.flush()  # the log covers at least the steps the checkpoint holds
        return ckpt.save(self.checkpoint(), self.run_dir / name)

    # -- weight averaging ------------------------------------------------------------------

    def _update_average(self) -> None:
        """``average += (1 - d) * (weights - average)`` after optimizer step ``step``.

        The decay warms up as ``min(ema, (1 + step) / (10 + step))``, so the first steps'
        average follows the weights rather than the random initialisation.
        """
        if self.average is None:
            return
        step = self.progress.step
        weight = 1.0 - min(self.config.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for key, value in self.model.state_dict().items():
                self.average[key].lerp_(value, weight)

    @contextmanager
    def averaged(self) -> Iterator[None]:
        """Inside the block the model holds the averaged weights (unchanged without --ema)."""
        if self.average is None:
            yield
            return
        trained = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.average)
        try:
            yield
        finally:
            self.model.load_state_dict(trained)

    # -- schedule --------------------------------------------------------------------------

    def current_lr(self) -> float:
        base = self.config.lr * self.progress.lr_scale
        if self.config.schedule == "cosine":
            total = max(1, self.config.epochs * len(self.batches))
            done = min(self.progress.step, total) / total
            if self.config.time_limit:
                # Under a time budget the schedule follows whichever runs out first, the
                # epochs or the minutes, so a run cut short by the clock still ends annealed.
                spent = self.progress.total_seconds + self.progress.seconds
                done = max(done, min(1.0, spent / (60 * self.config.time_limit)))
            return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done)))
        return base

    def _set_lr(self) -> float:
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    # -- one step / one epoch ----------------------------------------------------------------

    def _step(
        self, x: torch.Tensor, y: torch.Tensor, state: State | None, positions: torch.Tensor | None
    ) -> tuple[float, State]:
        """One optimizer step on batch ``(x, y)``; ``positions`` (T, N) locate ``y`` in the
        training text for the n-gram teacher. Returns the batch's true (unsmoothed) loss."""
        logits, state = self.model(x, state)  # (T, N, V)
        flat_y = y.flatten()
        log_probs = torch.log_softmax(logits.flatten(0, 1), dim=-1)  # one softmax for all terms
        true_loss = nn.functional.nll_loss(log_probs, flat_y)  # what is reported
        loss = true_loss
        smoothing = self.config.label_smoothing
        if smoothing:  # as cross_entropy(label_smoothing=s): 1 - s on the target, s spread evenly
            loss = (1 - smoothing) * true_loss - smoothing * log_probs.mean(dim=-1).mean()
        if self.teacher is not None:
            assert positions is not None, "the n-gram teacher needs the targets' positions"
            weight = self.config.teacher_weight
            soft = self.teacher.cross_entropy(log_probs, positions.flatten()).mean()
            loss = (1 - weight) * loss + weight * soft
        value = true_loss.item()
        if not math.isfinite(value):
            last = self.run_dir / runs.LAST
            raise NonFiniteLoss(
                f"loss became {value} at step {self.progress.step + 1} (epoch "
                f"{self.progress.epoch + 1}); the last good checkpoint is {last}; resume it with "
                f"a lower --lr or a smaller --clip: charlstm train --resume {self.run_dir} "
                f"--lr ... (if it diverges again, resume from {self.run_dir / runs.BEST})"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip)
        self.optimizer.step()
        return value, state

    def _train_epoch(self, flag: dict[str, int | None]) -> None:
        p, config = self.progress, self.config
        self.model.train()
        self.batches.set_epoch(p.epoch)
        carry = self.batches.carries_state
        state: State | None = None
        if carry and p.carry is not None:
            state = (p.carry[0].to(self.device), p.carry[1].to(self.device))
        bar = tqdm(
            total=len(self.batches),
            initial=p.batch,
            desc=f"epoch {p.epoch + 1}/{config.epochs}",
            leave=False,
            disable=None if self.progress_bar is None else not self.progress_bar,
            unit="batch",
        )
        start = time.perf_counter() - p.seconds
        with bar:
            for index in range(p.batch, len(self.batches)):
                x, y = self.batches[index]
                x, y = x.to(self.device), y.to(self.device)
                positions = None
                if self.teacher is not None:
                    positions = self.batches.positions(index).to(self.device)
                if not carry:
                    state = None
                lr = self._set_lr()
                loss, state = self._step(x, y, state, positions)
                state = detach_state(state)
                self._update_average()
                p.step += 1
                p.batch = index + 1
                p.loss_sum += loss * y.numel()
                p.chars += y.numel()
                p.seconds = time.perf_counter() - start
                p.carry = state if carry else None
                self.step_log.write(p.step, p.epoch + 1, p.batch, loss, lr)
                bar.update(1)
                if self.on_step is not None:
                    self.on_step(self)
                bar.set_postfix(
                    loss=f"{loss:.3f}",
                    ppl=f"{math.exp(min(loss, 50)):.1f}",
                    chars_per_s=f"{p.chars / max(p.seconds, 1e-9):,.0f}",
                    lr=f"{lr:.2g}",
                )
                if flag["signum"] is not None:
                    self.save()
                    raise TrainingInterrupted(flag["signum"], self.run_dir)
                if config.checkpoint_every and p.step % config.checkpoint_every == 0:
                    self.save()

    def _end_epoch(self) -> EpochMetrics:
        p = self.progress
        train_loss = p.loss_sum / max(p.chars, 1)
        val_loss = None
        if self.has_val:
            with self.averaged():
                indices = self.corpus.indices.to(self.device)
                val_loss = score_split(self.model, indices, self.cut, mixture=self.mixture).loss
        improved = val_loss is not None and val_loss < p.best_val_loss
        if improved:
            p.best_val_loss = val_loss
            p.bad_epochs = 0
        elif val_loss is not None:
            p.bad_epochs += 1
            if self.config.schedule == "plateau":
                p.lr_scale *= 0.5
        metrics = EpochMetrics(
            epoch=p.epoch + 1,
            step=p.step,
            train_loss=train_loss,
            train_ppl=math.exp(min(train_loss, 700)),
            val_loss=val_loss,
            val_ppl=None if val_loss is None else math.exp(min(val_loss, 700)),
            lr=self.current_lr(),
            seconds=p.seconds,
            chars_per_sec=p.chars / max(p.seconds, 1e-9),
            best=improved or val_loss is None,
        )
        p.total_seconds += p.seconds
        p.epoch += 1
        p.batch = 0
        p.loss_sum, p.chars, p.seconds = 0.0, 0, 0.0
        p.carry = None
        return metrics

    def sample(self, length: int | None = None) -> dict[str, str]:
        """One sample per training prefix, from a generator seeded by (seed, epoch)."""
        with self.averaged():
            texts = generate(
                self.model,
                self.corpus.vocab,
                self.prefixes,
                length=length or self.config.sample_length,
                config=SamplingConfig(temperature=0.8, top_k=None),
                seed=self.config.seed * 7919 + self.progress.epoch,
                mixture=self.mixture,
            )
        self.model.train()
        return {
            prefix: prefix + sample[0] for prefix, sample in zip(self.prefixes, texts, strict=True)
        }

    # -- the whole run -----------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train until ``epochs`` (the total, counting epochs before a resume) or early stop."""
        config, p = self.config, self.progress
        result = TrainResult(run_dir=self.run_dir)
        flag: dict[str, int | None] = {"signum": None}
        if p.step == 0 and p.epoch == 0:
            self.save()  # resumable from the very start
        with _stop_on_signals(flag), closing(self.step_log):
            while p.epoch < config.epochs:
                try:
                    self._train_epoch(flag)
                except RuntimeError as err:  # numerical or memory failure inside torch
                    first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
                    raise CharLSTMError(
                        f"training failed at step {p.step + 1}: {first}; the last good "
                        f"checkpoint is {self.run_dir / runs.LAST}"
                    ) from err
                metrics = self._end_epoch()
                result.metrics.append(metrics)
                runs.append_metrics(self.run_dir, asdict(metrics))
                if metrics.best:
                    self.save(runs.BEST)
                self.save(runs.LAST)
                self.log(format_epoch(metrics, config.epochs))
                if config.sample_every and metrics.epoch % config.sample_every == 0:
                    for text in self.sample().values():
                        self.log("  " + text.replace("\n", " / "))
                if p.bad_epochs and config.patience and p.bad_epochs >= config.patience:
                    self.log(
                        f"early stop: held-out loss has not improved for {p.bad_epochs} epochs "
                        f"(--patience {config.patience}); best.pt holds the best model"
                    )
                    result.stopped_early = True
                    break
                if p.bad_epochs == OVERFIT_WARNING_EPOCHS and not config.patience:
                    self.log(
                        f"warning: held-out loss has risen for {p.bad_epochs} epochs while "
                        "training loss falls: the model is memorising; best.pt keeps the best "
                        "epoch (use --patience N to stop early, or more dropout)"
                    )
                if flag["signum"] is not None:
                    raise TrainingInterrupted(flag["signum"], self.run_dir)
                if config.time_limit and p.total_seconds >= 60 * config.time_limit:
                    self.log(
                        f"time limit: {p.total_seconds / 60:.1f} minutes of training "
                        f"(--time-limit {config.time_limit:g}); resume with a larger --epochs "
                        "to go on"
                    )
                    result.stopped_early = True
                    break
        return result


def _ppl(value: float | None) -> str:
    if value is None:
        return "     n/a"
    return f"{value:8.2f}" if value < 1e6 else f"{value:8.2e}"


def format_epoch(m: EpochMetrics, epochs: int) -> str:
    val = f"held-out ppl {_ppl(m.val_ppl)}"
    mark = " *" if m.best and m.val_ppl is not None else ""
    return (
        f"epoch {m.epoch:3d}/{epochs}  train ppl {_ppl(m.train_ppl)}  {val}  "
        f"lr {m.lr:.3g}  {m.seconds:5.1f}s  {m.chars_per_sec:,.0f} chars/s{mark}"
    )

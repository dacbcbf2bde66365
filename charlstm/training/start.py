"""From a request to a ready :class:`~charlstm.training.loop.Trainer`, in one of three modes.

- :func:`new_run`: settings are dataclass defaults < ``preset`` < settings given.
- :func:`fine_tune` (``init_from``): a new run that starts from a checkpoint's weights,
  keeping its architecture; regularisation (the settings marked ``fine_tune``) may change.
- :func:`resume_run` (``resume``): the checkpoint's settings < settings given, and only the
  settings marked ``resume`` may differ; the run continues its exact trajectory.

Settings arrive as one flat dict by field name (``given``: only what the user typed); each
config is built from its layers by :func:`charlstm.fields.build` and checks itself when made.
Every mode reads its data through :func:`charlstm.training.setup.training_data`. Everything
that can be wrong with the input is found before the run directory is created or touched.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from charlstm import __version__
from charlstm.config import (
    RESUME_OVERRIDABLE,
    DataConfig,
    ModelConfig,
    TrainConfig,
    check_given,
    check_together,
)
from charlstm.data.corpus import Vocab, show_chars
from charlstm.data.demo import demo_corpus
from charlstm.data.prepared import RUN_CORPUS, is_prepared, matching, prepared_in_run
from charlstm.data.training_data import TrainingData
from charlstm.device import resolve_device
from charlstm.errors import CharLSTMError, NothingToDo
from charlstm.fields import SettingError, build, register, setting, setting_values, settings_of
from charlstm.model import build_model, default_cutoffs
from charlstm.ngram.kneser_ney import MAX_EMBEDDED_NGRAM_CHARS
from charlstm.ngram.mixture import NgramMixture
from charlstm.ngram.teacher import NgramTeacher
from charlstm.presets import PRESETS
from charlstm.storage import board, runs
from charlstm.storage import checkpoint as ckpt
from charlstm.storage.export import is_export
from charlstm.training import distributed
from charlstm.training.distributed import World
from charlstm.training.loop import Log, Trainer
from charlstm.training.setup import (
    build_trainer,
    grown_vocab,
    same_vocab,
    training_data,
)
from charlstm.training.vocab_growth import grow_vocab_weights, grown_config


@register
@dataclass
class RunRequest:
    """What ``charlstm train`` was asked to do, before any file is read."""

    corpus: str | Path | None = None
    given: dict[str, Any] = field(default_factory=dict)  # settings typed, by field name
    preset: str | None = setting(None, "Named settings for common cases.", "Run", cli=False)
    run_dir: str | Path | None = setting(None, "The run's directory.", "Run", cli=False)
    runs_root: str | Path = setting("runs", "Where run directories are made.", "Run", cli=False)
    resume: str | Path | None = setting(None, "The run to continue.", "Run", cli=False)
    init_from: str | Path | None = setting(None, "Weights to start from.", "Run", cli=False)
    extend_vocab: bool = setting(False, "Grow the vocabulary.", "Run", cli=False)
    overwrite: bool = setting(False, "Replace a run.", "Run", cli=False)


def _preset(name: str | None) -> dict[str, dict[str, Any]]:
    if name is None:
        return {"model": {}, "train": {}}
    if name not in PRESETS:
        raise SettingError(f"unknown {{preset}} {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def _check_same(
    config: Any, given: dict[str, Any], what: str, rule: str, may_change: frozenset = frozenset()
) -> None:
    """Raise, naming the setting and ``rule``, when a setting of ``config`` was given with
    another value (those in ``may_change`` aside)."""
    for key, current in setting_values(config).items():
        if key in given and key not in may_change and given[key] != current:
            raise SettingError(
                f"{{{key}}} {given[key]} differs from the {what}'s {current}; {rule}"
            )


def extend_vocab_weights(
    weights: dict[str, torch.Tensor], config: ModelConfig, grown: ModelConfig, seed: int
) -> dict[str, torch.Tensor]:
    """Weights of ``config``'s model for the vocabulary of ``grown`` (:func:`grown_config`):
    old rows kept exactly, new rows as :func:`~charlstm.training.vocab_growth.grow_vocab_weights`
    says (fresh ones drawn with ``seed``)."""
    torch.manual_seed(seed)
    return grow_vocab_weights(weights, config, build_model(grown).state_dict())


def machine(device: torch.device) -> dict[str, Any]:
    """Where a run trains, for the record: device, its name on a GPU, CPU threads, torch."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return {
        "device": str(device),
        "name": name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _write_run_files(trainer: Trainer, resumed_from: Path | None) -> None:
    data, world = trainer.data, trainer.world
    runs.write_config(
        trainer.run_dir,
        {
            "charlstm_version": __version__,
            "model": asdict(trainer.model_config),
            "train": asdict(trainer.config),
            "data": asdict(trainer.data.config),
            "corpus_chars": len(data),
            "train_chars": len(data.train),
            "val_chars": len(data.val),
            "vocab_size": len(data.vocab),
            "parameters": trainer.model.num_parameters(),
            "resumed_from": None if resumed_from is None else str(resumed_from),
            "machine": machine(trainer.device),
            "processes": world.size,  # under torchrun: the world size
            "torchrun_job": world.job,  # a restarted job resumes only its own run
        },
    )
    runs.write_vocab(trainer.run_dir, data.vocab.to_list())


def _check_prefixes(prefixes: list[str], vocab: Vocab) -> None:
    """Training samples continue each prefix: check them now, not after an epoch."""
    for prefix in prefixes:
        if not prefix:
            raise SettingError("{prefixes} is empty; give at least one character")
        missing = vocab.missing(prefix)
        if missing:
            raise SettingError(
                f"{{prefixes}} {prefix!r} has characters not in the corpus's vocabulary: "
                f"{show_chars(missing)}"
            )


def _ngram_features(
    train: TrainConfig, data: TrainingData, log: Log
) -> tuple[NgramTeacher | None, NgramMixture | None]:
    """The n-gram teacher and the interpolated n-gram, fitted on the training text."""
    teacher = mixture = None
    for name in ("ngram_teacher", "ngram_mix"):
        if getattr(train, name) and len(data.train) > MAX_EMBEDDED_NGRAM_CHARS:
            raise SettingError(
                f"{{{name}}} fits an n-gram on the training text, which is limited to "
                f"{MAX_EMBEDDED_NGRAM_CHARS:,} characters (this one has {len(data.train):,}); "
                "use it on a smaller corpus ({max_chars}), or train without it"
            )
    if train.ngram_teacher:
        started = time.perf_counter()
        teacher = NgramTeacher(
            data.train_text(), data.vocab, train.ngram_teacher, train.teacher_folds
        )
        log(
            f"n-gram teacher: Kneser-Ney {train.ngram_teacher}-gram, cross-fitted on "
            f"{teacher.folds} folds of the training text ({time.perf_counter() - started:.1f} s)"
        )
    if train.ngram_mix:
        mixture = NgramMixture(data.train_text(), data.vocab, train.ngram_mix, train.mix_weight)
        log(
            f"the model is the LSTM interpolated with a {mixture.describe()}, fitted on the "
            "training text"
        )
    return teacher, mixture


def _trainer(
    data: TrainingData,
    model: ModelConfig,
    train: TrainConfig,
    run_dir: Path,
    world: World,
    log: Log,
    progress_bar: bool | None,
    **state: Any,
) -> Trainer:
    check_together(model, train)
    _check_prefixes(train.prefixes, data.vocab)
    teacher, mixture = _ngram_features(train, data, log)
    return build_trainer(
        data,
        model,
        train,
        run_dir,
        world,
        teacher=teacher,
        mixture=mixture,
        log=log,
        progress_bar=progress_bar,
        **state,
    )


def new_run(
    request: RunRequest, world: World, log: Log = print, progress_bar: bool | None = None
) -> Trainer:
    """A fresh run: defaults < preset < given."""
    chosen = _preset(request.preset)
    source = build(DataConfig, request.given, path=str(_corpus(request)))
    train = build(TrainConfig, {**chosen["train"], **request.given})
    _check_machine(train, world)  # before any file is read or written
    default = ModelConfig.__dataclass_fields__["backend"].default
    backend = {**chosen["model"], **request.given}.get("backend", default)
    run_dir = _new_run_dir(request, source, backend, world)
    with _removed_on_failure(run_dir, world):
        data = training_data(
            source, train.val_fraction, world, given=request.given, run_dir=run_dir, log=log
        )
        train = replace(train, val_fraction=data.val_fraction)
        model = build(
            ModelConfig, {**chosen["model"], **request.given}, vocab_size=len(data.vocab)
        ).resolved()  # the run records the softmax "auto" chose
        check_given(request.given, model, train)
        if model.softmax == "adaptive" and model.cutoffs is None:  # recorded in the run's config
            model = replace(model, cutoffs=default_cutoffs(data.counts()))
        return _start(request, run_dir, world, data, model, train, log, progress_bar)


def fine_tune(
    request: RunRequest, world: World, log: Log = print, progress_bar: bool | None = None
) -> Trainer:
    """A new run from a checkpoint's weights (``init_from``): its architecture, and
    regularisation from the preset and the settings given; new characters with
    ``extend_vocab``."""
    chosen = _preset(request.preset)
    source = build(DataConfig, request.given, path=str(_corpus(request)))
    train = build(TrainConfig, {**chosen["train"], **request.given})
    _check_machine(train, world)
    base = ckpt.load(ckpt.resolve(request.init_from, prefer="best.pt", runs_root=request.runs_root))
    run_dir = _new_run_dir(request, source, base.model_config.backend, world)
    with _removed_on_failure(run_dir, world):
        data = training_data(
            source,
            train.val_fraction,
            world,
            given=request.given,
            vocab=grown_vocab(base.vocab, request.extend_vocab),
            run_dir=run_dir,
            log=log,
        )
        train = replace(train, val_fraction=data.val_fraction)
        tunable = frozenset(f.name for f, meta in settings_of(ModelConfig) if meta.fine_tune)
        _check_same(
            base.model_config,
            request.given,
            "{init_from} checkpoint",
            "fine-tuning keeps the architecture",
            may_change=tunable,
        )
        regularisation = {k: v for k, v in chosen["model"].items() if k in tunable}
        model = build(ModelConfig, {**asdict(base.model_config), **regularisation, **request.given})
        check_given(request.given, model, train)
        weights = base.model
        if len(data.vocab) > len(base.vocab):  # the new characters: rows and, adaptive, ranks
            grown = grown_config(base.model_config, len(data.vocab))
            weights = extend_vocab_weights(base.model, base.model_config, grown, train.seed)
            model = replace(model, vocab_size=grown.vocab_size, cutoffs=grown.cutoffs)
        return _start(
            request, run_dir, world, data, model, train, log, progress_bar, init_weights=weights
        )


def _check_machine(train: TrainConfig, world: World) -> None:
    """What the settings need of this machine: the device, and with ``tensorboard`` its
    package where the events are written (rank 0)."""
    resolve_device(train.device)
    if train.tensorboard and world.main:
        board.require()


def _corpus(request: RunRequest) -> Path:
    return (Path(request.corpus) if request.corpus is not None else demo_corpus()).resolve()


def _new_run_dir(request: RunRequest, source: DataConfig, backend: str, world: World) -> Path:
    """The new run's directory (``run_dir``, or a fresh name under ``runs_root``); for a
    corpus prepared inside it, checked before the preparation starts."""
    inside = prepared_in_run(source.path) or is_prepared(source.path)
    if request.run_dir is not None:
        run_dir = Path(request.run_dir)
    elif world.distributed and prepared_in_run(source.path):
        raise SettingError(
            f"{source.path} is prepared inside the run directory, and under torchrun every "
            "process must name the same one: give {run_dir} DIR (or run charlstm prepare "
            "first and train from its directory)"
        )
    else:
        run_dir = Path(request.runs_root) / runs.default_run_name(source.path, backend)
    if world.main and inside:
        runs.check_new_run_dir(run_dir, request.overwrite)  # refuse before preparing
    return run_dir


@contextmanager
def _removed_on_failure(run_dir: Path, world: World) -> Iterator[None]:
    """A run directory that does not exist yet is removed again, with the corpus prepared
    in it, when the new run fails before writing its files."""
    fresh = not run_dir.exists()
    try:
        yield
    except BaseException:
        if fresh and world.main and not runs.holds_run(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _start(
    request: RunRequest,
    run_dir: Path,
    world: World,
    data: TrainingData,
    model: ModelConfig,
    train: TrainConfig,
    log: Log,
    progress_bar: bool | None,
    **state: Any,
) -> Trainer:
    """Build the trainer of a new run, then create its directory and write its files."""
    with distributed.agreed(world):  # every rank's checks pass before a file is written
        if world.main:
            runs.check_new_run_dir(run_dir, request.overwrite)  # refuse early, before any work
        trainer = _trainer(data, model, train, run_dir, world, log, progress_bar, **state)
    with distributed.agreed(world):
        if world.main:  # rank 0 alone writes
            runs.prepare_run_dir(run_dir, overwrite=request.overwrite)
            _write_run_files(trainer, None)
    return trainer


def _resumed_settings(
    request: RunRequest, checkpoint: ckpt.Checkpoint, world: World
) -> TrainConfig:
    """The resumed run's training settings: the checkpoint's, with the resumable ones given;
    any other setting given must equal the checkpoint's."""
    given = request.given
    _check_same(
        checkpoint.model_config, given, "checkpoint", "a resumed run keeps its architecture"
    )
    _check_same(checkpoint.data_config, given, "checkpoint", "a resumed run reads its corpus alike")
    may_change = ", ".join(f"{{{k}}}" for k in sorted(RESUME_OVERRIDABLE))
    _check_same(
        checkpoint.train_config,
        given,
        "checkpoint",
        f"a resumed run keeps it (these may change on {{resume}}: {may_change})",
        may_change=RESUME_OVERRIDABLE,
    )
    train = build(TrainConfig, {**asdict(checkpoint.train_config), **given})
    _check_machine(train, world)
    if checkpoint.epoch >= train.epochs:
        target = f"{{epochs}} {train.epochs}"
    elif train.max_steps and checkpoint.step >= train.max_steps:
        target = f"{{max_steps}} {train.max_steps}"
    else:
        return train
    # success, exit 0: a retry loop ("resume until it exits 0") ends once the run is complete
    raise NothingToDo(
        f"nothing to do: the run has already trained {checkpoint.epoch} epochs "
        f"({checkpoint.step:,} steps), reaching {target}; pass a larger {{epochs}} or "
        "{max_steps} (the new total) to continue"
    )


def resume_run(
    request: RunRequest, world: World, log: Log = print, progress_bar: bool | None = None
) -> Trainer:
    """Continue the run in ``request.resume`` (a run directory: its ``last.pt``; or a
    checkpoint file): the checkpoint's settings < the resumable settings given.

    The run goes on in the checkpoint's directory, or in ``run_dir`` when given (a branch:
    the logs up to the checkpoint are copied there). A run that has already reached its
    ``epochs`` / ``max_steps`` raises :class:`~charlstm.errors.NothingToDo` (success).
    """
    source_file = ckpt.resolve(request.resume, prefer="last.pt")
    if is_export(source_file):
        raise SettingError(
            f"{source_file} is an exported model: it holds weights but no optimizer state "
            "or data position, so it cannot be resumed; fine-tune it with {init_from}"
        )
    checkpoint = ckpt.load(source_file)
    train = _resumed_settings(request, checkpoint, world)
    source = checkpoint.data_config
    if request.corpus is not None:
        source = replace(source, path=str(Path(request.corpus).resolve()))
    elif not Path(source.path).exists() and not (
        checkpoint.corpus_sha256
        and matching(source_file.parent / RUN_CORPUS, checkpoint.corpus_sha256) is not None
    ):
        raise CharLSTMError(
            f"the run's corpus {source.path} is not here; pass it: "
            "charlstm train CORPUS --resume ..."
        )
    data = training_data(
        source,
        train.val_fraction,
        world,
        vocab=same_vocab(checkpoint.vocab),
        run_dir=source_file.parent,  # a corpus prepared there is reused
        fingerprint=checkpoint.corpus_sha256,
        log=log,
    )
    directory = Path(request.run_dir) if request.run_dir is not None else source_file.parent
    branch = not (directory.exists() and directory.resolve() == source_file.parent.resolve())
    if request.overwrite and not branch:
        raise SettingError(
            "{overwrite} has nothing to replace: a resume continues its own run directory "
            "(to branch over another run, give {run_dir} DIR {overwrite})"
        )
    with distributed.agreed(world):  # every rank's checks pass before a file is written
        if branch and world.main:
            runs.check_new_run_dir(directory, request.overwrite)  # never write over another run
        trainer = _trainer(
            data,
            checkpoint.model_config,
            train,
            directory,
            world,
            log,
            progress_bar,
            resume=checkpoint,
        )
    with distributed.agreed(world):
        if world.main:  # rank 0 alone writes
            _continue_run_dir(trainer, source_file, checkpoint, branch, request.overwrite)
    return trainer


def _continue_run_dir(
    trainer: Trainer, source_file: Path, checkpoint: ckpt.Checkpoint, branch: bool, overwrite: bool
) -> None:
    """Take the resumed run's directory (a new one for a branch) and bring its files to the
    checkpoint's step."""
    directory, log = trainer.run_dir, trainer.log
    if branch:
        runs.prepare_run_dir(directory, overwrite=overwrite)
    else:
        runs.ensure_writable(directory)
    for stray in ckpt.remove_partial_writes(directory):
        log(f"removed {stray}, a checkpoint write cut short by a crash (the checkpoints are whole)")
    # logs written after the checkpoint we resume from belong to a lost future
    runs.rewind(source_file.parent, directory, checkpoint.epoch, checkpoint.step)
    board.rewind(source_file.parent, directory, checkpoint.step, log)
    _write_run_files(trainer, source_file)
    log(
        f"resuming {source_file} at epoch {checkpoint.epoch + 1}, batch {checkpoint.batch}, "
        f"step {checkpoint.step}"
    )


def _restarted(request: RunRequest, world: World) -> RunRequest:
    """Under ``torchrun --max-restarts``: a restarted job continues its own run from its
    ``last.pt`` (the run whose config.json names this job), whatever the command said."""
    if world.max_restarts and request.run_dir is None and request.resume is None:
        raise SettingError(
            "under torchrun --max-restarts give {run_dir} DIR: a restarted job resumes "
            "DIR/last.pt by itself"
        )
    if not world.restarts:
        return request
    directory = Path(request.run_dir if request.run_dir is not None else request.resume or "")
    if directory.is_file():  # --resume RUN/best.pt: the run goes on in RUN
        directory = directory.parent
    try:
        job = json.loads((directory / runs.CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return request  # the first attempt wrote nothing: start as asked
    if not isinstance(job, dict) or job.get("torchrun_job") != world.job:
        return request  # another run's directory: the command's own rules apply
    if not (directory / runs.LAST).is_file():  # this job's, stopped before its first step
        return dataclasses.replace(request, overwrite=True)
    return RunRequest(
        request.corpus, request.given, None, None, request.runs_root, directory / runs.LAST
    )


def start_run(request: RunRequest, log: Log = print, progress_bar: bool | None = None) -> Trainer:
    """The trainer for ``request``: a resumed run, a fine-tuned one, or a new one.

    Under torchrun (:mod:`charlstm.training.distributed`) every process builds its trainer; rank 0
    alone writes the run's files, and a restarted job resumes its own ``last.pt``.
    """
    world = distributed.setup()
    if not world.main:
        log, progress_bar = distributed.silent, False
    try:
        request = _restarted(request, world)
        if request.extend_vocab and request.init_from is None:
            raise SettingError("{extend_vocab} is a setting of {init_from} (fine-tuning); add it")
        if request.resume is not None:
            if request.init_from is not None:
                raise SettingError("{resume} and {init_from} exclude each other")
            if request.preset is not None:
                raise SettingError("{preset} applies to new runs; a resumed run keeps its settings")
            return resume_run(request, world, log, progress_bar)
        if request.init_from is not None:
            return fine_tune(request, world, log, progress_bar)
        return new_run(request, world, log, progress_bar)
    except Exception as err:  # failed before the ranks' agreement: take part in it
        distributed.settle(world, err)
        raise


def prepare_training(
    corpus: str | Path | None,
    model_options: dict[str, Any] | None = None,
    train_options: dict[str, Any] | None = None,
    data_options: dict[str, Any] | None = None,
    *,
    log: Log = print,
    progress_bar: bool | None = None,
    **request: Any,
) -> Trainer:
    """The library's form of ``charlstm train``: settings by config (a value of ``None``
    counts as not given); ``request``: the other fields of :class:`RunRequest`."""
    given = {
        k: v
        for options in (model_options, train_options, data_options)
        for k, v in (options or {}).items()
        if v is not None
    }
    return start_run(RunRequest(corpus, given, **request), log, progress_bar)

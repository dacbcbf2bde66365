"""From a request to a ready :class:`~charlstm.training.loop.Trainer`, in one of three modes.

- :func:`new_run`: settings are dataclass defaults < ``--preset`` < options given.
- :func:`fine_tune` (``--init-from``): a new run that starts from a checkpoint's weights,
  keeping its architecture; regularisation (the settings marked ``fine_tune``) may change.
- :func:`resume_run` (``--resume``): the checkpoint's settings < options given, and only the
  settings marked ``resume`` may differ; the run continues its exact trajectory.

Settings arrive as one flat dict by field name (``given``: only what the user typed);
:func:`layered` builds each config from its layers and validates it once. Everything that
can be wrong with the input is found before the run directory is created or touched.
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
from typing import Any, TypeVar

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
from charlstm.data.corpus import Corpus, Vocab, read_text, show_chars
from charlstm.data.prepared import (
    RUN_CORPUS,
    PreparedCorpus,
    is_prepared,
    matching,
    prepare,
    prepared_in_run,
)
from charlstm.device import resolve_device
from charlstm.errors import CharLSTMError, NothingToDo
from charlstm.fields import SettingError, option_name, settings_of
from charlstm.model import build_model, default_cutoffs
from charlstm.ngram.kneser_ney import MAX_EMBEDDED_NGRAM_CHARS
from charlstm.ngram.mixture import NgramMixture
from charlstm.ngram.teacher import NgramTeacher
from charlstm.presets import PRESETS
from charlstm.storage import checkpoint as ckpt
from charlstm.storage import runs
from charlstm.training import distributed
from charlstm.training.loop import Log, Trainer, TrainingData

#: The demo corpus shipped in the repository (found next to the package in a source checkout).
DEMO_CORPUS = Path(__file__).resolve().parent.parent / "data" / "demo_lyrics.zip"

C = TypeVar("C")


@dataclass
class RunRequest:
    """What ``charlstm train`` was asked to do, before any file is read."""

    corpus: str | Path | None = None
    given: dict[str, Any] = field(default_factory=dict)  # settings typed, by field name
    preset: str | None = None
    run_dir: str | Path | None = None
    runs_root: str | Path = "runs"
    resume: str | Path | None = None
    init_from: str | Path | None = None
    extend_vocab: bool = False
    overwrite: bool = False

    def of(self, cls: type) -> dict[str, Any]:
        """The given settings that belong to config class ``cls``."""
        names = {f.name for f in dataclasses.fields(cls)}
        return {k: v for k, v in self.given.items() if k in names}


def _only(given: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in given.items() if k in names}


def layered(cls: type[C], *layers: dict[str, Any], **fixed: Any) -> C:
    """``cls`` from its defaults overlaid by each layer in turn, then ``fixed``; validated."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return cls(**{**merged, **fixed}).validate()  # type: ignore[attr-defined]


def default_corpus() -> Path:
    if not DEMO_CORPUS.is_file():
        raise CharLSTMError(
            f"no corpus given and the demo corpus {DEMO_CORPUS} is missing; "
            "pass a corpus: charlstm train CORPUS.zip"
        )
    return DEMO_CORPUS


def _preset(name: str | None) -> dict[str, dict[str, Any]]:
    if name is None:
        return {"model": {}, "train": {}}
    if name not in PRESETS:
        raise CharLSTMError(f"unknown --preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def training_data(
    source: DataConfig,
    val_fraction: float,
    given_data: dict[str, Any],
    vocab: Vocab | None = None,
    *,
    run_dir: Path | None = None,
    fingerprint: str | None = None,
    log: Log = print,
) -> tuple[TrainingData, DataConfig, float]:
    """The run's data: a text corpus read into memory, or a prepared corpus (``charlstm
    prepare``) read through memory maps, whose normalisation and split are its own.

    With ``run_dir``, a corpus file over :data:`~charlstm.data.prepared.PREPARE_ABOVE_BYTES` is
    prepared inside it (``RUN/corpus``) and read from there; on resume (``fingerprint``: the
    checkpoint's) the one already there is reused when its text has that SHA-256.
    """
    if not is_prepared(source.path):
        inside = None if run_dir is None else Path(run_dir) / RUN_CORPUS
        if (
            inside is not None
            and (vocab is None or vocab.idx_to_char == sorted(vocab.idx_to_char))
            and (
                prepared_in_run(source.path)
                or (fingerprint and matching(inside, fingerprint) is not None)
            )
        ):
            prepared = _run_corpus(source, val_fraction, inside, fingerprint, log)
            return _from_prepared(prepared), source, val_fraction
        corpus = load_corpus(source, vocab)
        return TrainingData.from_corpus(corpus, val_fraction), source, val_fraction
    prepared = PreparedCorpus.open(source.path)
    fixed = {
        **given_data,
        **({"val_fraction": val_fraction} if "val_fraction" in given_data else {}),
    }
    _check_same(
        replace(prepared.data, path=source.path),
        {k: v for k, v in fixed.items() if k != "val_fraction"},
        "prepared corpus",
        "it was fixed by charlstm prepare (prepare the corpus again to change it)",
    )
    if "val_fraction" in given_data and given_data["val_fraction"] != prepared.val_fraction:
        raise SettingError(
            f"{{val_fraction}} {given_data['val_fraction']} differs from the prepared corpus's "
            f"{prepared.val_fraction}; it was fixed by charlstm prepare"
        )
    if vocab is not None and vocab != prepared.vocab:
        raise CharLSTMError(f"{source.path} has another vocabulary than the run's checkpoint")
    return _from_prepared(prepared), replace(prepared.data, path=source.path), prepared.val_fraction


def _from_prepared(prepared: PreparedCorpus) -> TrainingData:
    return TrainingData(
        prepared.vocab,
        prepared.train,
        prepared.val,
        prepared.sha256,
        prepared.train_text,
        prepared.train_counts,
    )


def _run_corpus(
    source: DataConfig, val_fraction: float, path: Path, fingerprint: str | None, log: Log
) -> PreparedCorpus:
    """The corpus file prepared at ``path`` in the run directory, once for the run: rank 0
    prepares it while the other ranks wait; a resumed run reuses it when its text has the
    run's ``fingerprint``."""
    world = distributed.from_env()
    with distributed.agreed(world):  # the other ranks wait here for rank 0
        if world.main and (fingerprint is None or matching(path, fingerprint) is None):
            log(f"preparing {source.path} in {path} (a file this big is not read into memory)")
            prepare(source, val_fraction, path, log=log)
    return PreparedCorpus.open(path)


def load_corpus(data: DataConfig, vocab: Vocab | None = None) -> Corpus:
    text = read_text(data.path, data.member, data.encoding, data.newlines, data.max_chars)
    return Corpus.from_text(text, vocab)


def extend_vocab_weights(
    weights: dict[str, torch.Tensor], config: ModelConfig, new_size: int, seed: int
) -> dict[str, torch.Tensor]:
    """Weights for a vocabulary grown to ``new_size``: old rows kept exactly, new rows fresh."""
    torch.manual_seed(seed)
    fresh = build_model(replace(config, vocab_size=new_size)).state_dict()
    out = dict(weights)
    old_size = config.vocab_size
    for key in ("embedding.weight", "head.weight", "head.bias"):
        grown = fresh[key].clone()
        grown[:old_size] = weights[key]
        out[key] = grown
    return out


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
            "data": asdict(trainer.data_config),
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
    """Training samples continue each ``--prefix``: check them now, not after an epoch."""
    for prefix in prefixes:
        if not prefix:
            raise SettingError("{prefixes} is empty; give at least one character")
        missing = vocab.missing(prefix)
        if missing:
            raise SettingError(
                f"{{prefixes}} {prefix!r} has characters not in the corpus's vocabulary: "
                f"{show_chars(missing)}"
            )


def _check_same(config: Any, options: dict[str, Any], what: str, rule: str) -> None:
    """Raise, naming the setting and ``rule``, when a given setting differs from ``config``."""
    for key, value in options.items():
        current = getattr(config, key)
        if current != value:
            raise SettingError(f"{{{key}}} {value} differs from the {what}'s {current}; {rule}")


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
                "use it on a smaller corpus (--max-chars), or train without it"
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
    source: DataConfig,
    run_dir: Path,
    log: Log,
    progress_bar: bool | None,
    **state: Any,
) -> Trainer:
    check_together(model, train)
    _check_prefixes(train.prefixes, data.vocab)
    teacher, mixture = _ngram_features(train, data, log)
    return Trainer(
        data,
        model,
        train,
        source,
        run_dir,
        teacher=teacher,
        mixture=mixture,
        log=log,
        progress_bar=progress_bar,
        **state,
    )


def new_run(request: RunRequest, log: Log = print, progress_bar: bool | None = None) -> Trainer:
    """A fresh run: defaults < preset < given."""
    chosen = _preset(request.preset)
    path = Path(request.corpus) if request.corpus is not None else default_corpus()
    source = layered(DataConfig, request.of(DataConfig), path=str(path.resolve()))
    train = layered(TrainConfig, chosen["train"], request.of(TrainConfig))
    resolve_device(train.device)  # before any file is read or written
    given_data = {**request.of(DataConfig), **_only(request.given, "val_fraction")}
    request = replace(request, run_dir=_new_run_dir(request, source, chosen))
    with _removed_on_failure(Path(request.run_dir)):
        data, source, val_fraction = training_data(
            source, train.val_fraction, given_data, run_dir=request.run_dir, log=log
        )
        train = replace(train, val_fraction=val_fraction)
        model = layered(
            ModelConfig, chosen["model"], request.of(ModelConfig), vocab_size=len(data.vocab)
        )
        check_given(request.given, model, train)
        if model.softmax == "adaptive" and model.cutoffs is None:  # recorded in the run's config
            model = replace(model, cutoffs=default_cutoffs(data.counts())).validate()
        return _start(request, data, model, train, source, log, progress_bar)


def _new_run_dir(request: RunRequest, source: DataConfig, chosen: dict[str, Any]) -> Path:
    """The new run's directory (``--run-dir``, or a fresh name under ``--runs-root``); for
    a corpus file prepared inside it, checked before the preparation starts."""
    world = distributed.from_env()
    if request.run_dir is not None:
        run_dir = Path(request.run_dir)
    elif world.distributed and prepared_in_run(source.path):
        raise CharLSTMError(
            f"{source.path} is prepared inside the run directory, and under torchrun every "
            "process must name the same one: give --run-dir DIR (or run charlstm prepare "
            "first and train from its directory)"
        )
    else:
        default = next(f.default for f in dataclasses.fields(ModelConfig) if f.name == "backend")
        backend = {**chosen["model"], **request.of(ModelConfig)}.get("backend", default)
        run_dir = Path(request.runs_root) / runs.default_run_name(source.path, backend)
    if world.main and prepared_in_run(source.path):
        runs.check_new_run_dir(run_dir, request.overwrite)  # refuse before preparing
    return run_dir


@contextmanager
def _removed_on_failure(run_dir: Path) -> Iterator[None]:
    """A run directory that does not exist yet is removed again, with the corpus prepared
    in it, when the new run fails before writing its files."""
    fresh = not run_dir.exists()
    try:
        yield
    except BaseException:
        if fresh and distributed.from_env().main and not runs.holds_run(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def fine_tune(request: RunRequest, log: Log = print, progress_bar: bool | None = None) -> Trainer:
    """A new run from a checkpoint's weights (``--init-from``): its architecture, and
    regularisation from the preset and the options given; new characters with
    ``--extend-vocab``."""
    chosen = _preset(request.preset)
    path = Path(request.corpus) if request.corpus is not None else default_corpus()
    source = layered(DataConfig, request.of(DataConfig), path=str(path.resolve()))
    train = layered(TrainConfig, chosen["train"], request.of(TrainConfig))
    resolve_device(train.device)
    base = ckpt.load(ckpt.resolve(request.init_from, prefer="best.pt", runs_root=request.runs_root))
    text = read_text(source.path, source.member, source.encoding, source.newlines, source.max_chars)
    missing, vocab, weights = base.vocab.missing(text), base.vocab, base.model
    if missing and base.model_config.softmax == "adaptive":
        raise CharLSTMError(
            f"{len(missing)} characters of the new corpus are not in the checkpoint's "
            f"vocabulary: {show_chars(missing)}; a model with an adaptive softmax cannot grow "
            "its vocabulary (--extend-vocab needs --softmax full)"
        )
    if missing and not request.extend_vocab:
        raise CharLSTMError(
            f"{len(missing)} characters of the new corpus are not in the checkpoint's "
            f"vocabulary: {show_chars(missing)}; pass --extend-vocab to add them"
        )
    tunable = {f.name for f, meta in settings_of(ModelConfig) if meta.fine_tune}
    given = request.of(ModelConfig)
    _check_same(
        base.model_config,
        {k: v for k, v in given.items() if k not in tunable},
        "--init-from checkpoint",
        "fine-tuning keeps the architecture",
    )
    regularisation = {k: v for k, v in chosen["model"].items() if k in tunable}
    model = replace(base.model_config, **{**regularisation, **given}).validate()
    check_given(request.given, model, train)
    if missing:
        vocab = base.vocab.extend(missing)
        weights = extend_vocab_weights(base.model, base.model_config, len(vocab), train.seed)
        model = replace(model, vocab_size=len(vocab))
    data = TrainingData.from_corpus(Corpus.from_text(text, vocab), train.val_fraction)
    return _start(request, data, model, train, source, log, progress_bar, init_weights=weights)


def _start(
    request: RunRequest,
    data: TrainingData,
    model: ModelConfig,
    train: TrainConfig,
    source: DataConfig,
    log: Log,
    progress_bar: bool | None,
    **state: Any,
) -> Trainer:
    """Build the trainer of a new run, then create its directory and write its files."""
    run_dir = request.run_dir
    if run_dir is None:  # a fine-tuned run
        run_dir = Path(request.runs_root) / runs.default_run_name(source.path, model.backend)
    world = distributed.from_env()
    with distributed.agreed(world):  # every rank's checks pass before a file is written
        if world.main:
            runs.check_new_run_dir(run_dir, request.overwrite)  # refuse early, before any work
        trainer = _trainer(data, model, train, source, Path(run_dir), log, progress_bar, **state)
    with distributed.agreed(world):
        if world.main:  # rank 0 alone writes
            runs.prepare_run_dir(run_dir, overwrite=request.overwrite)
            _write_run_files(trainer, None)
    return trainer


def _resumed_settings(request: RunRequest, checkpoint: ckpt.Checkpoint) -> TrainConfig:
    """The resumed run's training settings: the checkpoint's, with the resumable ones given;
    any other setting given must equal the checkpoint's."""
    _check_same(
        checkpoint.model_config,
        request.of(ModelConfig),
        "checkpoint",
        "a resumed run keeps its architecture",
    )
    _check_same(
        checkpoint.data_config,
        request.of(DataConfig),
        "checkpoint",
        "a resumed run reads its corpus alike",
    )
    given = request.of(TrainConfig)
    may_change = ", ".join(sorted(option_name(k) for k in RESUME_OVERRIDABLE))
    _check_same(
        checkpoint.train_config,
        {k: v for k, v in given.items() if k not in RESUME_OVERRIDABLE},
        "checkpoint",
        f"a resumed run keeps it (these may change on --resume: {may_change})",
    )
    train = layered(TrainConfig, asdict(checkpoint.train_config), given)
    resolve_device(train.device)
    if checkpoint.epoch >= train.epochs:
        target = f"{option_name('epochs')} {train.epochs}"
    elif train.max_steps and checkpoint.step >= train.max_steps:
        target = f"{option_name('max_steps')} {train.max_steps}"
    else:
        return train
    # success, exit 0: a retry loop ("resume until it exits 0") ends once the run is complete
    raise NothingToDo(
        f"nothing to do: the run has already trained {checkpoint.epoch} epochs "
        f"({checkpoint.step:,} steps), reaching {target}; pass a larger --epochs or "
        "--max-steps (the new total) to continue"
    )


def resume_run(request: RunRequest, log: Log = print, progress_bar: bool | None = None) -> Trainer:
    """Continue the run in ``request.resume`` (a run directory: its ``last.pt``; or a
    checkpoint file): the checkpoint's settings < the resumable settings given.

    The run goes on in the checkpoint's directory, or in ``run_dir`` when given (a branch:
    the logs up to the checkpoint are copied there). A run that has already reached its
    ``epochs`` / ``max_steps`` raises :class:`~charlstm.errors.NothingToDo` (success).
    """
    source_file = ckpt.resolve(request.resume, prefer="last.pt")
    checkpoint = ckpt.load(source_file)
    train = _resumed_settings(request, checkpoint)
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
    data, source, _ = training_data(
        source,
        train.val_fraction,
        {},
        checkpoint.vocab,
        run_dir=source_file.parent,  # a corpus prepared there is reused
        fingerprint=checkpoint.corpus_sha256,
        log=log,
    )
    if checkpoint.corpus_sha256 and data.fingerprint != checkpoint.corpus_sha256:
        raise CharLSTMError(
            f"{source.path} is not the text this run trained on (its content differs); a resumed "
            "run reads the same text: pass the original corpus, or start a new run from this "
            "one with --init-from"
        )
    directory = Path(request.run_dir) if request.run_dir is not None else source_file.parent
    branch = not (directory.exists() and directory.resolve() == source_file.parent.resolve())
    if request.overwrite and not branch:
        raise CharLSTMError(
            "--overwrite has nothing to replace: a resume continues its own run directory "
            "(to branch over another run, give --run-dir DIR --overwrite)"
        )
    world = distributed.from_env()
    with distributed.agreed(world):  # every rank's checks pass before a file is written
        if branch and world.main:
            runs.check_new_run_dir(directory, request.overwrite)  # never write over another run
        trainer = _trainer(
            data,
            checkpoint.model_config,
            train,
            source,
            directory,
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
    _write_run_files(trainer, source_file)
    log(
        f"resuming {source_file} at epoch {checkpoint.epoch + 1}, batch {checkpoint.batch}, "
        f"step {checkpoint.step}"
    )


def _restarted(request: RunRequest, world: distributed.World) -> RunRequest:
    """Under ``torchrun --max-restarts``: a restarted job continues its own run from its
    ``last.pt`` (the run whose config.json names this job), whatever the command said."""
    if world.max_restarts and request.run_dir is None and request.resume is None:
        raise CharLSTMError(
            "under torchrun --max-restarts give --run-dir DIR: a restarted job resumes "
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
        return _start_run(_restarted(request, world), log, progress_bar)
    except Exception as err:  # failed before the ranks' agreement: take part in it
        distributed.settle(world, err)
        raise


def _start_run(request: RunRequest, log: Log, progress_bar: bool | None) -> Trainer:
    if request.extend_vocab and request.init_from is None:
        raise CharLSTMError("--extend-vocab is a setting of --init-from (fine-tuning); add it")
    if request.resume is not None:
        if request.init_from is not None:
            raise CharLSTMError("--resume and --init-from exclude each other")
        if request.preset is not None:
            raise CharLSTMError("--preset applies to new runs; a resumed run keeps its settings")
        return resume_run(request, log, progress_bar)
    if request.init_from is not None:
        return fine_tune(request, log, progress_bar)
    return new_run(request, log, progress_bar)


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

"""Setting a run up: everything the loop needs, built before it starts.

- :func:`training_data`: the one way in for data, whatever the mode (new run, resume,
  fine-tune, torchrun): a :class:`~charlstm.data.training_data.TrainingData`, in memory or
  memory-mapped.
- :func:`build_trainer`: the world's share of the batches, the model (weights from a
  checkpoint or fresh), ``DistributedDataParallel``, the optimizer, the weight average and a
  resume's state, handed to the :class:`~charlstm.training.loop.Trainer` as plain objects.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from charlstm.config import DataConfig, ModelConfig, TrainConfig
from charlstm.data.batching import check_length, check_share, make_batches
from charlstm.data.corpus import Corpus, Vocab, read_corpus_text, show_chars, text_fingerprint
from charlstm.data.prepared import (
    RUN_CORPUS,
    PreparedCorpus,
    is_prepared,
    matching,
    prepare,
    prepared_in_run,
    with_vocab,
)
from charlstm.data.training_data import TrainingData
from charlstm.device import resolve_device
from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError, setting_values
from charlstm.model import CharLSTM, build_model
from charlstm.ngram.mixture import NgramMixture
from charlstm.ngram.teacher import NgramTeacher
from charlstm.storage import checkpoint as ckpt
from charlstm.storage import runs
from charlstm.storage.board import Board
from charlstm.training import distributed
from charlstm.training.distributed import World
from charlstm.training.loop import Trainer
from charlstm.training.parts import (
    LossStep,
    Progress,
    Schedule,
    StopRules,
    TrainingLoss,
    WeightAverage,
    data_parallel,
    default_prefixes,
    make_optimizer,
)

Log = Callable[[str], None]
#: The corpus's own vocabulary (sorted) -> the run's (a checkpoint's, maybe grown); may raise.
VocabRule = Callable[[Vocab], Vocab]


# -- data ------------------------------------------------------------------------------------


def training_data(
    source: DataConfig,
    val_fraction: float,
    world: World,
    *,
    given: dict[str, Any] | None = None,
    vocab: VocabRule | None = None,
    run_dir: Path | None = None,
    fingerprint: str | None = None,
    log: Log = print,
) -> TrainingData:
    """The run's data, for every mode:

    - a prepared corpus (``charlstm prepare``), read through memory maps; its normalisation
      and split are its own, and a setting ``given`` (by field name) must equal them;
    - a corpus file over :data:`~charlstm.data.prepared.PREPARE_ABOVE_BYTES`, prepared inside
      ``run_dir`` (``RUN/corpus``) once for the job (rank 0 prepares, the others wait); on
      resume (``fingerprint``: the checkpoint's) the one there is reused when its text has
      that SHA-256;
    - any other corpus file, read into memory.

    With ``fingerprint`` the text must be the one it names. ``vocab`` turns the corpus's
    own vocabulary into the run's (resume, fine-tuning); a prepared corpus whose vocabulary
    differs is rewritten in the run's order into ``RUN/corpus``.
    """
    rule = vocab or (lambda own: own)
    inside = None if run_dir is None else Path(run_dir) / RUN_CORPUS
    prepared = None
    if inside is not None and fingerprint:
        prepared = matching(inside, fingerprint)
    if prepared is None and is_prepared(source.path):
        prepared = PreparedCorpus.open(source.path)
        _check_prepared(prepared, given or {})
    elif prepared is None and inside is not None and prepared_in_run(source.path):
        log(f"preparing {source.path} in {inside} (a file this big is not read into memory)")
        prepared = _once(world, inside, lambda: prepare(source, val_fraction, inside, log=log))
    if prepared is None:
        text = read_corpus_text(source)
        _check_fingerprint(source, text_fingerprint(text), fingerprint)
        corpus = Corpus.from_text(text, rule(Vocab.from_text(text)))
        return TrainingData.in_memory(corpus, source, val_fraction)
    _check_fingerprint(source, prepared.sha256, fingerprint)
    wanted = rule(prepared.vocab)
    if wanted != prepared.vocab:
        if inside is None:
            raise CharLSTMError(f"{source.path} has another vocabulary than the run's")
        found = prepared
        prepared = _once(world, inside, lambda: with_vocab(found, wanted, inside))
    return TrainingData.prepared(prepared, source.path)


def _check_fingerprint(source: DataConfig, found: str, expected: str | None) -> None:
    if expected and found != expected:
        raise SettingError(
            f"{source.path} is not the text this run trained on (its content differs); a "
            "resumed run reads the same text: pass the original corpus, or start a new run "
            "from this one with {init_from}"
        )


def _once(world: World, path: Path, write: Callable[[], object]) -> PreparedCorpus:
    """``write`` the prepared corpus at ``path`` on rank 0 while the other ranks wait; open it."""
    with distributed.agreed(world):
        if world.main:
            write()
    return PreparedCorpus.open(path)


def _check_prepared(prepared: PreparedCorpus, given: dict[str, Any]) -> None:
    """Settings given must equal what ``charlstm prepare`` fixed."""
    fixed = {**setting_values(prepared.data), "val_fraction": prepared.val_fraction}
    for key, value in given.items():
        if key in fixed and key != "path" and value != fixed[key]:
            raise SettingError(
                f"{{{key}}} {value} differs from the prepared corpus's {fixed[key]}; it was "
                "fixed by charlstm prepare (prepare the corpus again to change it)"
            )


def same_vocab(run: Vocab) -> VocabRule:
    """A resumed run reads its corpus with the checkpoint's vocabulary."""
    return lambda own: run


def grown_vocab(base: Vocab, extend: bool) -> VocabRule:
    """A fine-tuned run keeps the checkpoint's vocabulary; characters it lacks are appended
    (in sorted order) with ``extend``, and refused without it. The same rule for both
    output layers: the adaptive softmax gives the new characters its last ranks, in the
    order of their indices (:func:`~charlstm.training.vocab_growth.grow_vocab_weights`)."""

    def rule(own: Vocab) -> Vocab:
        missing = [ch for ch in own.idx_to_char if ch not in base]
        if missing and not extend:
            raise SettingError(
                f"{len(missing)} characters of the new corpus are not in the checkpoint's "
                f"vocabulary: {show_chars(missing)}; pass {{extend_vocab}} to add them"
            )
        return base.extend(missing)

    return rule


# -- the trainer -----------------------------------------------------------------------------


def build_trainer(
    data: TrainingData,
    model_config: ModelConfig,
    config: TrainConfig,
    run_dir: Path,
    world: World,
    *,
    resume: ckpt.Checkpoint | None = None,
    init_weights: dict[str, torch.Tensor] | None = None,
    teacher: NgramTeacher | None = None,
    mixture: NgramMixture | None = None,
    log: Log = print,
    progress_bar: bool | None = None,
) -> Trainer:
    """Everything the loop uses, in the order that fixes the random draws: this rank's
    batches, the model (seeded; ``init_weights`` or fresh), DDP, the optimizer, the weight
    average, and a ``resume``'s weights, optimizer, progress and RNG states."""
    device = resolve_device(config.device, world)
    has_val = len(data.val) > 0 and config.val_fraction > 0
    check_share(config.batch_size, world.rank, world.size)
    what = "training text" if has_val else "corpus"
    check_length(len(data.train), config.batch_size, config.num_steps, what=what)
    batches = make_batches(
        data.train,
        config.batch_size,
        config.num_steps,
        config.sampling,
        config.seed,
        world.rank,
        world.size,
    )
    prefixes = list(config.prefixes) or default_prefixes(data.vocab, data.train_text(200))
    teacher = None if teacher is None else teacher.to(device)
    loss = TrainingLoss(config.label_smoothing, teacher, config.teacher_weight)
    total = config.epochs * len(batches)
    schedule = Schedule(
        config.lr, config.schedule, min(total, config.max_steps or total), config.time_limit
    )

    torch.manual_seed(config.seed)
    model = build_model(model_config)
    if init_weights is not None:
        model.load_state_dict(init_weights)
    elif model_config.softmax == "adaptive" and resume is None:
        model.set_class_order(data.counts())  # its clusters follow the frequencies
    model.to(device)
    loss_step = data_parallel(LossStep(model, loss), world, device)
    optimizer = make_optimizer(model, config)
    average = WeightAverage(model, config.ema) if config.ema else None
    progress = Progress(len(batches))
    if resume is not None:
        progress = _restore(resume, model, optimizer, average, config, world, device, progress)
    board = None
    if config.tensorboard and world.main:  # rank 0 alone writes the run's files
        board = Board(run_dir, None if resume is None else resume.step)
    return Trainer(
        data=data,
        model_config=model_config,
        config=config,
        run_dir=Path(run_dir),
        world=world,
        device=device,
        batches=batches,
        model=model,
        loss_step=loss_step,
        optimizer=optimizer,
        average=average,
        schedule=schedule,
        stop_rules=StopRules(config),
        progress=progress,
        step_log=runs.StepLog(Path(run_dir)),
        board=board,
        prefixes=prefixes,
        teacher=teacher,
        mixture=mixture,
        log=log,
        progress_bar=progress_bar,
    )


def _restore(
    checkpoint: ckpt.Checkpoint,
    model: CharLSTM,
    optimizer: torch.optim.Optimizer,
    average: WeightAverage | None,
    config: TrainConfig,
    world: World,
    device: torch.device,
    fresh: Progress,
) -> Progress:
    """A resume: the trained weights, the average, the optimizer, the progress (this rank's
    rows of the carried state) and, last, the RNG states."""
    trained = checkpoint.training_model  # set when trained with --ema: model is the average
    model.load_state_dict(trained if trained is not None else checkpoint.model)
    if average is not None:
        average.weights = {k: v.to(device).clone() for k, v in checkpoint.model.items()}
    if checkpoint.optimizer is not None:
        optimizer.load_state_dict(checkpoint.optimizer)
    for group in optimizer.param_groups:  # the learning rate may change on resume
        group["initial_lr"] = config.lr
    progress = Progress.from_checkpoint(checkpoint, fresh.per_epoch)
    carry = progress.carry  # all N rows: this rank carries its share
    if carry is not None:
        if carry[0].shape[1] != config.batch_size:
            raise SettingError(
                f"the checkpoint carries {carry[0].shape[1]} rows of hidden state, not "
                f"{{batch_size}} {config.batch_size}"
            )
        progress.carry = (world.rows(carry[0]), world.rows(carry[1]))
    ckpt.restore_rng(checkpoint.rng)
    return progress

"""From command-line choices to a ready :class:`~charlstm.train.Trainer`.

Settings are layered: dataclass defaults < ``--preset`` < the checkpoint (on ``--resume``)
< options given explicitly. A resumed run keeps its architecture, corpus normalisation
and data order; only the settings in :data:`RESUME_OVERRIDABLE` may change.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from charlstm import __version__, runs
from charlstm import checkpoint as ckpt
from charlstm.config import PRESETS, DataConfig, ModelConfig, TrainConfig
from charlstm.corpus import Corpus, Vocab, read_text, show_chars
from charlstm.errors import CharLSTMError
from charlstm.model import build_model
from charlstm.train import Log, Trainer, resolve_device

#: The demo corpus shipped in the repository (found next to the package in a source checkout).
DEMO_CORPUS = Path(__file__).resolve().parent.parent / "data" / "demo_lyrics.zip"

#: Training settings a resumed run may change; everything else must match the checkpoint.
RESUME_OVERRIDABLE = frozenset(
    {
        "epochs",
        "lr",
        "clip",
        "patience",
        "sample_every",
        "sample_length",
        "prefixes",
        "time_limit",
        "checkpoint_every",
        "device",
    }
)


#: Config fields whose command-line option is not ``--`` + the field name with dashes.
OPTION_NAMES = {"hidden_size": "--hidden", "num_layers": "--layers", "prefixes": "--prefix"}


def option_name(field: str) -> str:
    return OPTION_NAMES.get(field, "--" + field.replace("_", "-"))


def default_corpus() -> Path:
    if not DEMO_CORPUS.is_file():
        raise CharLSTMError(
            f"no corpus given and the demo corpus {DEMO_CORPUS} is missing; "
            "pass a corpus: charlstm train CORPUS.zip"
        )
    return DEMO_CORPUS


def _given(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _preset(name: str | None) -> dict[str, dict[str, Any]]:
    if name is None:
        return {"model": {}, "train": {}}
    if name not in PRESETS:
        raise CharLSTMError(f"unknown --preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


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
    corpus = trainer.corpus
    runs.write_config(
        trainer.run_dir,
        {
            "charlstm_version": __version__,
            "model": asdict(trainer.model_config),
            "train": asdict(trainer.config),
            "data": asdict(trainer.data_config),
            "corpus_chars": len(corpus),
            "train_chars": trainer.cut,
            "val_chars": len(corpus) - trainer.cut,
            "vocab_size": len(corpus.vocab),
            "parameters": trainer.model.num_parameters(),
            "resumed_from": None if resumed_from is None else str(resumed_from),
            "machine": machine(trainer.device),
        },
    )
    runs.write_vocab(trainer.run_dir, corpus.vocab.to_list())


def prepare_training(
    corpus_path: str | Path | None,
    model_options: dict[str, Any],
    train_options: dict[str, Any],
    data_options: dict[str, Any],
    run_dir: str | Path | None = None,
    runs_root: str | Path = "runs",
    resume: str | Path | None = None,
    init_from: str | Path | None = None,
    extend_vocab: bool = False,
    overwrite: bool = False,
    preset: str | None = None,
    log: Log = print,
    progress_bar: bool | None = None,
) -> Trainer:
    """Build the configs, read the corpus and return a trainer (fresh, resumed or fine-tuned).

    Options whose value is ``None`` were not given and fall back to the layer below.
    """
    model_options, train_options = _given(model_options), _given(train_options)
    data_options = _given(data_options)
    if extend_vocab and init_from is None:
        raise CharLSTMError("--extend-vocab is a setting of --init-from (fine-tuning); add it")
    if resume is not None:
        if init_from is not None:
            raise CharLSTMError("--resume and --init-from exclude each other")
        return _resume(
            resume,
            corpus_path,
            model_options,
            train_options,
            data_options,
            run_dir,
            preset,
            log,
            progress_bar,
            overwrite,
        )

    chosen = _preset(preset)
    path = Path(corpus_path) if corpus_path is not None else default_corpus()
    data = DataConfig(path=str(path.resolve()), **data_options).validate()
    train_config = TrainConfig(**{**chosen["train"], **train_options}).validate()
    for switch, settings in (
        ("ngram_teacher", ("teacher_weight", "teacher_folds")),
        ("ngram_mix", ("mix_weight",)),
    ):
        if getattr(train_config, switch):
            continue
        for key in settings:
            if key in train_options:
                raise CharLSTMError(
                    f"{option_name(key)} is a setting of {option_name(switch)}; "
                    f"add {option_name(switch)} N"
                )
    if train_config.val_fraction == 0:
        for key, active in (
            ("patience", train_config.patience > 0),
            ("schedule", train_config.schedule == "plateau"),
        ):
            if key in train_options and active:
                raise CharLSTMError(
                    f"{option_name(key)} {train_options[key]} follows the held-out loss, "
                    "but --val-fraction 0 leaves no held-out part"
                )
    resolve_device(train_config.device)  # before any file is read or written
    init_weights = None
    if init_from is not None:
        base = ckpt.load(ckpt.resolve(init_from, prefer="best.pt", runs_root=runs_root))
        text = read_text(data.path, data.member, data.encoding, data.newlines, data.max_chars)
        missing = base.vocab.missing(text)
        vocab = base.vocab
        if missing and not extend_vocab:
            raise CharLSTMError(
                f"{len(missing)} characters of the new corpus are not in the checkpoint's "
                f"vocabulary: {show_chars(missing)}; pass --extend-vocab to add them"
            )
        arch = {
            k: v
            for k, v in model_options.items()
            if k not in ("dropout", "embed_dropout", "weight_drop", "variational")
        }
        _check_same(
            base.model_config, arch, "--init-from checkpoint", "fine-tuning keeps the architecture"
        )
        model_config = replace(base.model_config, **model_options)
        init_weights = base.model
        if missing:
            vocab = base.vocab.extend(missing)
            init_weights = extend_vocab_weights(
                base.model, base.model_config, len(vocab), train_config.seed
            )
            model_config = replace(model_config, vocab_size=len(vocab))
        corpus = Corpus.from_text(text, vocab)
    else:
        corpus = load_corpus(data)
        model_config = ModelConfig(
            vocab_size=len(corpus.vocab), **{**chosen["model"], **model_options}
        ).validate()
    model_config.validate()
    if model_options.get("scratch_impl") is not None and model_config.backend != "scratch":
        raise CharLSTMError(
            "--scratch-impl needs --backend scratch (it chooses how the scratch layer runs)"
        )
    if run_dir is None:
        run_dir = Path(runs_root) / runs.default_run_name(path, model_config.backend)
    _check_prefixes(train_config.prefixes, corpus.vocab)
    runs.check_new_run_dir(run_dir, overwrite)  # refuse early, before any work
    # Everything that can be wrong with the input is found while building the trainer;
    # only then is the run directory created (or emptied, with --overwrite).
    trainer = Trainer(
        corpus,
        model_config,
        train_config,
        data,
        Path(run_dir),
        init_weights=init_weights,
        log=log,
        progress_bar=progress_bar,
    )
    runs.prepare_run_dir(run_dir, overwrite=overwrite)
    _write_run_files(trainer, None)
    return trainer


def _check_prefixes(prefixes: list[str], vocab: Vocab) -> None:
    """Training samples continue each ``--prefix``: check them now, not after an epoch."""
    for prefix in prefixes:
        if not prefix:
            raise CharLSTMError("--prefix is empty; give at least one character")
        missing = vocab.missing(prefix)
        if missing:
            raise CharLSTMError(
                f"--prefix {prefix!r} has characters not in the corpus's vocabulary: "
                f"{show_chars(missing)}"
            )


def _check_same(config: Any, options: dict[str, Any], what: str, rule: str) -> None:
    """Raise, naming the option and ``rule``, when an option differs from ``config``."""
    for key, value in options.items():
        current = getattr(config, key)
        if current != value:
            raise CharLSTMError(
                f"{option_name(key)} {value} differs from the {what}'s {current}; {rule}"
            )


def _resume(
    resume: str | Path,
    corpus_path: str | Path | None,
    model_options: dict[str, Any],
    train_options: dict[str, Any],
    data_options: dict[str, Any],
    run_dir: str | Path | None,
    preset: str | None,
    log: Log,
    progress_bar: bool | None,
    overwrite: bool = False,
) -> Trainer:
    """Continue the run in ``resume`` (a run directory: its ``last.pt``; or a checkpoint).

    The run goes on in the checkpoint's directory, or in ``run_dir`` when given (a branch:
    the logs up to the checkpoint are copied there). Nothing is written before every
    setting has been checked.
    """
    if preset is not None:
        raise CharLSTMError("--preset applies to new runs; a resumed run keeps its settings")
    source = ckpt.resolve(resume, prefer="last.pt")
    checkpoint = ckpt.load(source)
    _check_same(
        checkpoint.model_config, model_options, "checkpoint", "a resumed run keeps its architecture"
    )
    _check_same(
        checkpoint.data_config, data_options, "checkpoint", "a resumed run reads its corpus alike"
    )
    fixed = {k: v for k, v in train_options.items() if k not in RESUME_OVERRIDABLE}
    may_change = ", ".join(sorted(option_name(k) for k in RESUME_OVERRIDABLE))
    _check_same(
        checkpoint.train_config,
        fixed,
        "checkpoint",
        f"a resumed run keeps it (these may change on --resume: {may_change})",
    )
    overrides = {k: v for k, v in train_options.items() if k in RESUME_OVERRIDABLE}
    train_config = replace(checkpoint.train_config, **overrides).validate()
    resolve_device(train_config.device)
    if checkpoint.epoch >= train_config.epochs:
        raise CharLSTMError(
            f"the run has already trained {checkpoint.epoch} epochs; pass a larger --epochs "
            "(the new total) to continue"
        )
    data = checkpoint.data_config
    if corpus_path is not None:
        data = replace(data, path=str(Path(corpus_path).resolve()))
    elif not Path(data.path).is_file():
        raise CharLSTMError(
            f"the run's corpus {data.path} is not here; pass it: charlstm train CORPUS --resume ..."
        )
    corpus = load_corpus(data, checkpoint.vocab)
    if checkpoint.corpus_sha256 and corpus.fingerprint() != checkpoint.corpus_sha256:
        raise CharLSTMError(
            f"{data.path} is not the text this run trained on (its content differs); a resumed "
            "run reads the same text: pass the original corpus, or start a new run from this "
            "one with --init-from"
        )
    _check_prefixes(train_config.prefixes, corpus.vocab)
    directory = Path(run_dir) if run_dir is not None else source.parent
    branch = not (directory.exists() and directory.resolve() == source.parent.resolve())
    if overwrite and not branch:
        raise CharLSTMError(
            "--overwrite has nothing to replace: a resume continues its own run directory "
            "(to branch over another run, give --run-dir DIR --overwrite)"
        )
    if branch:
        runs.check_new_run_dir(directory, overwrite)  # never write over another run
    trainer = Trainer(
        corpus,
        checkpoint.model_config,
        train_config,
        data,
        directory,
        resume=checkpoint,
        log=log,
        progress_bar=progress_bar,
    )
    if branch:
        runs.prepare_run_dir(directory, overwrite=overwrite)
    else:
        runs.ensure_writable(directory)
    for stray in ckpt.remove_partial_writes(directory):
        log(f"removed {stray}, a checkpoint write cut short by a crash (the checkpoints are whole)")
    # logs written after the checkpoint we resume from belong to a lost future
    runs.rewind(source.parent, directory, checkpoint.epoch, checkpoint.step)
    _write_run_files(trainer, source)
    log(
        f"resuming {source} at epoch {checkpoint.epoch + 1}, batch {checkpoint.batch}, "
        f"step {checkpoint.step}"
    )
    return trainer

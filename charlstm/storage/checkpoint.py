"""Checkpoints: one dict of plain data, written atomically, loaded without running code.

A checkpoint holds everything a run needs to continue exactly where it stopped::

    format_version   int
    model_config     dict (ModelConfig)        train_config  dict (TrainConfig)
    data_config      dict (DataConfig)         idx_to_char   list[str]; char_to_idx dict
    model            state dict                optimizer     state dict or None
    rng              {"torch": ByteTensor, "cuda": [...]}  (the learning-rate schedule is
                     derived from ``step`` and ``progress``: it has no state of its own)
    epoch            completed epochs          batch         next batch within epoch ``epoch``
    step             optimizer steps so far    best_val_loss float (inf when none)
    progress         {"loss_sum", "chars", "bad_epochs", "carry"}: mid-epoch training state
    training_model   state dict or None: with ``--ema``, the weights being trained (``model``
                     then holds their moving average, the weights to score and sample with)
    ngram_text       str or None: with ``--ngram-mix``, the training text the interpolated
                     n-gram is fitted on (see :mod:`charlstm.ngram.mixture`)
    corpus_sha256    str or None: SHA-256 of the corpus text as read (after normalisation),
                     so that ``--resume`` can tell the same text from another one

It is read with ``torch.load(weights_only=True)``, so a file from elsewhere cannot run code,
and always onto the CPU first (a GPU checkpoint loads on a machine without one). Whatever is
wrong with a file (missing, empty, truncated, not a checkpoint, unsafe, from a newer
charlstm, weights that do not fit the recorded architecture) becomes one ``CharLSTMError``
line naming the file and the problem.

Format versions: ``1`` is the layout above. ``0`` is the layout written before checkpoints
carried a version: no ``format_version``, ``char_to_idx``, ``batch`` or ``progress`` (it
was saved at epoch ends only); it is upgraded on load and resumes at the next epoch.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from charlstm.config import DataConfig, ModelConfig, TrainConfig
from charlstm.data.corpus import Vocab
from charlstm.errors import CharLSTMError, WriteFailed
from charlstm.fields import SettingError
from charlstm.model import CharLSTM, build_model
from charlstm.storage.runs import then_for
from charlstm.storage.safe_io import fsync_dir, write_failed

#: Bumped when the layout changes; older versions listed in ``_UPGRADES`` still load.
FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "format_version",
    "model_config",
    "train_config",
    "data_config",
    "idx_to_char",
    "model",
)


@dataclass
class Checkpoint:
    """The contents of a checkpoint file, as Python objects."""

    model_config: ModelConfig
    train_config: TrainConfig
    data_config: DataConfig
    vocab: Vocab
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None = None
    rng: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_val_loss: float = math.inf
    progress: dict[str, Any] = field(default_factory=dict)
    # With --ema: the trained weights; ``model`` is then their average (see train.Trainer).
    training_model: dict[str, torch.Tensor] | None = None
    # With --ngram-mix: the text the interpolated n-gram is fitted on (charlstm.ngram.mixture).
    ngram_text: str | None = None
    corpus_sha256: str | None = None  # of the corpus text as read (None: older checkpoints)
    path: Path | None = None  # where it was loaded from

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model_config": asdict(self.model_config),
            "train_config": asdict(self.train_config),
            "data_config": asdict(self.data_config),
            "idx_to_char": self.vocab.to_list(),
            "char_to_idx": dict(self.vocab.char_to_idx),
            "model": self.model,
            "optimizer": self.optimizer,
            "rng": self.rng,
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "best_val_loss": float(self.best_val_loss),
            "progress": self.progress,
            "training_model": self.training_model,
            "ngram_text": self.ngram_text,
            "corpus_sha256": self.corpus_sha256,
        }


def save(checkpoint: Checkpoint, path: str | Path) -> Path:
    """Write ``checkpoint`` to ``path`` atomically.

    The data goes to a temporary file in the same directory, is flushed and fsync'ed, and
    only then renamed over ``path``: a crash at any moment leaves either the old file or
    the new one, never a torn one (at worst a stray ``.NAME.*.tmp`` file, which
    :func:`remove_partial_writes` deletes). Weights that are NaN or infinite are refused,
    so a diverged run never replaces its last good checkpoint.

    A failed write (disk full, file too large, read-only or failing disk; torch reports
    some of them as ``RuntimeError: [enforce fail at inline_container.cc...]``) raises
    :class:`~charlstm.errors.WriteFailed`: one line naming the file and how to go on. The
    temporary file is removed and the previous checkpoint stays whole.
    """
    path = Path(path)
    weights = [checkpoint.model, checkpoint.training_model or {}]
    bad = [name for w in weights for name, t in w.items() if not torch.isfinite(t).all()]
    if bad:
        raise CharLSTMError(
            f"not writing {path}: the model's weights became NaN or infinite by step "
            f"{checkpoint.step} (training diverged); the previous {path.name} is kept: "
            "resume from it with a lower --lr or a smaller --clip"
        )
    tmp_name: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            torch.save(checkpoint.to_dict(), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as err:
        raise _write_failed(path, err) from err
    except RuntimeError as err:
        if not _torn_by_torch(err):
            raise
        cause = err.__context__ if isinstance(err.__context__, OSError) else None
        raise _write_failed(path, cause) from err
    finally:
        if tmp_name is not None:  # the write failed: no half-written file stays behind
            Path(tmp_name).unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def save_as(checkpoint: Checkpoint, paths: list[Path]) -> None:
    """Write ``checkpoint`` at every one of ``paths`` (all in one directory), serialised once.

    The first is written by :func:`save`; the others become hard links to it, each made
    under a temporary name and renamed over its target, so every name is at any moment
    the old file or the whole new one, as with :func:`save`. Where the file system has no
    hard links the others are written by :func:`save` too.
    """
    first, *others = paths
    save(checkpoint, first)
    for path in others:
        try:
            _link_atomic(first, path)
        except OSError:  # no hard links here (some network or FAT file systems)
            save(checkpoint, path)


def _link_atomic(source: Path, path: Path) -> None:
    """``path`` becomes another name of ``source``: a hard link renamed over it."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp"
        try:
            os.link(source, tmp)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temporary name beside {path}")
    try:
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _torn_by_torch(err: RuntimeError) -> bool:
    """torch.save reports a failed write (disk full, file too large) as a RuntimeError:
    ``[enforce fail at inline_container.cc:...] . unexpected pos ...``."""
    text = str(err)
    return any(
        mark in text for mark in ("inline_container", "unexpected pos", "PytorchStreamWriter")
    )


def _write_failed(path: Path, err: OSError | None) -> WriteFailed:
    note = f"the previous {path.name} is kept, whole" if path.is_file() else ""
    # a run's own checkpoint: resume it; another file (charlstm convert --out): write it again
    then = then_for(path.parent) if path.name in ("last.pt", "best.pt") else "run the command again"
    return write_failed(path, err, then, note, what="checkpoint")


def remove_partial_writes(directory: str | Path) -> list[Path]:
    """Delete temporary files a crash left in the middle of :func:`save`; return them."""
    stray = sorted(Path(directory).glob(".*.pt.*.tmp"))
    for tmp in stray:
        tmp.unlink(missing_ok=True)
    return stray


def _from_v0(data: dict[str, Any]) -> dict[str, Any]:
    """Version 0 was saved at epoch ends only and had no ``char_to_idx`` or progress."""
    vocab = data.get("idx_to_char")
    return {
        **data,
        "format_version": 1,
        "char_to_idx": {ch: i for i, ch in enumerate(vocab)} if isinstance(vocab, list) else {},
        "batch": 0,
        "progress": {},
    }


#: ``version -> function`` turning that layout into the next one.
_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _from_v0}


def _upgrade(data: dict[str, Any], path: Path) -> dict[str, Any]:
    if "format_version" not in data:
        if not any(key in data for key in REQUIRED_KEYS):
            raise CharLSTMError(
                f"not a charlstm checkpoint: {path} holds a {type(data).__name__} without "
                "format_version, model or model_config"
            )
        data = {**data, "format_version": 0}  # written before checkpoints had a version
    version = data["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise CharLSTMError(f"checkpoint {path} has an invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise CharLSTMError(
            f"checkpoint {path} has format version {version}, newer than this charlstm "
            f"reads ({FORMAT_VERSION}); upgrade charlstm"
        )
    while version < FORMAT_VERSION:
        if version not in _UPGRADES:
            raise CharLSTMError(f"checkpoint {path} has unsupported format version {version}")
        data = _UPGRADES[version](data)
        version = data["format_version"]
    return data


def _read(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``; every failure is one clear line."""
    if not path.exists():
        raise CharLSTMError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CharLSTMError(f"checkpoint is a directory: {path}")
    if path.stat().st_size == 0:
        raise CharLSTMError(f"checkpoint {path} is empty (0 bytes)")
    # torch.save has written zip archives since PyTorch 1.6; anything else is not ours
    # (and the legacy format is never unpickled).
    if not zipfile.is_zipfile(path):
        raise CharLSTMError(
            f"not a readable charlstm checkpoint: {path} is not a PyTorch checkpoint file "
            "(truncated, corrupt, or some other kind of file)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CharLSTMError(f"not a readable charlstm checkpoint (corrupt zip): {path}") from err
    if not any(name.endswith("/data.pkl") for name in names):
        raise CharLSTMError(
            f"not a readable charlstm checkpoint: {path} is a zip archive without PyTorch data "
            "(a corpus? pass a run directory or a .pt file)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's warnings would add lines to stderr
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"unpickling it would import {found.group(1)}" if found else "it holds objects"
        raise CharLSTMError(
            f"refusing to load {path}: {what}, but a charlstm checkpoint holds only tensors "
            "and plain data (nothing in the file was run)"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as err:
        raise CharLSTMError(
            f"not a readable charlstm checkpoint (corrupt or truncated): {path}"
        ) from err


def mismatched_weights(weights: dict[str, torch.Tensor], model: CharLSTM) -> list[str]:
    """The names in ``weights`` missing from ``model``'s, extra, or of another shape."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    return sorted(set(found) ^ set(expected)) or sorted(k for k in found if found[k] != expected[k])


def _check_weights(data: dict[str, Any], model: CharLSTM, vocab: Vocab, path: Path) -> None:
    """The weights must be exactly those of ``model``, built from the recorded architecture
    (names and shapes)."""
    config = model.config
    if len(vocab) != config.vocab_size:
        raise CharLSTMError(
            f"checkpoint {path} is inconsistent: {len(vocab)} characters in its vocabulary "
            f"but a model for {config.vocab_size}"
        )
    for key in ("model", "training_model"):
        weights = data.get(key)
        if key == "training_model" and weights is None:
            continue
        if not isinstance(weights, dict) or not all(
            isinstance(t, torch.Tensor) for t in weights.values()
        ):
            raise CharLSTMError(f"checkpoint {path} is malformed: its {key} is not a state dict")
        wrong = mismatched_weights(weights, model)
        if wrong:
            raise CharLSTMError(
                f"checkpoint {path} does not match its model configuration "
                f"({len(wrong)} weights differ, e.g. {wrong[0]})"
            )


def _ngram_text(data: dict[str, Any], path: Path) -> str | None:
    """The interpolated n-gram's training text, present exactly when the run has one."""
    text = data.get("ngram_text")
    wanted = bool((data.get("train_config") or {}).get("ngram_mix"))
    if wanted and not (isinstance(text, str) and text):
        raise CharLSTMError(
            f"checkpoint {path} is malformed: its model interpolates an n-gram "
            "(--ngram-mix) but the n-gram's text is missing"
        )
    return text if wanted else None


def load(path: str | Path) -> Checkpoint:
    """Read a checkpoint file onto the CPU; any problem is one ``CharLSTMError`` line."""
    return load_with_model(path)[0]


def load_with_model(path: str | Path) -> tuple[Checkpoint, CharLSTM]:
    """Read a checkpoint file (or an exported model's directory) onto the CPU and build its
    model, holding its weights.

    The model is built once, from the recorded architecture (without touching the caller's
    random state), and the weights are checked against it; any problem is one
    ``CharLSTMError`` line.
    """
    path = Path(path)
    from charlstm.storage.export import is_export, load_export  # it imports this module

    if is_export(path):
        return load_export(path)
    data = _read(path)
    if not isinstance(data, dict):
        raise CharLSTMError(
            f"not a charlstm checkpoint: {path} holds a {type(data).__name__}, not a checkpoint"
        )
    data = _upgrade(data, path)
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise CharLSTMError(f"checkpoint {path} is missing {', '.join(missing)}")
    try:
        model_config = ModelConfig.from_dict(data["model_config"])
        vocab = Vocab(data["idx_to_char"])
        with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
            model = build_model(model_config)  # model_config was checked when made
        _check_weights(data, model, vocab, path)
        model.load_state_dict(data["model"])
        checkpoint = Checkpoint(
            model_config=model_config,
            train_config=TrainConfig.from_dict(data["train_config"]),
            data_config=DataConfig.from_dict(data["data_config"]),
            vocab=vocab,
            model=data["model"],
            optimizer=data.get("optimizer"),
            rng=data.get("rng") or {},
            epoch=int(data.get("epoch", 0)),
            batch=int(data.get("batch", 0)),
            step=int(data.get("step", 0)),
            best_val_loss=float(data.get("best_val_loss", math.inf)),
            progress=data.get("progress") or {},
            training_model=data.get("training_model"),
            ngram_text=_ngram_text(data, path),
            corpus_sha256=data.get("corpus_sha256"),
            path=path,
        )
    except CharLSTMError as err:
        if str(path) in str(err):
            raise
        raise CharLSTMError(f"checkpoint {path} is malformed: {err}") from err
    except (TypeError, ValueError, AttributeError) as err:
        raise CharLSTMError(f"checkpoint {path} is malformed: {err}") from err
    except RuntimeError as err:  # load_state_dict: what the shape check cannot see
        raise CharLSTMError(f"checkpoint {path} does not match its model configuration") from err
    return checkpoint, model


def resolve(
    path: str | Path | None, prefer: str = "best.pt", runs_root: str | Path = "runs"
) -> Path:
    """Turn ``RUN_DIR | EXPORT_DIR | FILE | None`` into what :func:`load_with_model` reads.

    A run directory gives its ``prefer`` file (``best.pt`` for generating, ``last.pt`` for
    resuming), falling back to the other; an exported model's directory
    (:mod:`charlstm.storage.export`) is itself; ``None`` means the newest run under
    ``runs_root``.
    """
    if path is None:
        from charlstm.storage.runs import latest_run

        path = latest_run(runs_root)
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    if path.is_dir():
        other = "last.pt" if prefer == "best.pt" else "best.pt"
        for name in (prefer, other):
            if (path / name).is_file():
                return path / name
        if (path / "config.json").is_file():
            raise SettingError(
                f"no checkpoint (best.pt or last.pt) in {path}: the run stopped before its "
                "first checkpoint was written; start it again with the same command and "
                "{overwrite}",
                arguments=("overwrite",),
            )
        raise CharLSTMError(f"no checkpoint (best.pt or last.pt) in {path}")
    if not path.exists():
        raise CharLSTMError(f"checkpoint not found: {path}")
    return path


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)

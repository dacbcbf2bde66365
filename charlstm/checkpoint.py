"""Checkpoints: one dict of plain data, written atomically, loaded without running code.

A checkpoint holds everything a run needs to continue exactly where it stopped::

    format_version   int
    model_config     dict (ModelConfig)        train_config  dict (TrainConfig)
    data_config      dict (DataConfig)         idx_to_char   list[str]; char_to_idx dict
    model            state dict                optimizer     state dict or None
    scheduler        state dict or None        rng           {"torch": ByteTensor, "cuda": [...]}
    epoch            completed epochs          batch         next batch within epoch ``epoch``
    step             optimizer steps so far    best_val_loss float (inf when none)
    progress         {"loss_sum", "chars", "bad_epochs", "carry"}: mid-epoch training state

It is read with ``torch.load(weights_only=True)``, so a file from elsewhere cannot run code,
and always onto the CPU first (a GPU checkpoint loads on a machine without one).
"""

from __future__ import annotations

import math
import os
import pickle
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from charlstm.config import DataConfig, ModelConfig, TrainConfig
from charlstm.corpus import Vocab
from charlstm.errors import CharLSTMError

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
    scheduler: dict[str, Any] | None = None
    rng: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_val_loss: float = math.inf
    progress: dict[str, Any] = field(default_factory=dict)
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
            "scheduler": self.scheduler,
            "rng": self.rng,
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "best_val_loss": float(self.best_val_loss),
            "progress": self.progress,
        }


def save(checkpoint: Checkpoint, path: str | Path) -> Path:
    """Write ``checkpoint`` to ``path`` atomically.

    The data goes to a temporary file in the same directory, is flushed and fsync'ed, and
    only then renamed over ``path``: a crash at any moment leaves either the old file or
    the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(checkpoint.to_dict(), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _upgrade(data: dict[str, Any], path: Path) -> dict[str, Any]:
    version = data.get("format_version")
    if not isinstance(version, int):
        raise CharLSTMError(f"not a charlstm checkpoint (no format version): {path}")
    if version > FORMAT_VERSION:
        raise CharLSTMError(
            f"checkpoint {path} has format version {version}, newer than this charlstm "
            f"reads ({FORMAT_VERSION}); upgrade charlstm"
        )
    if version < 1:
        raise CharLSTMError(f"checkpoint {path} has unsupported format version {version}")
    return data


def load(path: str | Path) -> Checkpoint:
    """Read a checkpoint file onto the CPU; any problem is one ``CharLSTMError`` line."""
    path = Path(path)
    if not path.exists():
        raise CharLSTMError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CharLSTMError(f"checkpoint is a directory: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unsafe content"
        raise CharLSTMError(
            f"refusing to load {path}: not a plain-data charlstm checkpoint ({first[:120]})"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as err:
        raise CharLSTMError(
            f"not a readable charlstm checkpoint (corrupt or truncated): {path}"
        ) from err
    if not isinstance(data, dict):
        raise CharLSTMError(f"not a charlstm checkpoint: {path}")
    data = _upgrade(data, path)
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise CharLSTMError(f"checkpoint {path} is missing {', '.join(missing)}")
    try:
        return Checkpoint(
            model_config=ModelConfig.from_dict(data["model_config"]),
            train_config=TrainConfig.from_dict(data["train_config"]),
            data_config=DataConfig.from_dict(data["data_config"]),
            vocab=Vocab(data["idx_to_char"]),
            model=data["model"],
            optimizer=data.get("optimizer"),
            scheduler=data.get("scheduler"),
            rng=data.get("rng") or {},
            epoch=int(data.get("epoch", 0)),
            batch=int(data.get("batch", 0)),
            step=int(data.get("step", 0)),
            best_val_loss=float(data.get("best_val_loss", math.inf)),
            progress=data.get("progress") or {},
            path=path,
        )
    except (TypeError, ValueError, AttributeError) as err:
        raise CharLSTMError(f"checkpoint {path} is malformed: {err}") from err


def resolve(
    path: str | Path | None, prefer: str = "best.pt", runs_root: str | Path = "runs"
) -> Path:
    """Turn ``RUN_DIR | FILE | None`` into a checkpoint file.

    A run directory gives its ``prefer`` file (``best.pt`` for generating, ``last.pt`` for
    resuming), falling back to the other; ``None`` means the newest run under ``runs_root``.
    """
    if path is None:
        from charlstm.runs import latest_run

        path = latest_run(runs_root)
    path = Path(path)
    if path.is_dir():
        other = "last.pt" if prefer == "best.pt" else "best.pt"
        for name in (prefer, other):
            if (path / name).is_file():
                return path / name
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

"""Run directories: ``runs/<name>/`` holding ``config.json``, ``vocab.json``,
``metrics.jsonl`` (one line per epoch), ``steps.jsonl`` (one line per optimizer step),
``last.pt`` and ``best.pt``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

from charlstm.errors import CharLSTMError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
STEPS_FILE = "steps.jsonl"
LAST = "last.pt"
BEST = "best.pt"


def default_run_name(corpus: str | Path, backend: str) -> str:
    stem = Path(corpus).name.split(".")[0] or "corpus"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{stem}-{backend}"


def prepare_run_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Create a fresh run directory; refuse to reuse one that holds a run unless ``overwrite``."""
    path = check_new_run_dir(path, overwrite)
    if holds_run(path):
        for name in (LAST, BEST, CONFIG_FILE, METRICS_FILE, STEPS_FILE):
            (path / name).unlink(missing_ok=True)
    return ensure_writable(path)


def check_new_run_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Raise unless a new run may be written to ``path`` (writes nothing)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CharLSTMError(f"run directory is a file: {path}")
    if holds_run(path) and not overwrite:
        raise CharLSTMError(
            f"run directory {path} already holds a run; pass --resume {path} to continue "
            "it or --overwrite to replace it"
        )
    return path


def holds_run(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and any((path / name).exists() for name in (LAST, BEST, CONFIG_FILE))


def ensure_writable(path: str | Path) -> Path:
    """Create ``path`` if needed and check that files can be written in it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise CharLSTMError(f"cannot write to run directory {path}: {err.strerror or err}") from err
    return path


def latest_run(root: str | Path = "runs") -> Path:
    """The most recently modified run directory (one holding a checkpoint) under ``root``."""
    root = Path(root)
    candidates = (
        [d for d in root.glob("*") if d.is_dir() and ((d / BEST).exists() or (d / LAST).exists())]
        if root.is_dir()
        else []
    )
    if not candidates:
        raise CharLSTMError(
            f"no trained run found under {root}/; train one with 'charlstm train' "
            "or pass --checkpoint"
        )
    return max(candidates, key=lambda d: max(f.stat().st_mtime for f in d.glob("*.pt")))


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    (run_dir / CONFIG_FILE).write_text(
        json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    with open(run_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    return _read_jsonl(Path(run_dir) / METRICS_FILE)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-write
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8"
    )


def read_steps(run_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of ``steps.jsonl``: ``{"step", "epoch", "batch", "loss", "lr"}`` per optimizer step.

    ``loss`` is the training loss of that step's batch (mean nats per character), written
    with full float precision, so two runs can be compared step by step exactly.
    """
    return _read_jsonl(Path(run_dir) / STEPS_FILE)


def rewind(source: str | Path, target: str | Path, epoch: int, step: int) -> None:
    """Make ``target``'s logs those of ``source`` up to a checkpoint at ``epoch`` / ``step``.

    Rows written after that checkpoint (by a run killed before its next checkpoint, or by
    the later epochs of a run resumed from ``best.pt``) describe a future that resuming
    will replay, so they are dropped. ``source`` and ``target`` may be the same directory.
    """
    source, target = Path(source), Path(target)
    metrics = [r for r in _read_jsonl(source / METRICS_FILE) if r.get("epoch", 0) <= epoch]
    steps = [r for r in _read_jsonl(source / STEPS_FILE) if r.get("step", 0) <= step]
    _write_jsonl(target / METRICS_FILE, metrics)
    _write_jsonl(target / STEPS_FILE, steps)


class StepLog:
    """Appends one ``steps.jsonl`` row per optimizer step.

    Rows are buffered (a step costs one small string format); :meth:`flush` is called
    before every checkpoint, so the log always covers at least the steps ``last.pt`` holds.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / STEPS_FILE
        self._handle: IO[str] | None = None

    def write(self, step: int, epoch: int, batch: int, loss: float, lr: float) -> None:
        if self._handle is None:
            self._handle = open(self.path, "a", encoding="utf-8")
        self._handle.write(
            f'{{"step": {step}, "epoch": {epoch}, "batch": {batch}, '
            f'"loss": {json.dumps(loss)}, "lr": {json.dumps(lr)}}}\n'
        )

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

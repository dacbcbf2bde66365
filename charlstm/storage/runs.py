"""Run directories: ``runs/<name>/`` holding ``config.json``, ``vocab.json``,
``metrics.jsonl`` (one line per epoch), ``steps.jsonl`` (one line per optimizer step),
``last.pt`` and ``best.pt``, ``tensorboard/`` with ``--tensorboard`` (see
:mod:`charlstm.storage.board`), and ``.lock`` (see :mod:`charlstm.storage.locking`).

A run directory has one writer: :func:`prepare_run_dir` and :func:`ensure_writable` take
its lock, held until :func:`release_run_dir` or the end of the process; another trainer is
refused at once. Readers need no lock: JSON files are replaced atomically and the logs are
appended a whole line at a time (a reader ignores a torn last line; see
:mod:`charlstm.storage.safe_io`). A failed write is one :class:`~charlstm.errors.WriteFailed` line
that says how to continue.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from charlstm.errors import CharLSTMError
from charlstm.storage import locking, safe_io

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
STEPS_FILE = "steps.jsonl"
LAST = "last.pt"
BEST = "best.pt"
VOCAB_FILE = "vocab.json"
RUN_FILES = (LAST, BEST, CONFIG_FILE, VOCAB_FILE, METRICS_FILE, STEPS_FILE)
#: The TensorBoard event files of a run trained with --tensorboard (charlstm.storage.board).
TENSORBOARD_DIR = "tensorboard"
WHAT = "run directory"


def run_lock(path: str | Path, what: str = WHAT) -> AbstractContextManager[Path]:
    """``with run_lock(DIR):`` holds ``DIR``'s writer lock for the block (creating ``DIR``).

    The same lock guards any directory a command writes, e.g. a prepared corpus:
    ``with runs.run_lock(out, what="prepared-corpus directory"):``. Another process holding
    it raises :class:`~charlstm.errors.Locked` (exit code 1) naming its pid.
    """
    return locking.exclusive(path, what)


def release_run_dir(path: str | Path) -> None:
    """Give up the lock :func:`prepare_run_dir` / :func:`ensure_writable` took (a library
    caller that trains and then lets other processes use the run; the CLI just exits)."""
    locking.release(path)


def then_for(run_dir: str | Path) -> str:
    """What to do after a failed write in ``run_dir``, once the cause is fixed."""
    run_dir = Path(run_dir)
    if (run_dir / LAST).is_file() or (run_dir / BEST).is_file():
        return f"resume with: charlstm train --resume {shlex.quote(str(run_dir))}"
    if (run_dir / CONFIG_FILE).is_file():  # a run stopped before its first checkpoint
        return "start the run again with the same command and --overwrite"
    return "run the command again"


def default_run_name(corpus: str | Path, backend: str) -> str:
    stem = Path(corpus).name.split(".")[0] or "corpus"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{stem}-{backend}"


def prepare_run_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Create a fresh run directory; refuse to reuse one that holds a run unless ``overwrite``."""
    path = check_new_run_dir(path, overwrite)
    path = ensure_writable(path)  # takes the lock: nothing of a live run is deleted
    if holds_run(path):
        for name in RUN_FILES:
            (path / name).unlink(missing_ok=True)
        safe_io.remove_temporary(path, RUN_FILES)
        shutil.rmtree(path / TENSORBOARD_DIR, ignore_errors=True)
    return path


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
    if path.is_dir():
        locking.check_free(path, WHAT)  # a live run is never replaced, even with --overwrite
    return path


def holds_run(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and any((path / name).exists() for name in (LAST, BEST, CONFIG_FILE))


def ensure_writable(path: str | Path) -> Path:
    """Create ``path`` if needed, take its writer lock and check that files can be written.

    Raises :class:`~charlstm.errors.Locked` when another process holds the lock.
    """
    path = Path(path)
    probe = path / ".write-test"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CharLSTMError(f"cannot write to run directory {path}: {err.strerror or err}") from err
    locking.hold(path, WHAT)
    try:
        probe.write_text("")
    except OSError as err:
        raise CharLSTMError(f"cannot write to run directory {path}: {err.strerror or err}") from err
    finally:
        probe.unlink(missing_ok=True)
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
    safe_io.write_atomic(
        run_dir / CONFIG_FILE,
        json.dumps(config, ensure_ascii=False, indent=2) + "\n",
        then_for(run_dir),
    )


def write_vocab(run_dir: Path, chars: list[str]) -> None:
    """``vocab.json``: the vocabulary, index order (torch-rnn keeps it beside the tokens)."""
    safe_io.write_atomic(
        run_dir / VOCAB_FILE, json.dumps(chars, ensure_ascii=False) + "\n", then_for(run_dir)
    )


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    line = json.dumps(row, ensure_ascii=False) + "\n"
    safe_io.append_lines(run_dir / METRICS_FILE, [line], then_for(run_dir))


#: Fields of a metrics row that are numbers (or null); another value reads as null.
METRIC_NUMBERS = (
    "train_loss", "train_ppl", "val_loss", "val_ppl", "lr", "seconds", "chars_per_sec",
)  # fmt: skip


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number_or_none(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl``, one per epoch as written.

    A damaged file never raises: torn or unreadable lines and rows without an integer
    ``epoch`` are left out, and a number field holding something else reads as ``None``.
    """
    rows = []
    for row in _read_jsonl(Path(run_dir) / METRICS_FILE):
        if not _is_int(row.get("epoch")) or not _is_int(row.get("step", 0)):
            continue
        for key in METRIC_NUMBERS:
            if key in row:
                row[key] = _number_or_none(row[key])
        rows.append(row)
    return rows


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects in ``path``, one per whole line; anything else is skipped."""
    rows = []
    for line in safe_io.read_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue  # a line torn or damaged by a crash, or not ours
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    safe_io.write_atomic(
        path,
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
        then_for(path.parent),
    )


def read_steps(run_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of ``steps.jsonl``: ``{"step", "epoch", "batch", "loss", "lr", "grad_norm"}`` per
    optimizer step (an older run's rows have no ``grad_norm``).

    ``loss`` is the training loss of that step's batch (mean nats per character), written
    with full float precision, so two runs can be compared step by step exactly;
    ``grad_norm`` the global norm of that step's gradient, before clipping. Torn or
    damaged lines, and rows without an integer ``step``, are left out.
    """
    return [r for r in _read_jsonl(Path(run_dir) / STEPS_FILE) if _is_int(r.get("step"))]


def rewind(source: str | Path, target: str | Path, epoch: int, step: int) -> None:
    """Make ``target``'s logs those of ``source`` up to a checkpoint at ``epoch`` / ``step``.

    Rows written after that checkpoint (by a run killed before its next checkpoint, or by
    the later epochs of a run resumed from ``best.pt``) describe a future that resuming
    will replay, so they are dropped; so are torn or damaged lines, and a row repeating an
    epoch or step already kept. ``source`` and ``target`` may be the same directory. Both
    logs are replaced atomically: a crash while rewinding leaves the old ones.
    """
    source, target = Path(source), Path(target)
    metrics = _increasing(read_metrics(source), "step", step)
    steps = _increasing(read_steps(source), "step", step)
    safe_io.remove_temporary(target, (METRICS_FILE, STEPS_FILE))
    _write_jsonl(target / METRICS_FILE, metrics)
    _write_jsonl(target / STEPS_FILE, steps)


def _increasing(rows: list[dict[str, Any]], key: str, last: int) -> list[dict[str, Any]]:
    """The rows up to ``row[key] == last`` whose ``key`` goes up (one row per value)."""
    kept: list[dict[str, Any]] = []
    for row in rows:
        value = row.get(key, 0)
        if value <= last and (not kept or value > kept[-1].get(key, 0)):
            kept.append(row)
    return kept


class StepLog:
    """Appends one ``steps.jsonl`` row per optimizer step.

    Rows are buffered (a step costs one small string format) and appended whole, a batch
    at a time, by :meth:`flush`, which runs before every checkpoint: the log always covers
    at least the steps ``last.pt`` holds, and never ends in half a line. A failed write
    raises :class:`~charlstm.errors.WriteFailed` and leaves the file as it was.
    """

    #: Rows kept before they are appended without waiting for a checkpoint.
    BUFFER = 256

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / STEPS_FILE
        self._rows: list[str] = []

    def write(
        self, step: int, epoch: int, batch: int, loss: float, lr: float, grad_norm: float
    ) -> None:
        self._rows.append(
            f'{{"step": {step}, "epoch": {epoch}, "batch": {batch}, '
            f'"loss": {json.dumps(loss)}, "lr": {json.dumps(lr)}, '
            f'"grad_norm": {json.dumps(grad_norm)}}}\n'
        )
        if len(self._rows) >= self.BUFFER:
            self.flush()

    def flush(self) -> None:
        if self._rows:
            rows, self._rows = self._rows, []
            safe_io.append_lines(self.path, rows, then_for(self.path.parent))

    def close(self) -> None:
        self.flush()

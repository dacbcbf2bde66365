"""``RUN/tensorboard/``: a run's curves for TensorBoard (``charlstm train --tensorboard``).

The numbers of the run's logs, at the same step numbers (optimizer steps), written by the
one process that writes the run (rank 0) through :mod:`torch.utils.tensorboard`:

- every optimizer step, as a row of ``steps.jsonl``: ``loss/step`` (the step's training
  loss, nats per character), ``optimizer/lr``, ``optimizer/grad_norm`` (the global
  gradient norm before clipping);
- every held-out score, as a row of ``metrics.jsonl``: ``loss/train``,
  ``perplexity/train``, ``bits_per_char/train`` (the training since the previous score),
  ``loss/heldout``, ``perplexity/heldout``, ``bits_per_char/heldout`` (when the run has a
  held-out part) and ``speed/chars_per_sec``.

Values are TensorBoard's scalars (float32). The events reach the disk at least at every
checkpoint (:meth:`Board.flush`), so they cover the steps ``last.pt`` holds; a killed run
may have written more. A resume first cuts them back to its checkpoint (:func:`rewind`),
as :func:`charlstm.storage.runs.rewind` does for the logs, so that no tag ever holds a step
twice, whatever reads the files; its writer then starts with ``purge_step`` (a
``SessionLog.START`` at its first step), so that a TensorBoard that had already read the
lost future drops it too.

``tensorboard`` is an optional dependency (``pip install 'charlstm[tensorboard]'``):
:func:`require` says so before a run starts, and nothing here imports it before it is used.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from charlstm.errors import WriteFailed, write_failed
from charlstm.fields import SettingError
from charlstm.storage import runs

#: Seconds between writes of the events to the disk, besides every checkpoint.
FLUSH_SECONDS = 10
INSTALL = "pip install 'charlstm[tensorboard]'"


def available() -> bool:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def require() -> None:
    """Raise unless ``tensorboard`` can be imported (the check of ``--tensorboard``)."""
    if not available():
        raise SettingError(
            f"{{tensorboard}} needs the tensorboard package; install it: {INSTALL} (or turn "
            "{tensorboard} off)"
        )


def _failed(run_dir: Path, err: OSError) -> WriteFailed:
    return write_failed(run_dir / runs.TENSORBOARD_DIR, err, runs.then_for(run_dir))


#: The module of the thread through which tensorboard's writer writes its event files.
WRITER_THREAD_MODULE = "tensorboard.summary.writer.event_file_writer"


def _quiet_writer_threads() -> None:
    """A failed write (a full disk) ends tensorboard's writer thread with a traceback on
    stderr, then is raised again in the training thread by the next write or flush, where
    it becomes one line: leave the first out (every other thread's error still shows)."""
    shown = threading.excepthook
    if getattr(shown, "quiets_tensorboard", False):
        return

    def excepthook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__module__ != WRITER_THREAD_MODULE:
            shown(args)

    excepthook.quiets_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = excepthook


class Board:
    """Writes ``RUN/tensorboard/``: one event per optimizer step, one per held-out score.

    The writer (and its event file) is made at the first write, once the run directory
    exists; ``resumed_at``: the step of the checkpoint a resumed run starts from. A failed
    write raises :class:`~charlstm.errors.WriteFailed`.
    """

    def __init__(self, run_dir: str | Path, resumed_at: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.resumed_at = resumed_at
        self._writer: Any = None  # torch.utils.tensorboard.SummaryWriter

    def step(self, step: int, loss: float, lr: float, grad_norm: float) -> None:
        """After optimizer step ``step``: the numbers of its ``steps.jsonl`` row."""
        self._write(step, {"loss/step": loss, "optimizer/lr": lr, "optimizer/grad_norm": grad_norm})

    def score(self, row: dict[str, Any]) -> None:
        """After a held-out score: the numbers of its ``metrics.jsonl`` row."""
        values = {
            "loss/train": row["train_loss"],
            "perplexity/train": row["train_ppl"],
            "bits_per_char/train": row["train_loss"] / math.log(2),
            "speed/chars_per_sec": row["chars_per_sec"],
        }
        if row["val_loss"] is not None:
            values["loss/heldout"] = row["val_loss"]
            values["perplexity/heldout"] = row["val_ppl"]
            values["bits_per_char/heldout"] = row["val_loss"] / math.log(2)
        self._write(row["step"], values)

    def _write(self, step: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(
            value=[Summary.Value(tag=tag, simple_value=v) for tag, v in values.items()]
        )
        try:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                _quiet_writer_threads()
                directory = self.run_dir / runs.TENSORBOARD_DIR
                _wait_past_newest(directory)
                purge = None if self.resumed_at is None else self.resumed_at + 1
                self._writer = SummaryWriter(
                    str(directory), purge_step=purge, flush_secs=FLUSH_SECONDS
                )
            # one event for every tag (add_scalar makes one per tag: 3 times the cost a step)
            self._writer.file_writer.add_summary(summary, step)
        except OSError as err:
            raise _failed(self.run_dir, err) from err

    def flush(self) -> None:
        """Write the events so far to the disk (before every checkpoint)."""
        if self._writer is not None:
            try:
                self._writer.flush()
            except OSError as err:
                raise _failed(self.run_dir, err) from err

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except OSError as err:
                raise _failed(self.run_dir, err) from err


# -- resume --------------------------------------------------------------------------------

#: The bytes a record takes in an event file besides its data (TFRecord: an 8-byte length,
#: a 4-byte checksum of it, the data, a 4-byte checksum of the data).
RECORD_FRAME = 8 + 4 + 4


def rewind(
    source: str | Path, target: str | Path, step: int, log: Callable[[str], None] = print
) -> None:
    """Make ``target``'s events those of ``source`` up to optimizer step ``step`` (a
    checkpoint's): events past it describe a future that resuming will replay.

    Each event file is cut before its first record past ``step`` (and before a record torn
    by a kill); ``source`` and ``target`` may be the same run directory (the files are
    truncated in place), else ``source`` is only read and the kept part of each file is
    copied to ``target`` under the same name. Nothing else is rewritten, so a TensorBoard
    watching the run goes on reading it. A crash leaves each file cut or whole; the next
    resume cuts again.

    Why no tag ever holds a step twice: a writer writes each tag's steps in increasing
    order into a file of its own, named after its start time (so files sort in the order
    they were written), and every writer but a new run's starts right after a rewind to
    the step before its first. So every file ends before the next one begins.
    """
    source_dir = Path(source) / runs.TENSORBOARD_DIR
    target_dir = Path(target) / runs.TENSORBOARD_DIR
    if not source_dir.is_dir():
        return
    if not available():
        log(
            f"{source_dir} was not rewound to step {step} (the tensorboard package is not "
            f"installed: {INSTALL}); it may show steps past it"
        )
        return
    in_place = target_dir.exists() and target_dir.samefile(source_dir)
    try:
        target_dir.mkdir(exist_ok=True)
        for path in sorted(_tfevents(source_dir)):
            kept = _kept_bytes(path, step)
            if in_place:
                if kept < path.stat().st_size:
                    os.truncate(path, kept)
            else:
                with open(path, "rb") as source_file, open(target_dir / path.name, "wb") as copy:
                    copy.write(source_file.read(kept))
    except OSError as err:
        raise _failed(Path(target), err) from err


#: An event file's name: ``events.out.tfevents.<unix seconds>.<host>.<pid>.<n>``.
STARTED = re.compile(r"tfevents\.(\d+)\.")
#: The most a writer waits for the clock to pass the newest event file's second.
MAX_WAIT = 2.0


def _wait_past_newest(directory: Path) -> None:
    """Wait, if need be, until the clock has left the second in which the newest event file
    of ``directory`` was started, so that the new writer's file sorts after it (readers
    take the files in name order; a resume in the same second would otherwise be ordered
    by process id). Only a writer started within a second of the previous one waits: a
    resume at once after a short run, as in the tests."""
    if not directory.is_dir():
        return
    started = [int(m.group(1)) for p in _tfevents(directory) if (m := STARTED.search(p.name))]
    wait = max(started, default=0) + 1 - time.time()
    if 0 < wait <= MAX_WAIT:  # a longer wait is a clock set back: nothing to wait for
        time.sleep(wait)


def _tfevents(directory: Path) -> list[Path]:
    """The files TensorBoard reads in ``directory``: those with "tfevents" in the name."""
    return [p for p in directory.iterdir() if "tfevents" in p.name and p.is_file()]


def _kept_bytes(path: Path, step: int) -> int:
    """The length of ``path`` before its first record past ``step``, or before a record
    TensorBoard's own reader finds torn or damaged (it stops there)."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    kept = 0
    for record in RawEventFileLoader(str(path)).Load():
        if Event.FromString(record).step > step:
            break
        kept += RECORD_FRAME + len(record)
    return kept

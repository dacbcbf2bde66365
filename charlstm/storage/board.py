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
may have written more. A resume first makes them those of its checkpoint
(:func:`rewind`), as :func:`charlstm.storage.runs.rewind` does for the logs, so that no tag
ever holds a step twice, whatever reads the files.

``tensorboard`` is an optional dependency (``pip install 'charlstm[tensorboard]'``):
:func:`require` says so before a run starts, and nothing here imports it before it is used.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from charlstm.errors import WriteFailed, write_failed
from charlstm.fields import SettingError
from charlstm.storage import runs, safe_io

#: Seconds between writes of the events to the disk, besides every checkpoint.
FLUSH_SECONDS = 10
#: The events a :func:`rewind` kept: one file, whose name sorts before every writer's
#: (``events.out.tfevents.<unix time>.<host>...``), as its events come before theirs.
REWOUND = "events.out.tfevents.0000000000.rewound"
#: A rewind's events, whole, not yet in place of the event files (see :func:`rewind`).
READY = "rewound.ready"
#: A rewind's file format version, as TensorBoard's writers write it.
FILE_VERSION = "brain.Event:2"
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
    exists. A failed write raises :class:`~charlstm.errors.WriteFailed`.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
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
                self._writer = SummaryWriter(str(directory), flush_secs=FLUSH_SECONDS)
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

#: One scalar of a tag: (step, wall time, value).
Point = tuple[int, float, float]


def rewind(
    source: str | Path, target: str | Path, step: int, log: Callable[[str], None] = print
) -> None:
    """Make ``target``'s events those of ``source`` up to optimizer step ``step`` (a
    checkpoint's): events past it describe a future that resuming will replay.

    The files are read as TensorBoard reads them (:func:`_series`); what is kept is written
    as one file, :data:`REWOUND`, in step order, and replaces every event file of
    ``target`` in two moves, each of which a crash leaves whole: the new file is written
    atomically as :data:`READY`, then takes the place of the event files (:func:`_finish`,
    which the next rewind completes when a crash cut it short). ``source`` and ``target``
    may be the same run directory; ``source`` is only read.
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
    then = runs.then_for(target)
    try:
        if target_dir.is_dir():
            _finish(target_dir)
        kept = _series(_event_files(source_dir), step)
        target_dir.mkdir(exist_ok=True)
    except OSError as err:
        raise _failed(Path(target), err) from err
    safe_io.write_atomic(target_dir / READY, lambda handle: _write_events(handle, kept), then)
    try:
        _finish(target_dir)
    except OSError as err:
        raise _failed(Path(target), err) from err


def _event_files(directory: Path) -> list[Path]:
    """The event files of ``directory``, in the order they were written (that of their
    names, :data:`REWOUND` first); a whole :data:`READY` stands for all of them."""
    if (directory / READY).is_file():
        return [directory / READY]
    return sorted(_tfevents(directory))


def _tfevents(directory: Path) -> list[Path]:
    """The files TensorBoard reads in ``directory``: those with "tfevents" in the name."""
    return [p for p in directory.iterdir() if "tfevents" in p.name and p.is_file()]


def _finish(directory: Path) -> None:
    """Put a whole :data:`READY` in the place of the event files; drop a partial one."""
    safe_io.remove_temporary(directory, (READY,))
    if (directory / READY).is_file():
        for path in _tfevents(directory):
            if path.name != REWOUND:  # replaced at once below
                path.unlink()
        (directory / READY).replace(directory / REWOUND)
        safe_io.fsync_dir(directory)


def _series(files: Iterable[Path], step: int) -> dict[str, list[Point]]:
    """The scalars of ``files`` by tag, up to ``step``, as TensorBoard shows them: files
    in order, and a point at step s replacing the tag's points from s on (a restarted
    writer's); each tag's steps strictly increasing. A torn last record is left out."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    series: dict[str, list[Point]] = {}
    for path in files:
        for event in LegacyEventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.WhichOneof("value") != "simple_value":
                    continue  # the only kind Board writes
                points = series.setdefault(value.tag, [])
                while points and points[-1][0] >= event.step:
                    points.pop()
                points.append((event.step, event.wall_time, value.simple_value))
    return {tag: [p for p in points if p[0] <= step] for tag, points in series.items()}


def _write_events(handle: IO[bytes], series: dict[str, list[Point]]) -> None:
    """``series`` as TensorBoard's records: one event per step and wall time (as Board
    wrote them), in step order, after the file version."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.record_writer import RecordWriter

    events: dict[tuple[int, float], list[Summary.Value]] = {}
    for tag, points in series.items():
        for step, wall_time, value in points:
            events.setdefault((step, wall_time), []).append(
                Summary.Value(tag=tag, simple_value=value)
            )
    order = sorted(events)
    first = order[0][1] if order else 0.0
    records = RecordWriter(handle)
    records.write(Event(wall_time=first, file_version=FILE_VERSION).SerializeToString())
    for step, wall_time in order:
        summary = Summary(value=events[step, wall_time])
        records.write(Event(wall_time=wall_time, step=step, summary=summary).SerializeToString())

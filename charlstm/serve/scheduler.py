"""Continuous batching: every running request's rows step together, joining and leaving
between steps.

A :class:`Job` is one request: its prefixes, ``n`` samples each, the sampling settings and
a seed. Its rows are a :class:`~charlstm.generation.sample.RowGroup`, the same object
:func:`charlstm.generation.sample.generate` drives, so a job writes exactly what
``charlstm generate --seed`` writes for the same request: its draws come from its own
generator, whatever else shares the batch, and its rows' logits are bitwise those
``generate`` computes (the model always computes a multiple of
:data:`~charlstm.generation.sample.ROW_MULTIPLE` rows, so a row's results do not depend on
the batch it is in).

One worker thread does all the torch work, in a loop:

1. jobs that finished, were cancelled or ran out of time leave, and their rows are
   dropped from the batch;
2. waiting jobs join while rows are free (``max_streams``): their prefixes are read, those
   of equal length in one pass whatever job they belong to, and each job chooses its
   first characters;
3. one step for every row of each batch, and each job chooses its next characters from
   its own rows' logits.

Jobs that need a model of their own (``cache`` / ``dynamic`` adaptation) run in a batch
of their own, as in ``generate``. Rows of jobs whose steps ``generate`` would fold
(:func:`~charlstm.generation.sample.folds`) share one batch per model, the others another;
the scratch backend's steps are the same either way, so its jobs all share the folded one
(see :func:`_folds`).

What a job writes goes out through ``deliver``, called from the worker once per loop with
every job's events (:class:`Chars`, then one :class:`End`).
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from charlstm.api import LanguageModel
from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError
from charlstm.generation.sample import folds
from charlstm.serve.jobs import (
    Batch,
    Chars,
    Draining,
    End,
    Event,
    Job,
    QueueFull,
    Score,
    UnknownModel,
    validate_job,
)
from charlstm.serve.metrics import Metrics


class Scheduler:
    """The continuous-batching loop over ``models`` (by name), in one worker thread.

    ``deliver`` receives, once per loop, the ``(job, event)`` pairs of that loop, from the
    worker thread (by default each job's ``on_event`` is called).
    """

    def __init__(
        self,
        models: dict[str, LanguageModel],
        max_streams: int = 64,
        max_queue: int = 256,
        max_length: int | None = None,
        max_prompt: int | None = None,
        deliver: Callable[[list[tuple[Job, Event]]], None] | None = None,
    ) -> None:
        self.models = models
        self.max_streams = max_streams
        self.max_queue = max_queue
        self.max_length = max_length
        self.max_prompt = max_prompt
        self.running = (0, 0)  # requests, rows: written by the worker after each loop
        self.deliver = deliver or _call_each
        self.metrics = Metrics()
        self.waiting: collections.deque[Job] = collections.deque()
        self.batches: dict[Any, Batch] = {}
        self.tables: dict[str, torch.Tensor] = {}  # each model's step table, once built
        self.lock = threading.Condition()
        self.ids = itertools.count(1)
        self.closing = False
        self.draining = False
        self.drain_deadline: float | None = None
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # -- called from any thread --------------------------------------------------------------

    def start(self) -> Scheduler:
        self.thread = threading.Thread(target=self._loop, name="charlstm-scheduler", daemon=True)
        self.thread.start()
        return self

    def submit(self, job: Job) -> Job:
        """Queue ``job`` (checked first, as ``generate`` checks; :class:`QueueFull` when
        ``max_queue`` jobs wait, :class:`Draining` once shutting down)."""
        model = self.models.get(job.model)
        if model is None:
            names = ", ".join(self.models)
            raise UnknownModel(f"unknown model {job.model!r}; this server has {names}")
        if self.max_length is not None and job.length > self.max_length:
            raise SettingError(
                f"{{length}} {job.length} is more than this server writes ({self.max_length})"
            )
        longest = max((len(p) for p in job.prefixes), default=0)
        if self.max_prompt is not None and longest > self.max_prompt:
            raise SettingError(
                f"{{prefixes}} of {longest} characters is longer than this server reads "
                f"({self.max_prompt})"
            )
        validate_job(job, model)
        if job.rows > self.max_streams:
            raise SettingError(
                f"{{num_samples}} times the prompts is {job.rows} rows; this server steps at most "
                f"{self.max_streams}"
            )
        with self.lock:
            if self.draining or self.closing:
                raise Draining("the server is shutting down")
            queued = self._queued(job)
            if queued >= self.max_queue:
                raise QueueFull(f"{queued} requests are waiting already; retry later")
            job.id = next(self.ids)
            job.arrived = time.monotonic()
            self.waiting.append(job)
            self.lock.notify()
        return job

    def _queued(self, job: Job) -> int:
        """How many waiting jobs (``job`` last) will wait for rows, not just for the worker
        to take them: those from the first that does not fit in the free rows."""
        free = self.max_streams - self.running[1]
        queued = 0
        for waiting in [*self.waiting, job]:
            if queued == 0 and waiting.rows <= free:
                free -= waiting.rows
            else:
                queued += 1
        return queued - (1 if queued else 0)  # the jobs ahead of ``job`` in the queue

    def cancel(self, job: Job) -> None:
        """End ``job`` at the next step (its rows leave the batch); a waiting job leaves the
        queue now. It gets an :class:`End` with ``cancelled``."""
        with self.lock:
            job.cancelled = True
            self.lock.notify()

    def drain(self, grace: float) -> None:
        """Take no new jobs; those running (and waiting) get ``grace`` seconds to finish,
        then end with ``shutdown``."""
        with self.lock:
            self.draining = True
            self.drain_deadline = time.monotonic() + grace
            self.lock.notify()

    def close(self) -> None:
        """End every job (``shutdown``) and stop the worker."""
        with self.lock:
            self.closing = True
            self.lock.notify()
        if self.thread is not None:
            self.thread.join()

    def counts(self) -> tuple[int, int, int]:
        """Requests running, rows running, requests waiting."""
        running, rows = self.running
        return running, rows, len(self.waiting)

    # -- the worker ----------------------------------------------------------------------------

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        events: list[tuple[Job, Event]] = []
        try:
            while True:
                with self.lock:
                    while not self._has_work():
                        self.lock.wait(timeout=self._idle_wait())
                        self._expire_waiting(events)
                        if events:
                            break
                    if self.closing:
                        break
                    self._expire_waiting(events)
                    joining = self._take_waiting()
                self._leave(events)
                self._join(joining, events)
                self._leave(events)
                for batch in list(self.batches.values()):
                    with batch.mode():
                        batch.step()
                        self._accept(batch, events)
                self._leave(events)  # counted out before their End goes out
                batches = list(self.batches.values())
                self.running = (sum(len(b.jobs) for b in batches), sum(b.size for b in batches))
                if events:
                    self.deliver(events)
                    events = []
        except BaseException as err:  # a bug: every job still open ends with its message
            self.error = err
            message = f"internal error: {type(err).__name__}: {err}"
            self._end_all("error", events, message)
            raise
        finally:
            self._end_all("shutdown", events)

    def _has_work(self) -> bool:
        return bool(self.closing or self.batches or self._admissible())

    def _idle_wait(self) -> float | None:
        deadlines = [j.arrived + j.timeout for j in self.waiting if j.timeout is not None]
        if self.drain_deadline is not None and self.waiting:  # (idle: nothing to end)
            deadlines.append(self.drain_deadline)
        if not deadlines and not any(j.cancelled for j in self.waiting):
            return None
        return max(0.0, min(deadlines, default=0.0) - time.monotonic())

    def _admissible(self) -> bool:
        if any(j.cancelled for j in self.waiting):
            return True
        free = self.max_streams - sum(b.size for b in self.batches.values())
        return bool(self.waiting) and self.waiting[0].rows <= free

    def _take_waiting(self) -> list[Job]:
        """The waiting jobs that fit, in arrival order (a job never overtakes another)."""
        free = self.max_streams - sum(b.size for b in self.batches.values())
        taken = []
        while self.waiting and self.waiting[0].rows <= free:
            job = self.waiting.popleft()
            free -= job.rows
            taken.append(job)
        return taken

    def _expire_waiting(self, events: list[tuple[Job, Event]]) -> None:
        now = time.monotonic()
        shutdown = self.drain_deadline is not None and now >= self.drain_deadline
        for job in list(self.waiting):
            reason = _over(job, now, shutdown)
            if reason is not None:
                self.waiting.remove(job)
                self._end(job, reason, events)

    def _join(self, jobs: list[Job], events: list[tuple[Job, Event]]) -> None:
        by_batch: dict[Any, list[Job]] = collections.defaultdict(list)
        for job in jobs:
            if job.score_prompt:
                self._score_prompts(job)
            if job.verse is not None:
                self._write_verse(job, events)
                continue
            if job.length == 0:  # nothing to write: generate reads no prefix either
                job.ended = True
                self.metrics.finished["length"] += 1
                events.append((job, End(["length"] * job.rows)))
                continue
            model = self.models[job.model]
            fold = _folds(model, job)
            if job.private:
                key: Any = ("private", job.id)
                self.batches[key] = Batch(model, fold, job)
            else:
                key = (job.model, fold)
                if key not in self.batches:
                    table = None
                    if fold:
                        if job.model not in self.tables:
                            with torch.inference_mode():
                                self.tables[job.model] = model.model.step_table()
                        table = self.tables[job.model]
                    self.batches[key] = Batch(model, fold, table=table)
            by_batch[key].append(job)
        for key, joining in by_batch.items():
            batch = self.batches[key]
            with batch.mode():
                try:
                    batch.admit(joining)
                except (CharLSTMError, RuntimeError, MemoryError) as err:
                    batch.drop(joining)
                    for job in joining:
                        self._end(job, "error", events, str(err))
                    continue
                self._accept(batch, events, joining)

    def _score_prompts(self, job: Job) -> None:
        """Each prefix's characters with their scores under the model (with its n-gram),
        as ``charlstm eval`` scores a text of its own: the first character has none."""
        from charlstm.eval.scoring import prompt_log_probs

        model = self.models[job.model]
        k = job.top_logprobs or 0
        chars = model.vocab.idx_to_char
        job.prompt_scores = []
        for prefix in job.prefixes:
            if len(prefix) < 2:
                job.prompt_scores.append([])
                continue
            text = model.vocab.encode(prefix)
            with torch.inference_mode():
                log_p = prompt_log_probs(model.model, text, model.mixture).cpu()  # (T - 1, V)
            chosen = log_p.gather(1, text[1:, None])[:, 0].tolist()
            values, indices = log_p.topk(k, dim=-1)
            job.prompt_scores.append(
                [
                    (lp, [(chars[i], v) for v, i in zip(vs, ix, strict=True)])
                    for lp, vs, ix in zip(chosen, values.tolist(), indices.tolist(), strict=True)
                ]
            )

    def _write_verse(self, job: Job, events: list[tuple[Job, Event]]) -> None:
        """A poem is written whole, here, between two steps of the batch: its lines are
        drawn as candidates side by side and chosen line by line
        (:mod:`charlstm.generation.verse.decoder`), which does not step with other rows.
        The running streams wait for it (a 七言绝句 with 4 candidates: about 0.1-0.3 s)."""
        from charlstm.generation.verse.decoder import generate_for

        model = self.models[job.model]
        try:
            with torch.inference_mode():
                texts = generate_for(
                    model, job.prefixes, job.verse, job.sampling, job.num_samples, job.seed
                )
        except (CharLSTMError, RuntimeError, MemoryError) as err:
            self._end(job, "error", events, str(err))
            return
        rows = [text for per_prefix in texts for text in per_prefix]
        now = time.monotonic()
        job.first_char = now
        self.metrics.first_char(now - job.arrived)
        self.metrics.wrote(sum(len(t) for t in rows), now)
        events.append((job, Chars(rows)))
        job.ended = True
        self.metrics.finished["stop"] += 1
        events.append((job, End(["stop"] * job.rows)))

    def _accept(
        self, batch: Batch, events: list[tuple[Job, Event]], only: list[Job] | None = None
    ) -> None:
        """Record the characters each job has just chosen; emit them."""
        now = time.monotonic()
        written = 0
        for job in only if only is not None else batch.jobs:
            group = job.group
            shown = group.accept(True)
            step_scores = group.scores() if group.top_logprobs is not None else None
            texts, scores = self._visible(job, shown, step_scores)
            written += sum(map(len, texts))
            if job.first_char is None:
                job.first_char = now
                self.metrics.first_char(now - job.arrived)
            events.append((job, Chars(texts, scores)))
            if group.finished or all(job.rows_done):
                self._finish(job, events)
        self.metrics.wrote(written, now)  # once a step, not once a job

    def _visible(
        self, job: Job, shown: list[str], step_scores: list[Score] | None
    ) -> tuple[list[str], list[list[Score]] | None]:
        """What each row may show of its new character (and its score, one per character
        shown): nothing once it has ended; with stop strings, text that cannot yet be the
        start of one waits in ``pending``."""
        if not job.stop:
            if step_scores is None:
                return shown, None
            return shown, [[s] if c else [] for c, s in zip(shown, step_scores, strict=True)]
        texts: list[str] = []
        scores: list[list[Score]] = []
        for row, char in enumerate(shown):
            if job.rows_done[row]:
                texts.append("")
                scores.append([])
                continue
            pending = job.pending[row] + char
            held = job.pending_scores[row] + ([step_scores[row]] if step_scores and char else [])
            hits = [pending.find(s) for s in job.stop if s in pending]
            if hits:
                job.rows_done[row] = True
                job.pending[row], job.pending_scores[row] = "", []
                texts.append(pending[: min(hits)])
                scores.append(held[: min(hits)])
                continue
            hold = max(
                (k for s in job.stop for k in range(1, len(s)) if pending.endswith(s[:k])),
                default=0,
            )
            cut = len(pending) - hold
            job.pending[row], job.pending_scores[row] = pending[cut:], held[cut:]
            texts.append(pending[:cut])
            scores.append(held[:cut])
        return texts, (scores if step_scores is not None else None)

    def _finish(self, job: Job, events: list[tuple[Job, Event]]) -> None:
        """A job that ended by itself: each row's reason; what stop strings held back."""
        group = job.group
        ended = group.stop.done.tolist() if group.stop is not None else [False] * job.rows
        reasons = [
            "stop" if done or hit else "length"
            for done, hit in zip(ended, job.rows_done, strict=True)
        ]
        if any(job.pending):
            scores = job.pending_scores if job.top_logprobs is not None else None
            events.append((job, Chars(job.pending, scores)))
        job.ended = True  # leaves at the next _leave
        self.metrics.finished["stop" if all(r == "stop" for r in reasons) else "length"] += 1
        events.append((job, End(reasons)))

    def _leave(self, events: list[tuple[Job, Event]]) -> None:
        """Drop the rows of jobs that ended, were cancelled or ran out of time."""
        now = time.monotonic()
        shutdown = self.closing or (self.drain_deadline is not None and now >= self.drain_deadline)
        for key, batch in list(self.batches.items()):
            leaving = []
            for job in batch.jobs:
                if job.ended:
                    leaving.append(job)  # its End has gone out
                    continue
                reason = _over(job, now, shutdown)
                if reason is not None:
                    leaving.append(job)
                    self._end(job, reason, events)
            if leaving:
                batch.drop(leaving)
            if not batch.jobs:
                del self.batches[key]

    def _end(
        self, job: Job, reason: str, events: list[tuple[Job, Event]], message: str | None = None
    ) -> None:
        job.ended = True
        self.metrics.finished[reason] += 1
        events.append((job, End([reason] * job.rows, message)))

    def _end_all(
        self, reason: str, events: list[tuple[Job, Event]], message: str | None = None
    ) -> None:
        with self.lock:
            self.closing = True
            waiting, self.waiting = list(self.waiting), collections.deque()
        for job in waiting:
            self._end(job, reason, events, message)
        for batch in self.batches.values():
            for job in batch.jobs:
                if not job.ended:
                    self._end(job, reason, events, message)
        self.batches.clear()
        self.running = (0, 0)
        if events:
            self.deliver(events)
            events.clear()


def _folds(model: LanguageModel, job: Job) -> bool:
    """Whether the job's rows step with the model's step table.

    As ``generate`` would for this request (:func:`~charlstm.generation.sample.folds`),
    except for the scratch backend, where the table changes no bit: its row for ``x`` is
    ``input_term(x)``, the very product (``x W_x + b``) the unfolded step computes before
    adding ``h W_h`` (``torch.lstm_cell`` and :func:`~charlstm.lstm_function.lstm_step`
    add the two terms and apply the gates alike). ``nn.LSTM`` weights have two biases,
    which the table sums first: there the table changes the last bits."""
    if model.model.config.backend == "scratch":
        return True
    return folds(job.rows, job.length, len(model.vocab))


def _over(job: Job, now: float, shutdown: bool) -> str | None:
    """Why ``job`` must end now, if it must."""
    if job.cancelled:
        return "cancelled"
    if job.timeout is not None and now >= job.arrived + job.timeout:
        return "timeout"
    return "shutdown" if shutdown else None


def _call_each(events: list[tuple[Job, Event]]) -> None:
    for job, event in events:
        if job.on_event is not None:
            job.on_event(event)

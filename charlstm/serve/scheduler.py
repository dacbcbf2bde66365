"""Continuous batching: every running request's rows step together, joining and leaving
between steps.

A :class:`Job` is one request (:class:`~charlstm.generation.engine.Request`). Its rows are a
group of the generation engine (:mod:`charlstm.generation.engine`), the same object
``charlstm generate`` drives, so a job writes exactly what ``charlstm generate --seed``
writes for the same request: its draws come from its own generator, whatever else shares
the batch, and its rows' logits are bitwise those ``generate`` computes (the model always
computes a multiple of :data:`~charlstm.generation.streams.ROW_MULTIPLE` rows, so a row's
results do not depend on the batch it is in). A poem is a group like any other: its
candidate lines step with every other row, and it can be cancelled between two steps.

The scheduler itself keeps only admission, timeouts and draining; the engines step.

One worker thread does all the torch work, in a loop:

1. jobs that finished, were cancelled or ran out of time leave, and their rows are
   dropped from their engine;
2. waiting jobs join while rows are free (``max_streams``; a poem takes a row per
   candidate): :meth:`Engine.admit <charlstm.generation.engine.Engine.admit>`;
3. one :meth:`Engine.step <charlstm.generation.engine.Engine.step>` of every engine.

Jobs that need a model of their own (``cache`` / ``dynamic`` adaptation) run in an engine
of their own, as in ``generate``. Rows of jobs whose steps ``generate`` would fold
(:func:`~charlstm.generation.engine.folds`) share one engine per model, the others another;
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
from charlstm.generation.engine import Engine, folds, open_group, steps_of
from charlstm.generation.streams import ModelStreams, open_streams
from charlstm.generation.text import TextGroup
from charlstm.serve.jobs import (
    Chars,
    Draining,
    End,
    Event,
    Job,
    QueueFull,
    UnknownModel,
    check_job,
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
        self.batches: dict[Any, Engine] = {}
        self.members: dict[Any, list[Job]] = {}  # each engine's jobs, in its groups' order
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
        length = steps_of(job.request)
        if self.max_length is not None and length > self.max_length:
            raise SettingError(
                f"{{length}} {length} is more than this server writes ({self.max_length})"
            )
        longest = max((len(p) for p in job.prefixes), default=0)
        if self.max_prompt is not None and longest > self.max_prompt:
            raise SettingError(
                f"{{prefixes}} of {longest} characters is longer than this server reads "
                f"({self.max_prompt})"
            )
        check_job(job, model)
        if job.request.rows > self.max_streams:
            times = " times the candidates" if job.request.verse is not None else ""
            raise SettingError(
                f"{{num_samples}} times the prompts{times} is {job.request.rows} rows; this "
                f"server steps at most {self.max_streams}"
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
            if queued == 0 and waiting.request.rows <= free:
                free -= waiting.request.rows
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
                for key, engine in list(self.batches.items()):
                    with engine.mode():
                        engine.step()
                        self._accept(self.members[key], events)
                self._leave(events)  # counted out before their End goes out
                engines = list(self.batches.values())
                self.running = (sum(len(e.groups) for e in engines), sum(e.size for e in engines))
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
        free = self.max_streams - sum(e.size for e in self.batches.values())
        return bool(self.waiting) and self.waiting[0].request.rows <= free

    def _take_waiting(self) -> list[Job]:
        """The waiting jobs that fit, in arrival order (a job never overtakes another)."""
        free = self.max_streams - sum(e.size for e in self.batches.values())
        taken = []
        while self.waiting and self.waiting[0].request.rows <= free:
            job = self.waiting.popleft()
            free -= job.request.rows
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
        by_engine: dict[Any, list[Job]] = collections.defaultdict(list)
        for job in jobs:
            if job.score_prompt:
                self._score_prompts(job)
            request = job.request
            if request.verse is None and request.length == 0:  # nothing to write or read
                job.ended = True
                self.metrics.finished["length"] += 1
                events.append((job, End(["length"] * job.rows)))
                continue
            model = self.models[job.model]
            try:
                job.group = open_group(request, model.vocab, model.device, model.copies(request))
            except (CharLSTMError, RuntimeError, MemoryError) as err:
                self._end(job, "error", events, str(err))
                continue
            by_engine[self._engine_for(job)].append(job)
        for key, joining in by_engine.items():
            engine = self.batches[key]
            with engine.mode():
                try:
                    engine.admit([job.group for job in joining])
                except (CharLSTMError, RuntimeError, MemoryError) as err:
                    engine.drop([job.group for job in joining if job.group in engine.groups])
                    for job in joining:
                        self._end(job, "error", events, str(err))
                    continue
            self.members[key] += joining
            self._accept(joining, events)

    def _engine_for(self, job: Job) -> Any:
        """The key of the engine ``job``'s rows join (made when missing): its own for a
        request that adapts to its text, else its model's (folded or not)."""
        model = self.models[job.model]
        request = job.request
        fold = _folds(model, job)
        if request.private:
            key: Any = ("private", job.id)
            streams = open_streams(
                model.model, 0, request.cache, request.dynamic, model.mixture, fold
            )
        else:
            key = (job.model, fold)
            if key in self.batches:
                return key
            streams = open_streams(model.model, 0, mixture=model.mixture, fold=fold)
            inner = getattr(streams, "streams", streams)
            if fold and isinstance(inner, ModelStreams):
                if job.model not in self.tables:
                    with torch.inference_mode():
                        self.tables[job.model] = model.model.step_table()
                inner.table = self.tables[job.model]  # built once per model
        self.batches[key] = Engine(streams, model.device, request.dynamic is not None)
        self.members[key] = []
        return key

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

    def _accept(self, jobs: list[Job], events: list[tuple[Job, Event]]) -> None:
        """Emit what each job's rows have just shown; finish the jobs that are done."""
        now = time.monotonic()
        written = 0
        for job in jobs:
            group = job.group
            if isinstance(group, TextGroup):
                shown = [group.visible()]
            else:  # a poem shows its lines as they are kept
                shown = [(texts, None) for texts in group.shown()]
            for texts, scores in shown:
                written += sum(map(len, texts))
                if job.first_char is None:
                    job.first_char = now
                    self.metrics.first_char(now - job.arrived)
                events.append((job, Chars(texts, scores)))
            if group.finished:
                self._finish(job, events)
        self.metrics.wrote(written, now)  # once a step, not once a job

    def _finish(self, job: Job, events: list[tuple[Job, Event]]) -> None:
        """A job that ended by itself: each row's reason; what stop strings held back."""
        group = job.group
        reasons = group.reasons() if isinstance(group, TextGroup) else ["stop"] * job.rows
        held = group.held() if isinstance(group, TextGroup) else None
        if held is not None:
            events.append((job, Chars(*held)))
        job.ended = True  # leaves at the next _leave
        self.metrics.finished["stop" if all(r == "stop" for r in reasons) else "length"] += 1
        events.append((job, End(reasons)))

    def _leave(self, events: list[tuple[Job, Event]]) -> None:
        """Drop the rows of jobs that ended, were cancelled or ran out of time."""
        now = time.monotonic()
        shutdown = self.closing or (self.drain_deadline is not None and now >= self.drain_deadline)
        for key, engine in list(self.batches.items()):
            leaving = []
            for job in self.members[key]:
                if job.ended:
                    leaving.append(job)  # its End has gone out
                    continue
                reason = _over(job, now, shutdown)
                if reason is not None:
                    leaving.append(job)
                    self._end(job, reason, events)
            if leaving:
                engine.drop([job.group for job in leaving])
                self.members[key] = [job for job in self.members[key] if job not in leaving]
            if not engine.groups:
                del self.batches[key]
                del self.members[key]

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
        for members in self.members.values():
            for job in members:
                if not job.ended:
                    self._end(job, reason, events, message)
        self.batches.clear()
        self.members.clear()
        self.running = (0, 0)
        if events:
            self.deliver(events)
            events.clear()


def _folds(model: LanguageModel, job: Job) -> bool:
    """Whether the job's rows step with the model's step table.

    As ``generate`` would for this request (:func:`~charlstm.generation.engine.folds`),
    except for the scratch backend, where the table changes no bit: its row for ``x`` is
    ``input_term(x)``, the very product (``x W_x + b``) the unfolded step computes before
    adding ``h W_h`` (``torch.lstm_cell`` and :func:`~charlstm.lstm_function.lstm_step`
    add the two terms and apply the gates alike). ``nn.LSTM`` weights have two biases,
    which the table sums first: there the table changes the last bits."""
    if model.model.config.backend == "scratch":
        return True
    return folds(job.request.rows, steps_of(job.request), len(model.vocab))


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

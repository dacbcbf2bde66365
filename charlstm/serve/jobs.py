"""A request as the scheduler sees it (:class:`Job`), what it writes (:class:`Chars`,
:class:`End`), and the rows it steps in (:class:`Batch`).

A job's rows are a :class:`~charlstm.generation.sample.RowGroup`, the object
:func:`charlstm.generation.sample.generate` drives, so a job writes exactly what
``charlstm generate --seed`` writes for the same request.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass, field
from typing import Any

import torch

from charlstm.api import LanguageModel
from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError
from charlstm.generation.sample import (
    RowGroup,
    check_prefixes,
    check_request,
    check_stop,
    choose_together,
)
from charlstm.generation.settings import CacheConfig, DynamicConfig, LogitRules, SamplingConfig
from charlstm.generation.streams import ModelStreams, open_streams
from charlstm.generation.verse.forms import VerseSettings


class QueueFull(CharLSTMError):
    """Every row is busy and ``max_queue`` requests already wait."""


class UnknownModel(CharLSTMError):
    """A request names a model this server does not serve."""


class Draining(CharLSTMError):
    """The server is shutting down and takes no new requests."""


#: A character's log-probability and the likeliest characters with theirs.
Score = tuple[float, list[tuple[str, float]]]


@dataclass
class Chars:
    """One step's text: a string per row (``""``: nothing new for that row); for a job
    with ``top_logprobs``, ``scores`` holds per row one :data:`Score` per character."""

    texts: list[str]
    scores: list[list[Score]] | None = None


@dataclass
class End:
    """The job is over. ``reasons`` per row: ``stop`` (stop character, ``lines`` or a stop
    string) or ``length``; or, for the whole job, ``cancelled``, ``timeout``, ``shutdown``
    or ``error`` (then ``message`` says what went wrong)."""

    reasons: list[str]
    message: str | None = None


Event = Chars | End


@dataclass
class Job:
    """One request. ``prefixes`` each continued ``num_samples`` times by up to ``length``
    characters, as ``charlstm generate`` would (rows ``p * num_samples + s``); ``stop``
    strings end a row before them (OpenAI's ``stop``: the string is not written).

    ``rules``: OpenAI's penalties and ``logit_bias``; ``top_logprobs``: every character
    written comes with its :data:`Score` (k alternatives); ``score_prompt``: before
    anything is written, ``prompt_scores`` holds each prefix's characters' scores (the
    first character has none), as ``charlstm eval`` scores a text."""

    model: str
    prefixes: list[str]
    length: int
    sampling: SamplingConfig
    seed: int
    num_samples: int = 1
    stop_at: str | None = None
    lines: int | None = None
    stop: list[str] = field(default_factory=list)
    cache: CacheConfig | None = None
    dynamic: DynamicConfig | None = None
    verse: VerseSettings | None = None  # a poem in a form, written whole (see Scheduler)
    rules: LogitRules | None = None
    top_logprobs: int | None = None
    score_prompt: bool = False
    timeout: float | None = None
    on_event: Callable[[Event], None] | None = None
    # set by the scheduler
    id: int = 0
    arrived: float = 0.0
    first_char: float | None = None
    cancelled: bool = False
    ended: bool = False
    group: RowGroup | None = None
    rows_done: list[bool] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    pending_scores: list[list[Score]] = field(default_factory=list)
    prompt_scores: list[list[Score]] | None = None  # per prefix, set before the first event

    @property
    def rows(self) -> int:
        return len(self.prefixes) * self.num_samples

    @property
    def sequences(self) -> list[str]:
        return [p for p in self.prefixes for _ in range(self.num_samples)]

    @property
    def private(self) -> bool:
        """Whether the job needs streams of its own (adaptation to its own text)."""
        return self.cache is not None or self.dynamic is not None


def validate_job(job: Job, model: LanguageModel) -> None:
    """The checks ``generate`` makes, before any work: the same errors, the same messages."""
    vocab = model.vocab
    job.sampling.check_vocab(len(vocab))  # the settings themselves are checked when built
    if job.rules is not None:
        job.rules.check_vocab(len(vocab))
    check_request(job.length, job.num_samples, job.seed)
    if job.verse is not None:  # a poem: the prompt is its title, and may be empty
        from charlstm.generation.verse.constraints import build_rules

        build_rules(job.verse, vocab, 1, model.model.device)  # its errors first
        titles = [p for p in job.prefixes if p]
        if titles:
            check_prefixes(vocab, titles)
        return
    check_prefixes(vocab, job.prefixes)
    check_stop(vocab, job.stop_at, job.lines)
    if any(s == "" for s in job.stop):
        raise SettingError("a stop string is empty")


class Batch:
    """Rows stepped together by one streams object: the rows of ``jobs``, in order, each
    job's rows contiguous. ``private``: one job's own streams (never joined by another)."""

    def __init__(
        self,
        model: LanguageModel,
        fold: bool,
        job: Job | None = None,
        table: torch.Tensor | None = None,
    ) -> None:
        self.model = model
        self.jobs: list[Job] = []
        self.plan: tuple[list[tuple[Job, slice]], list[tuple[list[RowGroup], Any]]] | None = None
        self.private = job is not None
        self.dynamic = job is not None and job.dynamic is not None
        with self.mode():
            if job is None:
                self.streams = open_streams(model.model, 0, mixture=model.mixture, fold=fold)
                inner = getattr(self.streams, "streams", self.streams)
                if fold and isinstance(inner, ModelStreams):
                    inner.table = table  # built once per model (None: at the first step)
            else:
                self.streams = open_streams(
                    model.model, job.rows, job.cache, job.dynamic, model.mixture, fold
                )

    def mode(self) -> contextlib.AbstractContextManager[Any]:
        """Dynamic evaluation needs gradients; otherwise nothing here does (as in generate)."""
        return torch.no_grad() if self.dynamic else torch.inference_mode()

    @property
    def size(self) -> int:
        return sum(job.rows for job in self.jobs)

    def slices(self) -> Iterator[tuple[Job, slice]]:
        start = 0
        for job in self.jobs:
            yield job, slice(start, start + job.rows)
            start += job.rows

    def admit(self, jobs: list[Job]) -> None:
        """Add ``jobs``' rows after the others and read their prefixes: rows of equal
        prefix length in one pass (shortest first, as ``generate`` reads one job's)."""
        device = self.model.device
        self.plan = None
        base = self.size
        if not self.private:
            keep = torch.arange(base, device=device)
            self.streams.resize(keep, sum(job.rows for job in jobs))
        reads: dict[int, list[tuple[Job, list[int], torch.Tensor]]] = collections.defaultdict(list)
        starts = {}
        offset = base
        for job in jobs:
            job.group = RowGroup(
                self.model.vocab,
                job.sequences,
                job.length,
                job.sampling,
                job.seed,
                job.stop_at,
                job.lines,
                device,
                rules=job.rules,
                top_logprobs=job.top_logprobs,
            )
            for rows, x in job.group.prefix_reads():
                reads[x.shape[0]].append((job, rows, x))
            self.jobs.append(job)
            job.rows_done = [False] * job.rows
            job.pending = [""] * job.rows
            job.pending_scores = [[] for _ in range(job.rows)]
            starts[id(job)] = offset
            offset += job.rows
        for length in sorted(reads):
            parts = reads[length]
            index = torch.tensor(
                [starts[id(job)] + row for job, rows, _ in parts for row in rows], device=device
            )
            x = torch.cat([x for _, _, x in parts], dim=1).to(device)  # (T, R)
            logits = self.streams.read(index, x)[1]  # (R, V)
            at = 0
            for job, rows, _ in parts:
                job.group.choose_first(rows, logits[at : at + len(rows)])
                at += len(rows)

    def step(self) -> None:
        """One step of every row; each job chooses from its own rows' logits. Jobs with the
        same sampling settings (and nothing per row: :attr:`RowGroup.plain`) are filtered and
        drawn together
        (:func:`~charlstm.generation.sample.choose_together`), each from its own generator."""
        last = torch.cat([job.group.last for job in self.jobs])  # (N,)
        logits = self.streams.step(last)[1]  # (N, V)
        for job, rows in self._plan()[0]:
            job.group.choose(logits[rows])
        for groups, index in self._plan()[1]:
            choose_together(groups, logits if index is None else logits[index])

    def _plan(self) -> tuple[list[tuple[Job, slice]], list[tuple[list[RowGroup], Any]]]:
        """Who chooses how, worked out once per set of jobs (not per step): the jobs that
        choose alone with their rows; the sets of plain jobs that choose together with the
        index of their rows (None: every row of the batch, in order)."""
        if self.plan is not None:
            return self.plan
        alone: list[tuple[Job, slice]] = []
        together: dict[Any, list[tuple[Job, slice]]] = collections.defaultdict(list)
        for job, rows in self.slices():
            if job.group.plain:
                together[astuple(job.sampling)].append((job, rows))
            else:
                alone.append((job, rows))
        sets: list[tuple[list[RowGroup], Any]] = []
        for parts in together.values():
            if len(parts) == 1:
                alone.append(parts[0])
                continue
            rows = [r for _, part in parts for r in _range(part)]
            index = None
            if rows != list(range(self.size)):
                index = torch.tensor(rows, dtype=torch.long, device=self.model.device)
            sets.append(([job.group for job, _ in parts], index))
        self.plan = (alone, sets)
        return self.plan

    def drop(self, leaving: list[Job]) -> None:
        """Remove the rows of ``leaving`` (between steps)."""
        gone = {id(job) for job in leaving}
        self.plan = None
        keep = [r for job, rows in self.slices() if id(job) not in gone for r in _range(rows)]
        self.jobs = [job for job in self.jobs if id(job) not in gone]
        if not self.private:
            self.streams.resize(torch.tensor(keep, dtype=torch.long, device=self.model.device), 0)


def _range(rows: slice) -> range:
    return range(rows.start, rows.stop)

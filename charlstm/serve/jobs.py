"""A request as the scheduler sees it (:class:`Job`) and what it writes (:class:`Chars`,
:class:`End`).

A job's rows are a group of the generation engine (:mod:`charlstm.generation.engine`), the
object ``charlstm generate`` drives, so a job writes exactly what ``charlstm generate
--seed`` writes for the same request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from charlstm.api import LanguageModel
from charlstm.errors import CharLSTMError
from charlstm.generation.engine import Request
from charlstm.generation.sample import check
from charlstm.generation.text import Score


class QueueFull(CharLSTMError):
    """Every row is busy and ``max_queue`` requests already wait."""


class UnknownModel(CharLSTMError):
    """A request names a model this server does not serve."""


class Draining(CharLSTMError):
    """The server is shutting down and takes no new requests."""


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
    """One request to the server: the :class:`~charlstm.generation.engine.Request` it
    writes, on model ``model``; ``score_prompt``: before anything is written,
    ``prompt_scores`` holds each prefix's characters' scores (the first character has
    none), as ``charlstm eval`` scores a text."""

    model: str
    request: Request
    score_prompt: bool = False
    timeout: float | None = None
    on_event: Callable[[Event], None] | None = None
    # set by the scheduler
    id: int = 0
    arrived: float = 0.0
    first_char: float | None = None
    cancelled: bool = False
    ended: bool = False
    group: Any = None  # the request's rows in the engine (charlstm.generation.engine)
    prompt_scores: list[list[Score]] | None = None  # per prefix, set before the first event

    @property
    def rows(self) -> int:
        """The samples the client gets (a poem's candidates are not counted)."""
        return self.request.samples

    @property
    def prefixes(self) -> tuple[str, ...]:
        return self.request.prefixes

    @property
    def num_samples(self) -> int:
        return self.request.n

    @property
    def seed(self) -> int | None:
        return self.request.seed

    @property
    def top_logprobs(self) -> int | None:
        return self.request.top_logprobs


def check_job(job: Job, model: LanguageModel) -> None:
    """The checks ``generate`` makes, before any work: the same errors, the same messages
    (the request's defaults taken from the run first, as ``generate`` takes them)."""
    job.request = model.resolve(job.request)
    check(job.request, model.vocab)

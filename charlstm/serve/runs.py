"""From a request body to a job in the scheduler, and its events back to a route.

:func:`build_job` checks a body's fields as ``charlstm generate`` checks its options and
builds the :class:`~charlstm.serve.jobs.Job`; :class:`Run` submits it and hands the
route what it writes: merged :class:`~charlstm.serve.jobs.Chars` as they come
(:meth:`Run.updates`, for a stream) or everything at the end (:meth:`Run.result`). A
client that goes away (even while its request waits) is noticed by a task that waits on
the request's ``receive()`` for ``http.disconnect``; its rows leave at the next step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from charlstm.fields import SettingError, build
from charlstm.generation import engine
from charlstm.generation.decoding import new_seed
from charlstm.generation.settings import LogitRules, SamplingConfig, from_settings
from charlstm.generation.verse.forms import VerseSettings, refuse_poem_ends, verse_from
from charlstm.serve.bodies import DEFAULT_MAX_TOKENS, Sampling
from charlstm.serve.errors import APIError
from charlstm.serve.jobs import Chars, End, Event, Job, Score
from charlstm.serve.scheduler import Scheduler
from charlstm.serve.state import ServerState

#: Seconds between keep-alive comments on a stream with nothing new to send.
KEEP_ALIVE = 5.0


def build_job(
    body: Sampling,
    prompts: list[str],
    state: ServerState,
    *,
    max_tokens: int | None,
    num_samples: int,
    top_logprobs: int | None = None,
    score_prompt: bool = False,
) -> Job:
    """The scheduler's job for ``body`` continuing ``prompts`` (settings checked as
    ``charlstm generate`` checks them). ``top_logprobs``: keep each character's score;
    ``score_prompt``: score the prompts' characters too."""
    state.ignore(body.unknown())
    given = body.settings()  # charlstm's own controls, as charlstm generate's options
    temperature = 1.0 if body.temperature is None else body.temperature
    sampling = build(  # OpenAI's temperature 0 is greedy, its top_p 1 keeps every character
        SamplingConfig,
        given,
        temperature=1.0 if temperature == 0 else temperature,
        top_p=None if body.top_p == 1 else body.top_p,
        greedy=body.greedy or temperature == 0,
    )
    rules = logit_rules(body)
    cache, dynamic = from_settings(given, generating=True)
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4:
        raise SettingError("stop takes at most 4 strings")
    verse = _verse(body, given, max_tokens)
    if verse is not None and top_logprobs is not None:  # lines are kept, not characters
        raise SettingError(
            "logprobs or best_of cannot be used with a verse form: a poem is chosen line by line"
        )
    request = engine.Request(
        tuple(prompts),
        num_samples,
        DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
        sampling,
        new_seed() if body.seed is None else body.seed,
        stop_at=body.stop_at,
        lines=body.lines,
        stop=tuple(stop),
        penalties=rules,
        top_logprobs=top_logprobs,
        cache=cache,
        dynamic=dynamic,
        verse=verse,
    )
    model = state.names[0] if body.model is None else body.model
    return Job(model, request, score_prompt, state.request_timeout)


def logit_rules(body: Sampling) -> LogitRules | None:
    """OpenAI's penalties and ``logit_bias`` (keys: vocabulary indices as strings); None
    when all are neutral, so that the text is exactly the one written without them."""
    bias: dict[int, float] = {}
    for key, value in (body.logit_bias or {}).items():
        if not key.strip().isdigit():
            raise APIError(
                400, f"logit_bias keys are vocabulary indices, not {key!r}", param="logit_bias"
            )
        bias[int(key)] = value
    rules = LogitRules(
        frequency_penalty=body.frequency_penalty or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        logit_bias=bias,
    )
    return rules if rules.active else None


def _verse(body: Sampling, given: dict[str, Any], max_tokens: int | None) -> VerseSettings | None:
    """The poem ``body`` asks for (None: running text; ``given``: its settings by key),
    refused as ``charlstm generate`` refuses it: the form sets the length and where the
    poem ends. A rhyme without a form is free-length rhymed lyrics, running text."""
    verse = verse_from(given)
    if verse.free_rhyme:  # free-length lyrics: running text, max_tokens and stops as any
        return verse
    if not verse.active:
        return None
    refuse_poem_ends(length=max_tokens, stop=body.stop, stop_at=body.stop_at, lines=body.lines)
    return verse


@dataclass
class Written:
    """What a job wrote, per row: its text, its characters' scores (with
    ``top_logprobs``), and why it ended."""

    texts: list[str]
    scores: list[list[Score]]
    reasons: list[str]


def failure(end: End) -> APIError | None:
    """The error of a job that did not end by itself."""
    messages = {
        "timeout": (504, "the request ran out of time", "server_error"),
        "shutdown": (503, "the server is shutting down", "server_error"),
        "cancelled": (499, "the request was cancelled", "cancelled"),
        "error": (500, end.message or "internal error", "server_error"),
    }
    if end.reasons and end.reasons[0] in messages:
        return APIError(*messages[end.reasons[0]])
    return None


class Run:
    """One job submitted to the scheduler, what it writes kept for the route.

    What the job writes is merged as it arrives (:meth:`_receive`, on the event loop): a
    route that has not yet taken it finds every step since in one :class:`Chars`, so a
    slow client (or a busy loop) costs one SSE event, not one per step. Waiting costs one
    future per wake-up and one keep-alive timer per :data:`KEEP_ALIVE` seconds, not a
    task and a timer per step.

    Submitting raises what :meth:`~charlstm.serve.scheduler.Scheduler.submit` raises (the
    app's handlers answer it); :meth:`close` must follow, and cancels the job if it is
    still running."""

    def __init__(self, state: ServerState, job: Job, request: Request) -> None:
        self.scheduler: Scheduler = state.ready()
        self.job = job
        self.loop = asyncio.get_running_loop()
        self.texts: list[str] | None = None  # written and not yet taken, per row
        self.scores: list[list[Score]] | None = None
        self.end: End | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.heard = self.loop.time()  # when the route last had something to send
        job.on_event = self._receive
        self.scheduler.submit(job)
        self.watcher = asyncio.create_task(_watch_disconnect(request, self.scheduler, job))

    def _receive(self, event: Event) -> None:
        """Keep ``event`` (on the event loop) and wake the route."""
        if isinstance(event, End):
            self.end = event
        elif self.texts is None:
            self.texts = list(event.texts)
            self.scores = None if event.scores is None else [list(s) for s in event.scores]
        else:
            for row, text in enumerate(event.texts):
                self.texts[row] += text
                if self.scores is not None and event.scores is not None:
                    self.scores[row] += event.scores[row]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _take(self) -> Chars | None:
        texts, scores, self.texts, self.scores = self.texts, self.scores, None, None
        return None if texts is None else Chars(texts, scores)

    async def _wait(self, keep_alive: bool) -> None:
        """Until something arrives (or, with ``keep_alive``, :data:`KEEP_ALIVE` seconds
        after the route last had something to send)."""
        self.waiter = self.loop.create_future()
        timer = None
        if keep_alive:
            timer = self.loop.call_at(self.heard + KEEP_ALIVE, _wake, self.waiter)
        try:
            await self.waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    def close(self) -> None:
        self.watcher.cancel()
        self.scheduler.cancel(self.job)

    async def updates(self) -> AsyncIterator[Chars | End | None]:
        """What the job wrote since the last update (the steps that came while the client
        or the loop was busy, merged), then its :class:`End`; ``None`` after
        :data:`KEEP_ALIVE` seconds with nothing new."""
        while True:
            if self.texts is None and self.end is None:
                await self._wait(keep_alive=True)
            merged = self._take()
            if merged is not None:
                self.heard = self.loop.time()
                yield merged
            elif self.end is None:
                if self.loop.time() >= self.heard + KEEP_ALIVE:
                    self.heard = self.loop.time()
                    yield None
                continue
            if self.end is not None and self.texts is None:
                yield self.end
                return

    async def finish(self) -> Written:
        """:meth:`result`, then :meth:`close`, whatever happens."""
        try:
            return await self.result()
        finally:
            self.close()

    async def result(self) -> Written:
        """Everything the job writes, once it has ended (its failure as an
        :class:`~charlstm.serve.errors.APIError`)."""
        while self.end is None:
            await self._wait(keep_alive=False)
        rows = self.job.rows
        merged = self._take()
        texts = merged.texts if merged is not None else [""] * rows
        scores = merged.scores if merged is not None and merged.scores is not None else None
        error = failure(self.end)
        if error is not None:
            raise error
        return Written(texts, scores or [[] for _ in range(rows)], self.end.reasons)


def event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    """Server-Sent Events from ``events`` (unbuffered by proxies)."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _watch_disconnect(request: Request, scheduler: Scheduler, job: Job) -> None:
    """Cancel ``job`` when its client goes away (the body has been read: what ``receive``
    gives now is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            scheduler.cancel(job)
            return


def check_range(name: str, value: int | None, low: int, high: int) -> None:
    if value is not None and not low <= value <= high:
        raise APIError(400, f"{name} must be in [{low}, {high}], not {value}", param=name)

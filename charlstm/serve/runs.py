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
from charlstm.generation.decoding import new_seed
from charlstm.generation.settings import LogitRules, SamplingConfig, from_settings
from charlstm.generation.verse.forms import VerseSettings
from charlstm.serve.bodies import DEFAULT_MAX_TOKENS, Sampling
from charlstm.serve.errors import APIError, body_name
from charlstm.serve.jobs import Chars, End, Event, Job, Score
from charlstm.serve.scheduler import Scheduler
from charlstm.serve.state import ServerState

#: Seconds between keep-alive comments on a stream with nothing new to send.
KEEP_ALIVE = 5.0

VERSE_FIELDS = (
    "form",
    "line_lengths",
    "acrostic",
    "rhyme",
    "first_line_rhyme",
    "tone",
    "candidates",
    "copy_filter",
)


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
    temperature = 1.0 if body.temperature is None else body.temperature
    greedy = body.greedy or temperature == 0
    top_p = None if body.top_p == 1 else body.top_p  # 1 keeps every character
    sampling = SamplingConfig(
        temperature=1.0 if temperature == 0 else temperature,
        top_k=body.top_k,
        top_p=top_p,
        greedy=greedy,
        repetition_penalty=body.repetition_penalty,
        penalty_window=body.penalty_window,
    )
    rules = logit_rules(body)
    given: dict[str, Any] = {"cache": body.cache, "dynamic": body.dynamic}
    for key in ("cache.window", "cache.flatness", "cache.mix", "dynamic.lr", "dynamic.segment"):
        value = getattr(body, body_name(key))
        if value is not None:
            given[key] = value
    cache, dynamic = from_settings(given, generating=True)
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4:
        raise SettingError("stop takes at most 4 strings")
    verse = _verse(body, max_tokens)
    if verse is not None:  # a poem's lines are drawn as candidates, not step by step
        used = [
            f for f in ("frequency_penalty", "presence_penalty", "logit_bias") if getattr(body, f)
        ]
        if top_logprobs is not None:
            used.append("logprobs or best_of")
        if used:
            raise SettingError(
                f"{used[0]} cannot be used with a verse form: a poem is chosen line by line"
            )
    length = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    if verse is not None:
        form = verse.template()
        length = sum(line.length + len(line.ending) for line in form.lines)
    return Job(
        model=state.names[0] if body.model is None else body.model,
        prefixes=prompts,
        length=length,
        sampling=sampling,
        seed=new_seed() if body.seed is None else body.seed,
        num_samples=num_samples,
        stop_at=body.stop_at,
        lines=body.lines,
        stop=stop,
        cache=cache,
        dynamic=dynamic,
        verse=verse,
        rules=rules,
        top_logprobs=top_logprobs,
        score_prompt=score_prompt,
        timeout=state.request_timeout,
    )


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


def _verse(body: Sampling, max_tokens: int | None) -> VerseSettings | None:
    """The poem ``body`` asks for (None: running text), refused as ``charlstm generate``
    refuses it: the form sets the length and where the poem ends."""
    given = {k: getattr(body, k) for k in VERSE_FIELDS if getattr(body, k) is not None}
    if not given:
        return None
    verse = build(VerseSettings, given).validate()
    if not verse.active:
        raise SettingError(
            f"{{{next(iter(given))}}} is a setting of a verse form; add {{form}} or "
            "{line_lengths}"
        )
    used = {"max_tokens": max_tokens, "stop": body.stop, "stop_at": body.stop_at}
    used["lines"] = body.lines
    for key, value in used.items():
        if value is not None:
            raise SettingError(
                f"{key} cannot be used with a verse form: the form sets the length and where "
                "the poem ends"
            )
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
    """One job submitted to the scheduler, its events queued for the route.

    Submitting raises what :meth:`~charlstm.serve.scheduler.Scheduler.submit` raises (the
    app's handlers answer it); :meth:`close` must follow, and cancels the job if it is
    still running."""

    def __init__(self, state: ServerState, job: Job, request: Request) -> None:
        self.scheduler: Scheduler = state.ready()
        self.job = job
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        job.on_event = self.queue.put_nowait
        self.scheduler.submit(job)
        self.watcher = asyncio.create_task(_watch_disconnect(request, self.scheduler, job))

    def close(self) -> None:
        self.watcher.cancel()
        self.scheduler.cancel(self.job)

    async def updates(self) -> AsyncIterator[Chars | End | None]:
        """What the job wrote since the last update (the steps that queued up while the
        client was slow, merged), then its :class:`End`; ``None`` after
        :data:`KEEP_ALIVE` seconds with nothing new."""
        rows = self.job.rows
        while True:
            if not self.queue.empty():
                event = self.queue.get_nowait()
            else:
                try:
                    event = await asyncio.wait_for(self.queue.get(), KEEP_ALIVE)
                except TimeoutError:
                    yield None
                    continue
            merged: Chars | None = None
            while isinstance(event, Chars):
                merged = event if merged is None else _merge(merged, event, rows)
                if self.queue.empty():
                    break
                event = self.queue.get_nowait()
            if merged is not None:
                yield merged
            if isinstance(event, End):
                yield event
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
        rows = self.job.rows
        texts = [""] * rows
        scores: list[list[Score]] = [[] for _ in range(rows)]
        while True:
            event = await self.queue.get()
            if isinstance(event, End):
                break
            for row, text in enumerate(event.texts):
                texts[row] += text
                if event.scores is not None:
                    scores[row] += event.scores[row]
        error = failure(event)
        if error is not None:
            raise error
        return Written(texts, scores, event.reasons)


def event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    """Server-Sent Events from ``events`` (unbuffered by proxies)."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def _merge(first: Chars, then: Chars, rows: int) -> Chars:
    texts = [first.texts[r] + then.texts[r] for r in range(rows)]
    if first.scores is None or then.scores is None:
        return Chars(texts)
    return Chars(texts, [first.scores[r] + then.scores[r] for r in range(rows)])


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

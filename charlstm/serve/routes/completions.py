"""``POST /v1/completions``: OpenAI's (legacy) completions, a character being a token.

The request is :class:`~charlstm.serve.bodies.CompletionBody`. The answer is OpenAI's
``text_completion`` with ``usage`` (characters), or with ``stream`` Server-Sent Events:
``data: {...}`` per step, each row's ``finish_reason`` in a last chunk, ``usage`` in one
more with ``stream_options.include_usage``, then ``data: [DONE]``; a comment line every
few seconds keeps an idle stream open.

- ``logprobs: k`` (0-5): each character's log-probability in the distribution it was drawn
  from and the k likeliest characters with theirs, in OpenAI's legacy shape (``tokens``,
  ``token_logprobs``, ``top_logprobs``, ``text_offset``), each chunk of a stream its part;
- ``echo``: the prompt before the completion; with ``logprobs`` its characters carry
  their log-probabilities under the model (the first none), so that ``max_tokens: 0``
  scores a text as ``charlstm eval`` does;
- ``best_of``: that many samples per prompt, of which the ``n`` with the highest mean
  log-probability per character come back (not with ``stream``).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request

from charlstm.serve.bodies import CompletionBody
from charlstm.serve.errors import APIError, error_body
from charlstm.serve.jobs import Chars, Job, Score
from charlstm.serve.runs import Run, Written, build_job, check_range, event_stream, failure
from charlstm.serve.state import ServerState, require_key, server_state

router = APIRouter(dependencies=[Depends(require_key)])


@router.post("/v1/completions")
async def completions(
    body: CompletionBody, request: Request, state: ServerState = Depends(server_state)
) -> Any:
    if body.suffix:
        raise APIError(
            400,
            "suffix: insertion is not supported (the model writes left to right; "
            "the prompt is the text before the completion)",
            param="suffix",
        )
    check_range("logprobs", body.logprobs, 0, 5)
    n = 1 if body.n is None else body.n
    best_of = n if body.best_of is None else body.best_of
    if best_of < n:
        raise APIError(400, f"best_of ({best_of}) must be at least n ({n})", param="best_of")
    if best_of > n and body.streaming:
        raise APIError(400, "best_of cannot be used with stream", param="best_of")
    prompts = _prompts(body, state)
    top = body.logprobs if body.logprobs is not None else (0 if best_of > n else None)
    job = build_job(
        body,
        prompts,
        state,
        max_tokens=body.max_tokens,
        num_samples=best_of,
        top_logprobs=top,
        score_prompt=bool(body.echo) and body.logprobs is not None,
    )
    view = _View(job, body, n, state.names[0] if body.model is None else body.model)
    run = Run(state, job, request)
    if body.streaming:
        return event_stream(_stream(run, view))
    written = await run.finish()
    return view.response(written)


def _prompts(body: CompletionBody, state: ServerState) -> list[str]:
    """The prompts: strings, or OpenAI's token arrays (vocabulary indices, one a character)."""
    prompt = body.prompt
    if isinstance(prompt, str):
        return [prompt]
    if not prompt or isinstance(prompt[0], str):
        return list(prompt)  # type: ignore[arg-type]
    arrays = [prompt] if isinstance(prompt[0], int) else prompt
    chars = state.model(body.model).vocab.idx_to_char
    for array in arrays:
        for index in array:  # type: ignore[union-attr]
            if not 0 <= index < len(chars):
                raise APIError(
                    400, f"prompt has index {index}, outside the vocabulary", param="prompt"
                )
    return ["".join(chars[i] for i in array) for array in arrays]  # type: ignore[union-attr]


def legacy_logprobs(text: str, scores: list[Score], offset: int) -> dict[str, Any]:
    """OpenAI's legacy ``logprobs`` of ``text`` (one score per character) starting at
    character ``offset`` of the choice's text."""
    return {
        "tokens": list(text),
        "token_logprobs": [lp for lp, _ in scores],
        "top_logprobs": [dict(top) for _, top in scores],
        "text_offset": list(range(offset, offset + len(text))),
    }


def _echoed(prompt: str, scores: list[Score] | None) -> dict[str, Any]:
    """The prompt's part of ``logprobs``: its first character has none."""
    if not prompt:
        return legacy_logprobs("", [], 0)
    part = legacy_logprobs(prompt[1:], scores or [], 1)
    return {
        "tokens": [prompt[0], *part["tokens"]],
        "token_logprobs": [None, *part["token_logprobs"]],
        "top_logprobs": [None, *part["top_logprobs"]],
        "text_offset": [0, *part["text_offset"]],
    }


def _joined(first: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    return {key: first[key] + then[key] for key in first}


class _View:
    """How one request's rows read in OpenAI's shape: which rows come back (``best_of``),
    their index, the echoed prompt."""

    def __init__(self, job: Job, body: CompletionBody, n: int, model: str) -> None:
        self.job, self.n, self.model = job, n, model
        self.echo = bool(body.echo)
        self.logprobs = body.logprobs is not None
        self.include_usage = body.include_usage
        self.id = f"cmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())

    def chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def prompt(self, row: int) -> str:
        return self.job.prefixes[row // self.job.num_samples]

    def echo_logprobs(self, row: int) -> dict[str, Any]:
        scores = self.job.prompt_scores
        own = None if scores is None else scores[row // self.job.num_samples]
        return _echoed(self.prompt(row), own)

    def usage(self, written: list[str]) -> dict[str, int]:
        prompt = sum(len(p) for p in self.job.prefixes)
        completion = sum(len(t) for t in written)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def chosen(self, written: Written) -> list[int]:
        """The rows that come back: per prompt, with ``best_of``, the ``n`` of the highest
        mean log-probability per character (in the order drawn among equals)."""
        samples = self.job.num_samples
        if samples == self.n:
            return list(range(self.job.rows))
        rows = []
        for p in range(len(self.job.prefixes)):
            own = range(p * samples, (p + 1) * samples)
            rows += sorted(own, key=lambda r: -_mean(written.scores[r]))[: self.n]
        return rows

    def response(self, written: Written) -> dict[str, Any]:
        choices = []
        for index, row in enumerate(self.chosen(written)):
            text, logprobs = written.texts[row], None
            if self.logprobs:
                offset = len(self.prompt(row)) if self.echo else 0
                logprobs = legacy_logprobs(text, written.scores[row], offset)
                if self.echo:
                    logprobs = _joined(self.echo_logprobs(row), logprobs)
            choices.append(
                {
                    "text": self.prompt(row) + text if self.echo else text,
                    "index": index,
                    "logprobs": logprobs,
                    "finish_reason": written.reasons[row],
                }
            )
        return {**self.chunk(choices), "usage": self.usage(written.texts), "seed": self.job.seed}


def _mean(scores: list[Score]) -> float:
    return sum(lp for lp, _ in scores) / len(scores) if scores else float("-inf")


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _stream(run: Run, view: _View) -> AsyncIterator[bytes]:
    """The job's updates as SSE: what each step wrote (with the echoed prompt first), each
    row's finish reason, the usage if asked, then ``[DONE]``."""
    rows = run.job.rows
    head = json.dumps(view.chunk([]), ensure_ascii=False)[: -len("[]}")]  # up to choices
    offsets = [len(view.prompt(r)) if view.echo else 0 for r in range(rows)]
    written = [""] * rows
    echoed = not view.echo
    try:
        async for update in run.updates():
            if update is None:
                yield b": keep-alive\n\n"
                continue
            if not echoed and (isinstance(update, Chars) or failure(update) is None):
                echoed = True  # (the prompt's scores are set before the job's first event)
                yield _sse(view.chunk([_echo_choice(view, r) for r in range(rows)]))
            if isinstance(update, Chars):
                if view.include_usage:
                    written = [w + t for w, t in zip(written, update.texts, strict=True)]
                if update.scores is None:  # written out: this runs for every stream and step
                    choices = ",".join(
                        f'{{"text": {json.dumps(text, ensure_ascii=False)}, "index": {row}, '
                        f'"logprobs": null, "finish_reason": null}}'
                        for row, text in enumerate(update.texts)
                        if text
                    )
                    if choices:
                        yield f"data: {head}[{choices}]}}\n\n".encode()
                    continue
                scored = []
                for row, text in enumerate(update.texts):
                    if text:
                        logprobs = legacy_logprobs(text, update.scores[row], offsets[row])
                        offsets[row] += len(text)
                        scored.append(
                            {
                                "text": text,
                                "index": row,
                                "logprobs": logprobs,
                                "finish_reason": None,
                            }
                        )
                if scored:
                    yield _sse(view.chunk(scored))
                continue
            error = failure(update)
            if error is not None:
                yield _sse(error_body(error.status, error.message, error.kind))
            else:
                finals = [
                    {"text": "", "index": row, "logprobs": None, "finish_reason": reason}
                    for row, reason in enumerate(update.reasons)
                ]
                yield _sse(view.chunk(finals))
                if view.include_usage:
                    yield _sse({**view.chunk([]), "usage": view.usage(written)})
            yield b"data: [DONE]\n\n"
            return
    finally:
        run.close()


def _echo_choice(view: _View, row: int) -> dict[str, Any]:
    logprobs = view.echo_logprobs(row) if view.logprobs else None
    return {"text": view.prompt(row), "index": row, "logprobs": logprobs, "finish_reason": None}

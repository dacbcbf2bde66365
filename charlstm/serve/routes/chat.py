"""``POST /v1/chat/completions``: OpenAI's chat schema over a model that has no chat
format. The last user message is the prefix and the reply continues it (the reply is the
continuation alone, as a completion's text is); the other messages are not read.

The answer is OpenAI's ``chat.completion`` (``message``, ``usage`` in characters), or with
``stream`` ``chat.completion.chunk`` events with a ``delta`` (the role first, then the
text, then each row's ``finish_reason``; ``usage`` with ``stream_options.include_usage``;
``[DONE]``). ``logprobs: true`` with ``top_logprobs`` (0-20) gives each character's
log-probability in chat's shape. The sampling fields are those of ``/v1/completions``,
charlstm's and the verse forms' included (the prefix is then the title).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request

from charlstm.serve.bodies import ChatBody
from charlstm.serve.errors import APIError, error_body
from charlstm.serve.jobs import Chars, Score
from charlstm.serve.runs import Run, build_job, check_range, event_stream, failure
from charlstm.serve.state import ServerState, require_key, server_state

router = APIRouter(dependencies=[Depends(require_key)])


@router.post("/v1/chat/completions")
async def chat(body: ChatBody, request: Request, state: ServerState = Depends(server_state)) -> Any:
    _refuse_unsupported(body)
    check_range("top_logprobs", body.top_logprobs, 0, 20)
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    users = [m for m in body.messages if m.role == "user"]
    if not users:
        raise APIError(400, "messages has no user message to continue", param="messages")
    max_tokens = body.max_completion_tokens
    if max_tokens is None:
        max_tokens = body.max_tokens
    job = build_job(
        body,
        [users[-1].text()],
        state,
        max_tokens=max_tokens,
        num_samples=1 if body.n is None else body.n,
        top_logprobs=(body.top_logprobs or 0) if body.logprobs else None,
    )
    reply = _Reply(state.names[0] if body.model is None else body.model, job.seed)
    run = Run(state, job, request)
    if body.streaming:
        return event_stream(_stream(run, reply, body.include_usage))
    written = await run.finish()
    choices = [
        {
            "index": row,
            "message": {"role": "assistant", "content": text},
            "logprobs": _logprobs(text, written.scores[row]) if body.logprobs else None,
            "finish_reason": reason,
        }
        for row, (text, reason) in enumerate(zip(written.texts, written.reasons, strict=True))
    ]
    return {
        **reply.chunk("chat.completion", choices),
        "usage": _usage(job.prefixes[0], written.texts),
        "seed": job.seed,
    }


def _refuse_unsupported(body: ChatBody) -> None:
    """The fields of OpenAI's chat schema that plain text cannot honour: one message."""
    unsupported = {
        "tools": bool(body.tools),
        "functions": bool(body.functions),
        "response_format": (body.response_format or {}).get("type", "text") != "text",
        "audio": body.audio is not None,
        "modalities": body.modalities not in (None, ["text"]),
    }
    for name, used in unsupported.items():
        if used:
            raise APIError(
                400, f"{name} is not supported: a character model writes plain text", param=name
            )


def _logprobs(text: str, scores: list[Score]) -> dict[str, Any]:
    """Chat's ``logprobs`` of ``text`` (one score per character): one entry per character,
    its likeliest alternatives in it."""

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    content = []
    for char, (lp, top) in zip(text, scores, strict=True):
        chosen = entry(char, lp)
        chosen["top_logprobs"] = [entry(char, value) for char, value in top]
        content.append(chosen)
    return {"content": content}


def _usage(prompt: str, texts: list[str]) -> dict[str, int]:
    completion = sum(len(t) for t in texts)
    return {
        "prompt_tokens": len(prompt),
        "completion_tokens": completion,
        "total_tokens": len(prompt) + completion,
    }


class _Reply:
    def __init__(self, model: str, seed: int) -> None:
        self.model, self.seed = model, seed
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())

    def chunk(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _stream(run: Run, reply: _Reply, include_usage: bool) -> AsyncIterator[bytes]:
    rows = run.job.rows
    written = [""] * rows
    kind = "chat.completion.chunk"
    try:
        first = [
            {"index": r, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            for r in range(rows)
        ]
        yield _sse(reply.chunk(kind, first))
        async for update in run.updates():
            if update is None:
                yield b": keep-alive\n\n"
                continue
            if isinstance(update, Chars):
                choices = []
                for row, text in enumerate(update.texts):
                    if not text:
                        continue
                    written[row] += text
                    choice: dict[str, Any] = {
                        "index": row,
                        "delta": {"content": text},
                        "finish_reason": None,
                    }
                    if update.scores is not None:
                        choice["logprobs"] = _logprobs(text, update.scores[row])
                    choices.append(choice)
                if choices:
                    yield _sse(reply.chunk(kind, choices))
                continue
            error = failure(update)
            if error is not None:
                yield _sse(error_body(error.status, error.message, error.kind))
            else:
                finals = [
                    {"index": row, "delta": {}, "finish_reason": reason}
                    for row, reason in enumerate(update.reasons)
                ]
                yield _sse(reply.chunk(kind, finals))
                if include_usage:
                    usage = _usage(run.job.prefixes[0], written)
                    yield _sse({**reply.chunk(kind, []), "usage": usage})
            yield b"data: [DONE]\n\n"
            return
    finally:
        run.close()

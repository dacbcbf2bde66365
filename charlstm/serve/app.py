"""The HTTP edge of ``charlstm serve``: FastAPI routes over a :class:`Scheduler`.

- ``POST /v1/completions``: OpenAI's completions request and response (``prompt``,
  ``max_tokens`` in characters, ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop``,
  ``n``, ``stream``) with charlstm's own controls beside them under the names of
  ``charlstm generate``'s options (``repetition_penalty``, ``lines``, ``cache``...).
  ``stream: true`` answers Server-Sent Events, ``data: {...}`` per step, then
  ``data: [DONE]``; a comment line every few seconds keeps an idle stream open.
- ``GET /health`` (503 while the models load and while shutting down), ``GET /v1/models``,
  ``GET /metrics`` (Prometheus text) and the page at ``GET /``.

The models load in the background after the server starts, so that ``/health`` answers
at once. A bad request gets a 4xx JSON ``{"error": {"message": ...}}`` with one message
and never reaches the batch. A client that goes away (even while its request waits) is
noticed by a task that waits on the request's ``receive()`` for ``http.disconnect``, and
its rows leave the batch at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from charlstm.api import LanguageModel
from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError, build
from charlstm.generation.decoding import new_seed
from charlstm.generation.settings import DEFAULT_PENALTY_WINDOW, SamplingConfig, from_settings
from charlstm.generation.verse.forms import VerseSettings
from charlstm.serve.jobs import Chars, Draining, End, Event, Job, QueueFull, UnknownModel
from charlstm.serve.metrics import Metrics, prometheus
from charlstm.serve.scheduler import Scheduler

PAGE = Path(__file__).with_name("page.html")

#: Seconds between keep-alive comments on a stream with nothing new to send.
KEEP_ALIVE = 5.0

#: How the library's setting names read in a request body.
BODY_NAMES = {"prefixes": "prompt", "length": "max_tokens", "num_samples": "n"}


def body_name(key: str) -> str:
    return BODY_NAMES.get(key, key.replace(".", "_"))


class CompletionBody(BaseModel):
    """``POST /v1/completions``: OpenAI's fields, then charlstm's (``charlstm generate``'s
    options, with underscores). Unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str | list[str]
    max_tokens: int = 100
    temperature: float = Field(1.0, description="0: always the likeliest character (greedy)")
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    # charlstm's own controls
    greedy: bool = False
    repetition_penalty: float = 1.0
    penalty_window: int = DEFAULT_PENALTY_WINDOW
    stop_at: str | None = None
    lines: int | None = None
    cache: bool = False
    cache_window: int | None = None
    cache_flatness: float | None = None
    cache_mix: float | None = None
    dynamic: bool = False
    dynamic_lr: float | None = None
    dynamic_segment: int | None = None
    # a poem in a form (charlstm generate --form ...): the prompt is its title, may be ""
    form: str | None = None
    line_lengths: list[int] | None = None
    acrostic: str | None = None
    rhyme: str | None = None
    first_line_rhyme: bool | None = None
    tone: bool | None = None
    candidates: int | None = None
    copy_filter: bool | None = None


def error(status: int, message: str, kind: str = "invalid_request_error", **headers: str) -> Any:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": status}},
        status_code=status,
        headers=headers or None,
    )


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before any route sees
    it (by its Content-Length, or while it is read). The body read is handed on whole.

    (FastAPI's own ``max_body_size`` answers in plain text; clients of an OpenAI-style API
    read the JSON error shape that this one sends.)"""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        too_large = error(413, f"the request body is over {self.limit} bytes", "too_large")
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await too_large(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


@dataclass
class ServerState:
    """What the routes share: the models (once loaded), the scheduler, the bounds."""

    names: list[str]
    max_length: int
    request_timeout: float
    models: dict[str, LanguageModel] = field(default_factory=dict)
    scheduler: Scheduler | None = None
    load_error: str | None = None
    on_load_error: Callable[[str], None] | None = None
    draining: bool = False


def create_app(
    load: Callable[[], dict[str, LanguageModel]],
    names: list[str],
    max_streams: int = 64,
    max_queue: int = 256,
    max_length: int = 2000,
    max_prompt: int = 2000,
    request_timeout: float = 300.0,
    body_limit: int = 65536,
) -> FastAPI:
    """The app. ``load`` returns the models by name (``names``, the first the default); it
    runs in a thread after the server has started."""
    state = ServerState(names, max_length, request_timeout)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()

        def deliver(events: list[tuple[Job, Event]]) -> None:
            loop.call_soon_threadsafe(_dispatch, events)

        async def start() -> None:
            try:
                models = await asyncio.to_thread(load)
            except CharLSTMError as err:
                state.load_error = str(err)
                if state.on_load_error is not None:
                    state.on_load_error(state.load_error)
                return
            state.scheduler = Scheduler(
                models, max_streams, max_queue, max_length, max_prompt, deliver
            ).start()
            state.models = models

        loading = asyncio.create_task(start())
        yield
        loading.cancel()
        if state.scheduler is not None:
            await asyncio.to_thread(state.scheduler.close)

    app = FastAPI(title="charlstm", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = state
    app.add_middleware(BodyLimit, limit=body_limit)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Any:
        return error(400, _one_message(exc.errors()))

    @app.get("/", response_class=HTMLResponse)
    async def page() -> Any:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> Any:
        if state.load_error is not None:
            return error(503, f"the models did not load: {state.load_error}", "unavailable")
        if state.scheduler is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        if state.scheduler.error is not None:
            return error(503, "the scheduler stopped", "unavailable")
        if state.draining:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> Any:
        if state.scheduler is None:
            return error(503, "the models are loading", "unavailable")
        return {
            "object": "list",
            "data": [_describe(name, model) for name, model in state.models.items()],
        }

    @app.get("/metrics")
    async def metrics() -> Any:
        scheduler = state.scheduler
        counts = scheduler.counts() if scheduler is not None else (0, 0, 0)
        return PlainTextResponse(
            prometheus(scheduler.metrics if scheduler else Metrics(), counts),
            media_type="text/plain; version=0.0.4",
        )

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request) -> Any:
        scheduler = state.scheduler
        if scheduler is None or state.draining:
            why = "shutting down" if state.draining else "loading its models"
            return error(503, f"the server is {why}", "unavailable", **{"Retry-After": "1"})
        queue: asyncio.Queue[Event] = asyncio.Queue()
        try:
            job = _job(body, state)
            job.on_event = queue.put_nowait
            scheduler.submit(job)
        except QueueFull as err:
            return error(503, str(err), "overloaded", **{"Retry-After": "1"})
        except Draining as err:
            return error(503, str(err), "unavailable", **{"Retry-After": "1"})
        except UnknownModel as err:
            return error(404, str(err), "not_found")
        except SettingError as err:
            return error(400, err.render(body_name))
        except CharLSTMError as err:
            return error(400, str(err))
        watcher = asyncio.create_task(_watch_disconnect(request, scheduler, job))
        reply = _Reply(job, state.names[0] if body.model is None else body.model)
        if body.stream:
            return StreamingResponse(
                _stream(queue, reply, scheduler, watcher),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            while True:
                event = await queue.get()
                reply.add(event)
                if isinstance(event, End):
                    break
        finally:
            watcher.cancel()
            scheduler.cancel(job)
        return reply.response()

    return app


def _dispatch(events: list[tuple[Job, Event]]) -> None:
    for job, event in events:
        if job.on_event is not None:
            job.on_event(event)


def _one_message(errors: Any) -> str:
    """Pydantic's first complaint as one line: ``max_tokens: Input should be ...``."""
    first = errors[0] if errors else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON"
    if first.get("type") == "model_attributes_type" and where == "":
        return "the request body must be a JSON object (Content-Type: application/json)"
    if first.get("type") == "extra_forbidden":
        return f"unknown field {where!r}"
    message = first.get("msg", "invalid request")
    return f"{where}: {message}" if where else message


def _job(body: CompletionBody, state: ServerState) -> Job:
    """The scheduler's job for ``body`` (settings checked as ``charlstm generate`` checks)."""
    greedy = body.greedy or body.temperature == 0
    sampling = SamplingConfig(
        temperature=1.0 if body.temperature == 0 else body.temperature,
        top_k=body.top_k,
        top_p=body.top_p,
        greedy=greedy,
        repetition_penalty=body.repetition_penalty,
        penalty_window=body.penalty_window,
    )
    given: dict[str, Any] = {"cache": body.cache, "dynamic": body.dynamic}
    for key in ("cache.window", "cache.flatness", "cache.mix", "dynamic.lr", "dynamic.segment"):
        value = getattr(body, body_name(key))
        if value is not None:
            given[key] = value
    cache, dynamic = from_settings(given, generating=True)
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4:
        raise CharLSTMError("stop takes at most 4 strings")
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    verse = _verse(body)
    length = body.max_tokens
    if verse is not None:
        form = verse.template()
        length = sum(line.length + len(line.ending) for line in form.lines)
    return Job(
        model=state.names[0] if body.model is None else body.model,
        prefixes=prompts,
        length=length,
        sampling=sampling,
        seed=new_seed() if body.seed is None else body.seed,
        num_samples=body.n,
        stop_at=body.stop_at,
        lines=body.lines,
        stop=stop,
        cache=cache,
        dynamic=dynamic,
        verse=verse,
        timeout=state.request_timeout,
    )


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


def _verse(body: CompletionBody) -> VerseSettings | None:
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
    for key in ("max_tokens", "stop", "stop_at", "lines"):
        if key in body.model_fields_set:
            raise SettingError(
                f"{key} cannot be used with a verse form: the form sets the length and where "
                "the poem ends"
            )
    return verse


async def _watch_disconnect(request: Request, scheduler: Scheduler, job: Job) -> None:
    """Cancel ``job`` when its client goes away (the body has been read: what ``receive``
    gives now is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            scheduler.cancel(job)
            return


class _Reply:
    """The OpenAI-shaped answer, built from a job's events."""

    def __init__(self, job: Job, model: str) -> None:
        self.job, self.model = job, model
        self.id = f"cmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.texts = [""] * job.rows
        self.end: End | None = None

    def add(self, event: Event) -> None:
        if isinstance(event, Chars):
            for row, text in enumerate(event.texts):
                self.texts[row] += text
        else:
            self.end = event

    def chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def failure(self) -> tuple[int, str] | None:
        """The status and message of a job that did not end by itself."""
        end = self.end
        if end is None or end.reasons[0] not in ("timeout", "shutdown", "error", "cancelled"):
            return None
        messages = {
            "timeout": (504, "the request ran out of time"),
            "shutdown": (503, "the server is shutting down"),
            "cancelled": (499, "the request was cancelled"),
        }
        return messages.get(end.reasons[0], (500, end.message or "internal error"))

    def response(self) -> Any:
        failure = self.failure()
        if failure is not None:
            return error(failure[0], failure[1], "server_error")
        assert self.end is not None
        choices = [
            {"text": text, "index": row, "logprobs": None, "finish_reason": reason}
            for row, (text, reason) in enumerate(zip(self.texts, self.end.reasons, strict=True))
        ]
        prompt_chars = sum(len(p) for p in self.job.sequences)
        written = sum(len(t) for t in self.texts)
        return {
            **self.chunk(choices),
            "usage": {
                "prompt_tokens": prompt_chars,
                "completion_tokens": written,
                "total_tokens": prompt_chars + written,
            },
            "seed": self.job.seed,
        }


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _stream(
    queue: asyncio.Queue[Event], reply: _Reply, scheduler: Scheduler, watcher: asyncio.Task[None]
) -> AsyncIterator[bytes]:
    """The events of one job as SSE: what each step wrote (steps that queued up while the
    client was slow go out together), each row's finish reason, then ``[DONE]``."""
    head = json.dumps(reply.chunk([]), ensure_ascii=False)[: -len("[]}")]  # up to choices
    try:
        while True:
            if not queue.empty():
                event = queue.get_nowait()
            else:
                try:
                    event = await asyncio.wait_for(queue.get(), KEEP_ALIVE)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
            texts = [""] * reply.job.rows
            while isinstance(event, Chars):
                for row, text in enumerate(event.texts):
                    texts[row] += text
                if queue.empty():
                    break
                event = queue.get_nowait()
            choices = ",".join(
                f'{{"text": {json.dumps(text, ensure_ascii=False)}, "index": {row}, '
                f'"logprobs": null, "finish_reason": null}}'
                for row, text in enumerate(texts)
                if text
            )
            if choices:  # written out: this runs for every stream at every step
                yield f"data: {head}[{choices}]}}\n\n".encode()
            if isinstance(event, End):
                reply.end = event
                failure = reply.failure()
                if failure is not None:
                    kind = "server_error" if failure[0] != 499 else "cancelled"
                    yield _sse({"error": {"message": failure[1], "type": kind, "code": failure[0]}})
                else:
                    finals = [
                        {"text": "", "index": row, "logprobs": None, "finish_reason": reason}
                        for row, reason in enumerate(event.reasons)
                    ]
                    yield _sse(reply.chunk(finals))
                yield b"data: [DONE]\n\n"
                return
    finally:
        watcher.cancel()
        scheduler.cancel(reply.job)


def _describe(name: str, model: LanguageModel) -> dict[str, Any]:
    checkpoint = model.checkpoint
    config = checkpoint.model_config
    loss = checkpoint.best_val_loss
    return {
        "id": name,
        "object": "model",
        "created": int(checkpoint.path.stat().st_mtime) if checkpoint.path else 0,
        "owned_by": "charlstm",
        "checkpoint": str(checkpoint.path),
        "vocab_size": len(model.vocab),
        "corpus": checkpoint.data_config.path,
        "heldout_perplexity": math.exp(loss) if math.isfinite(loss) else None,
        "backend": config.backend,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_layers,
        "softmax": config.softmax,
        "predicts_with": model.describe(),
        "device": str(model.device),
        "options": sorted(set(CompletionBody.model_fields) - {"model", "prompt"}),
    }


def run_server(
    app: FastAPI,
    host: str,
    port: int,
    grace: float,
    log: Callable[[str], None] = print,
) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM or Ctrl-C; then take no new requests,
    give running streams ``grace`` seconds to finish, end the rest with a final event, and
    return (the process exits 0).

    The socket is bound here, before uvicorn starts, so that the URL printed is the one
    listened on (with ``port`` 0, the port the system chose)."""
    import signal
    import socket

    import uvicorn

    state: ServerState = app.state.server
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise CharLSTMError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    sock.listen(2048)  # connections made once the URL is printed wait in the backlog
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            first = not state.draining
            state.draining = True
            if first and state.scheduler is not None:
                state.scheduler.drain(grace)
            super().handle_exit(sig, frame)
            if first:
                with contextlib.suppress(OSError):  # a closed stdout must not stop the stop
                    log(f"stopping: running streams get {grace:g} s to finish")

    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(grace) + 5,  # the scheduler ends streams at grace
        timeout_keep_alive=5,
    )
    server = Server(config)
    state.on_load_error = lambda message: setattr(server, "should_exit", True)
    log(f"charlstm serve: http://{shown}:{bound} (models: {', '.join(state.names)})")
    # uvicorn raises the signal it caught again once it has shut down; with these
    # handlers in place beforehand, that ends nothing and the process exits 0.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if state.load_error is not None:
        raise CharLSTMError(state.load_error)

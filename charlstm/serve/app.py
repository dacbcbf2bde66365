"""The app of ``charlstm serve``: FastAPI routes (one router per group,
:mod:`charlstm.serve.routes`) over a :class:`~charlstm.serve.scheduler.Scheduler`, and
:func:`run_server`, which serves it until SIGTERM.

The models load in the background after the server starts, so that ``/health`` answers
at once. Errors are answered by handlers registered once (:mod:`charlstm.serve.errors`):
a bad request gets a 4xx in OpenAI's error shape with one message and never reaches the
batch. A body over the limit is refused before any route reads it (:class:`BodyLimit`).
With an API key, every route of ``/v1/``, ``/tokenize`` and ``/detokenize`` needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from charlstm.api import LanguageModel
from charlstm.errors import CharLSTMError
from charlstm.serve import errors
from charlstm.serve.errors import error_response
from charlstm.serve.jobs import End, Event, Job
from charlstm.serve.routes import ROUTERS
from charlstm.serve.scheduler import Scheduler
from charlstm.serve.state import ServerState


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
        too_large = error_response(413, f"the request body is over {self.limit} bytes", "too_large")
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


def create_app(
    load: Callable[[], dict[str, LanguageModel]],
    names: list[str],
    max_streams: int = 64,
    max_queue: int = 256,
    max_length: int = 2000,
    max_prompt: int = 2000,
    request_timeout: float = 300.0,
    body_limit: int = 65536,
    api_key: str | None = None,
    stream_interval: float = 0.02,
) -> FastAPI:
    """The app. ``load`` returns the models by name (``names``, the first the default); it
    runs in a thread after the server has started. ``api_key``: what ``Authorization:
    Bearer`` must carry (None: no key). ``stream_interval``: seconds between two hand-overs
    of written characters to the event loop (:class:`Handover`)."""
    state = ServerState(names, max_length, request_timeout, api_key or None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        deliver = Handover(asyncio.get_running_loop(), stream_interval)

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
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


class Handover:
    """The scheduler's ``deliver``: hands the events of its steps from the worker thread
    to the event loop, where each job's ``on_event`` runs.

    One ``call_soon_threadsafe`` carries every job's events of a step, and at most one
    hand-over is pending at a time: the steps that come before the loop has run it join
    it (in order). A hand-over runs at least ``interval`` seconds after the one before, so
    that each stream gets one SSE event for every few steps
    (:class:`~charlstm.serve.runs.Run` merges a job's steps) and the loop's work per step
    stays small beside the model's; a job's first characters and its end are handed over
    at once, so that they wait for no interval."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = 0.0) -> None:
        self.loop, self.interval = loop, interval
        self.lock = threading.Lock()
        self.events: list[tuple[Job, Event]] = []
        self.scheduled = False  # a dispatch is pending
        self.hurried = False  # ... and will run at once
        self.last = 0.0  # when the last dispatch ran (time.monotonic)
        self.started: set[int] = set()  # jobs whose first event has been handed over

    def __call__(self, events: list[tuple[Job, Event]]) -> None:
        """From the worker: queue ``events`` and see that a dispatch is pending (at once
        for a job's first characters or its end)."""
        urgent = False
        for job, event in events:
            if isinstance(event, End):
                self.started.discard(job.id)
                urgent = True
            elif job.id not in self.started:
                self.started.add(job.id)
                urgent = True
        with self.lock:
            self.events.extend(events)
            if self.hurried or (self.scheduled and not urgent):
                return
            wait = 0.0 if urgent else self.last + self.interval - time.monotonic()
            self.scheduled, self.hurried = True, wait <= 0
        if wait <= 0:
            self.loop.call_soon_threadsafe(self.dispatch)
        else:
            self.loop.call_soon_threadsafe(self.loop.call_later, wait, self.dispatch)

    def dispatch(self) -> None:
        """On the loop: every event handed over since the last dispatch, in order."""
        with self.lock:
            events, self.events = self.events, []
            self.scheduled = self.hurried = False
            self.last = time.monotonic()
        for job, event in events:
            if job.on_event is not None:
                job.on_event(event)


def run_server(
    app: FastAPI,
    host: str,
    port: int,
    grace: float,
    log: Callable[[str], None] = print,
) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM or Ctrl-C; then take no new requests
    (503; ``/health`` too), give running streams ``grace`` seconds to finish, end the rest
    with a final event, and return once they are out (the process exits 0).

    The socket is bound here, before uvicorn starts, so that the URL printed is the one
    listened on (with ``port`` 0, the port the system chose)."""
    import signal

    import uvicorn

    state: ServerState = app.state.server
    sock = _listen(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(grace) + 5,  # the scheduler ends streams at grace
        timeout_keep_alive=5,
    )
    server = _draining_server(config, state, grace, log)
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


def _listen(host: str, port: int) -> Any:
    """A socket bound to ``host:port`` and listening (``port`` 0: one the system chooses)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise CharLSTMError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    sock.listen(2048)  # connections made once the URL is printed wait in the backlog
    return sock


def _draining_server(
    config: Any, state: ServerState, grace: float, log: Callable[[str], None]
) -> Any:
    """A uvicorn server whose first signal drains (uvicorn is imported here, not at start)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            """The first signal drains: the server keeps listening (``/health`` answers
            503, new requests 503) until the running jobs have ended, at most ``grace``
            seconds, then stops as uvicorn does; a second signal stops at once."""
            if state.draining:
                super().handle_exit(sig, frame)
                return
            state.draining = True
            if state.scheduler is not None:
                state.scheduler.drain(grace)
            threading.Thread(target=self.exit_when_idle, daemon=True).start()
            with contextlib.suppress(OSError):  # a closed stdout must not stop the stop
                log(f"stopping: running streams get {grace:g} s to finish")

        def exit_when_idle(self) -> None:
            deadline = time.monotonic() + grace + 5  # the scheduler ends the jobs at grace
            scheduler = state.scheduler
            while time.monotonic() < deadline and scheduler is not None:
                worker = scheduler.thread
                if scheduler.counts() == (0, 0, 0) or worker is None or not worker.is_alive():
                    break
                time.sleep(0.02)
            self.should_exit = True

    return Server(config)

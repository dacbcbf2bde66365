"""What every route shares: the server's state (models once loaded, the scheduler, the
bounds, the API key) and the dependencies that read it.

- :func:`server_state`: the :class:`ServerState` of the app serving the request;
- :func:`require_key`: with ``--api-key``, a request without ``Authorization: Bearer KEY``
  gets 401 in OpenAI's error shape (compared in constant time);
- :meth:`ServerState.ready`: the scheduler, or 503 while the models load or the server
  shuts down.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request

from charlstm.api import LanguageModel
from charlstm.serve.errors import RETRY, APIError
from charlstm.serve.scheduler import Scheduler

log = logging.getLogger("charlstm.serve")


@dataclass
class ServerState:
    """What the routes share: the models (once loaded), the scheduler, the bounds."""

    names: list[str]
    max_length: int
    request_timeout: float
    api_key: str | None = None
    models: dict[str, LanguageModel] = field(default_factory=dict)
    scheduler: Scheduler | None = None
    load_error: str | None = None
    on_load_error: Callable[[str], None] | None = None
    draining: bool = False
    ignored: set[str] = field(default_factory=set)  # unknown body fields, logged once each

    def ready(self) -> Scheduler:
        """The scheduler, when the server takes requests (503 with Retry-After if not)."""
        if self.scheduler is None or self.draining:
            why = "shutting down" if self.draining else "loading its models"
            raise APIError(503, f"the server is {why}", "unavailable", headers=RETRY)
        return self.scheduler

    def model(self, name: str | None) -> LanguageModel:
        """The model a request names (the default: the first), once loaded."""
        self.ready()
        name = self.names[0] if name is None else name
        if name not in self.models:
            names = ", ".join(self.models)
            raise APIError(404, f"unknown model {name!r}; this server has {names}", "not_found")
        return self.models[name]

    def ignore(self, fields: list[str]) -> None:
        """Log each unknown body field the first time it is seen (as vLLM does): a client
        library's field that is no field of OpenAI's or charlstm's changes nothing."""
        for name in fields:
            if name not in self.ignored:
                self.ignored.add(name)
                log.warning("charlstm serve: ignored the request field %r (not one it knows)", name)


async def server_state(request: Request) -> ServerState:
    """(``async``, as every dependency here: FastAPI runs a plain ``def`` in its thread
    pool, a hop per request that competes with the scheduler's thread.)"""
    return request.app.state.server


async def require_key(request: Request) -> None:
    """With an API key set, ``Authorization: Bearer KEY`` or 401."""
    key = request.app.state.server.api_key
    if key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise APIError(
            401,
            "missing or wrong API key: send Authorization: Bearer KEY",
            "invalid_request_error",
            headers={"WWW-Authenticate": "Bearer"},
        )

"""The options of ``charlstm serve``: one :func:`~charlstm.config.setting` field each.

Imports neither torch nor FastAPI, so that ``charlstm --help`` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass

from charlstm.fields import (
    SettingError,
    check_fields,
    in_range,
    is_positive,
    register,
    setting,
)


def _model_spec(text: str) -> str | None:
    name, _, run = text.partition("=")
    if name and run and "/" not in name and " " not in name:
        return None
    return f"takes NAME=RUN (a name without / or spaces, then a run or checkpoint), not {text!r}"


def _each_model(value: list[str]) -> str | None:
    return next((problem for spec in value if (problem := _model_spec(spec))), None)


@register
@dataclass
class ServeConfig:
    """Where the server listens, which models it serves, and its bounds."""

    models: list[str] = setting(
        [],
        "Serve another model under NAME (repeatable); the first model is the default.",
        "Models",
        option="--model",
        repeat=True,
        metavar="NAME=RUN",
        check=_each_model,
    )
    host: str = setting(
        "127.0.0.1", "Address to bind (0.0.0.0: every interface; think first).", "Server"
    )
    port: int = setting(8000, "Port to listen on (0: any free port).", "Server")
    api_key: str | None = setting(
        None,
        "Every /v1/ route (and /tokenize) needs Authorization: Bearer KEY; /health stays "
        "open. Also read from $CHARLSTM_API_KEY.",
        "Server",
        metavar="KEY",
        default_text="none ($CHARLSTM_API_KEY if set)",
    )
    max_streams: int = setting(
        64,
        "Rows stepped together at most (a request with n samples takes n).",
        "Bounds",
        check=is_positive,
    )
    max_queue: int = setting(
        256,
        "Requests waiting for a row at most; beyond, 503 with Retry-After.",
        "Bounds",
        check=is_positive,
    )
    max_length: int = setting(
        2000, "Largest max_tokens a request may ask for.", "Bounds", check=is_positive
    )
    max_prompt: int = setting(
        2000, "Longest prompt, in characters (read in one pass).", "Bounds", check=is_positive
    )
    request_timeout: float = setting(
        300.0,
        "Seconds a request may take from arrival to its last character.",
        "Bounds",
        check=is_positive,
    )
    grace: float = setting(
        10.0,
        "On SIGTERM or Ctrl-C: seconds running streams get to finish before they are ended.",
        "Bounds",
        check=in_range(0, 3600, "[]"),
    )
    body_limit: int = setting(
        65536, "Largest request body, in bytes (beyond: 413).", "Bounds", check=is_positive
    )
    stream_interval: float = setting(
        0.02,
        "A stream gets at most one event per this many seconds, the steps between merged "
        "(0: one per step; its first characters and its end never wait).",
        "Server",
        check=in_range(0, 1, "[]"),
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if not 0 <= self.port <= 65535:
            raise SettingError(f"{{port}} must be in [0, 65535], not {self.port}")
        names = [spec.partition("=")[0] for spec in self.models]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise SettingError(f"{{models}} names {repeated[0]!r} twice")

    def key(self, environ: dict[str, str]) -> str | None:
        """The API key: ``--api-key``, else ``CHARLSTM_API_KEY`` (empty: none)."""
        return self.api_key or environ.get("CHARLSTM_API_KEY") or None

    @property
    def loopback(self) -> bool:
        """Whether ``host`` is reachable from this machine only."""
        return self.host == "localhost" or self.host == "::1" or self.host.startswith("127.")

    def named_models(self) -> list[tuple[str, str]]:
        """``(NAME, RUN)`` of each ``--model``, in order."""
        return [(name, run) for name, _, run in (s.partition("=") for s in self.models)]

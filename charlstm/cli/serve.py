"""``charlstm serve``: trained models behind HTTP (see :mod:`charlstm.serve`).

Imports neither torch's nor FastAPI's modules until the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from charlstm.cli.common import RunsRoot, app, handle_errors
from charlstm.cli.options import Given, settings_options
from charlstm.fields import build
from charlstm.generation.settings import ModelChoice
from charlstm.serve.settings import ServeConfig


@app.command()
@handle_errors
@settings_options(ServeConfig, (ModelChoice, ("device", "lstm_only")))
def serve(
    run: Annotated[
        Path | None,
        typer.Argument(
            help="Run directory or checkpoint file to serve (default: the newest run, "
            "unless --model names the models).",
            show_default=False,
        ),
    ] = None,
    runs_root: RunsRoot = Path("runs"),
    given: Given | None = None,
) -> None:
    """Serve models over HTTP: OpenAI-compatible /v1/completions and /v1/chat/completions
    (streamed with "stream": true), /tokenize, /detokenize, /health, /v1/models,
    /metrics, and a page to write with at /.

    All running requests step together as one batch; a request with a seed writes exactly
    what charlstm generate --seed writes. SIGTERM or Ctrl-C stops taking requests and
    gives running ones --grace seconds.

    Example: charlstm serve runs/x --port 8000, then open http://127.0.0.1:8000/
    """
    import os

    from charlstm.api import load_model
    from charlstm.serve.app import create_app, run_server
    from charlstm.storage import checkpoint as ckpt

    given = given or {}
    config = build(ServeConfig, given)
    choice = build(ModelChoice, given)
    named = config.named_models()
    if run is not None or not named:
        path = ckpt.resolve(run, prefer="best.pt", runs_root=runs_root)
        default_name = (path.parent if path.name.endswith(".pt") else path).name
        named = [(default_name, str(path)), *named]
    paths = [(name, ckpt.resolve(Path(where), prefer="best.pt")) for name, where in named]

    def load() -> dict:
        models = {}
        for name, path in paths:
            model = load_model(path, choice.device)
            models[name] = model.lstm_only() if choice.lstm_only else model
        return models

    app_ = create_app(
        load,
        [name for name, _ in paths],
        config.max_streams,
        config.max_queue,
        config.max_length,
        config.max_prompt,
        config.request_timeout,
        config.body_limit,
        api_key=config.key(dict(os.environ)),
        stream_interval=config.stream_interval,
    )
    if not config.loopback and config.key(dict(os.environ)) is None:
        typer.echo(
            f"warning: listening on {config.host} without --api-key: anyone who can reach "
            "this port can use the models",
            err=True,
        )
    run_server(app_, config.host, config.port, config.grace, log=lambda s: typer.echo(s))

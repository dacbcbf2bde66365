"""``charlstm convert``, ``info`` and ``plot``: the commands that read a run or a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from charlstm.cli.common import AsJson, RunsRoot, app, handle_errors


@app.command()
@handle_errors
def convert(
    checkpoint: Annotated[Path, typer.Argument(help="Run directory or checkpoint file.")],
    to: Annotated[str, typer.Option("--to", help="Target backend: torch or scratch.")],
    out: Annotated[Path, typer.Option(help="Where to write the converted checkpoint.")],
) -> None:
    """Convert a checkpoint between the scratch and torch backends (same outputs).

    Example: charlstm convert runs/x --to torch --out runs/x/best-torch.pt
    """
    from charlstm.storage.convert import convert_checkpoint

    path = convert_checkpoint(checkpoint, to, out)
    typer.echo(f"wrote {path} ({to} backend)")


@app.command()
@handle_errors
def info(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            help="Run directory or checkpoint file (default: the newest run).",
            show_default=False,
        ),
    ] = None,
    as_json: AsJson = False,
    runs_root: RunsRoot = Path("runs"),
) -> None:
    """Describe a trained model: backend, sizes, parameters, vocabulary, corpus, epochs,
    best held-out perplexity, and its metrics as a table and loss sparklines.

    Example: charlstm info runs/x
    """
    from charlstm.cli.report import describe, render_info
    from charlstm.storage import checkpoint as ckpt

    path = checkpoint if checkpoint is not None else ckpt.resolve(None, runs_root=runs_root)
    report = describe(path)
    typer.echo(json.dumps(report, ensure_ascii=False) if as_json else render_info(report))


@app.command()
@handle_errors
def plot(
    run: Annotated[Path, typer.Argument(help="Run directory (or a checkpoint file in one).")],
    out: Annotated[
        Path | None,
        typer.Option(help="PNG file to write (default: RUN/perplexity.png).", show_default=False),
    ] = None,
) -> None:
    """Plot training and held-out perplexity per epoch as a PNG.

    Needs matplotlib: pip install 'charlstm[plot]'. Example: charlstm plot runs/x
    """
    from charlstm.cli.report import plot_perplexity

    typer.echo(f"wrote {plot_perplexity(run, out)}")

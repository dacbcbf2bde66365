"""``charlstm export``, ``convert``, ``info`` and ``plot``: the commands that read a run or a
checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from charlstm.cli.common import AsJson, RunsRoot, app, handle_errors


@app.command()
@handle_errors
def export(
    run: Annotated[
        Path, typer.Argument(help="Run directory (its best.pt) or checkpoint file to export.")
    ],
    out_dir: Annotated[Path, typer.Argument(help="New (or empty) directory to write.")],
    half: Annotated[
        bool, typer.Option("--half", help="Store the weights as float16 (half the size).")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUT_DIR if it is not empty.")
    ] = False,
) -> None:
    """Write a model to share: model.safetensors (weights only), config.json, vocab.json
    and a README.md model card. generate, eval, serve, verse-check and train --init-from
    take the directory wherever they take a run; loading it unpickles nothing.

    Example: charlstm export runs/x jay-model --half
    """
    from charlstm.cli.options import training_command
    from charlstm.storage.export import export_model

    exported = export_model(run, out_dir, half=half, overwrite=overwrite, command=training_command)
    sizes = ", ".join(f"{name} {size:,} B" for name, size in exported.files.items())
    typer.echo(
        f"wrote {exported.directory}: {exported.parameters:,} parameters as {exported.dtype} "
        f"({sizes})"
    )
    typer.echo(f"generate with: charlstm generate --checkpoint {exported.directory} --prefix ...")


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

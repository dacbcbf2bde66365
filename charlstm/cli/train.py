"""``charlstm train`` and ``charlstm prepare``: the commands that read a corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from charlstm.cli.common import RunsRoot, app, handle_errors
from charlstm.cli.options import Given, settings_options
from charlstm.config import DataConfig, ModelConfig, TrainConfig
from charlstm.fields import build
from charlstm.presets import PRESETS


@app.command()
@handle_errors
@settings_options(DataConfig, ModelConfig, TrainConfig)
def train(
    corpus: Annotated[
        Path | None,
        typer.Argument(
            help="Corpus: a .zip of text files or a .txt file. Default: the bundled demo corpus.",
            show_default=False,
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Named settings: " + ", ".join(PRESETS) + " (options given override them).",
            rich_help_panel="Training",
        ),
    ] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(
            help="Run directory (default: runs/<time>-<corpus>-<backend>).",
            rich_help_panel="Output",
            show_default=False,
        ),
    ] = None,
    runs_root: RunsRoot = Path("runs"),
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue a run: its directory (its last.pt) or a checkpoint file, e.g. "
            "RUN/best.pt. With --run-dir: continue in a new directory, leaving RUN as it is.",
            rich_help_panel="Output",
            show_default=False,
        ),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="Start a new run from a checkpoint's weights (fine-tuning).",
            rich_help_panel="Output",
            show_default=False,
        ),
    ] = None,
    extend_vocab: Annotated[
        bool,
        typer.Option(
            "--extend-vocab",
            help="With --init-from: add rows for new characters.",
            rich_help_panel="Output",
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace an existing run in --run-dir.", rich_help_panel="Output"
        ),
    ] = False,
    given: Given | None = None,
) -> None:
    """Train a model on CORPUS, printing perplexity and samples; writes runs/<name>/.

    Ctrl-C or SIGTERM saves last.pt and prints the command that continues the run.

    After a crash, --resume RUN continues from the newest checkpoint (see --checkpoint-every).

    Example: charlstm train ../shared/data/jaychou_lyrics.txt.zip --backend scratch --epochs 20
    """
    from charlstm.training.start import RunRequest, start_run

    request = RunRequest(
        corpus, given or {}, preset, run_dir, runs_root, resume, init_from, extend_vocab, overwrite
    )
    trainer = start_run(request, log=typer.echo)
    typer.echo(trainer.describe())
    typer.echo(trainer.fit().summary())


@app.command()
@handle_errors
@settings_options(DataConfig, (TrainConfig, ("val_fraction",)))
def prepare(
    corpus: Annotated[Path, typer.Argument(help="Corpus: a .zip of text files or a text file.")],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Directory to write (default: CORPUS's name + .prepared).", show_default=False
        ),
    ] = None,
    given: Given | None = None,
) -> None:
    """Read a corpus of any size once, in chunks, into token files for training.

    Writes DIR/train.bin and DIR/val.bin (uint16 indices, uint32 past 65,535 characters, read
    through memory maps), vocab.json and meta.json; train it with: charlstm train DIR.

    Example: charlstm prepare ../shared/data/tang_poems.txt.zip --out data/tang
    """
    from charlstm.data.prepared import prepare as prepare_corpus

    data = build(DataConfig, given or {}, path=str(corpus.resolve()))
    val_fraction = build(TrainConfig, given or {}).val_fraction  # checked as train checks it
    target = out if out is not None else corpus.with_name(corpus.name.split(".")[0] + ".prepared")
    # Written into a temporary directory beside DIR and renamed into place when whole, so
    # that a killed or concurrent prepare never leaves a half-written DIR.
    prepared = prepare_corpus(data, val_fraction, target, log=typer.echo)
    typer.echo(
        f"wrote {target}: {len(prepared.train):,} training / {len(prepared.val):,} held-out "
        f"characters, vocabulary {len(prepared.vocab):,}; train with: charlstm train {target}"
    )

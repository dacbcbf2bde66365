"""The ``charlstm`` command line: parse, build configs, call the library, report.

Commands only; the work happens in the library. A :class:`~charlstm.errors.CharLSTMError`
becomes one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from charlstm.api import EvalScope, LanguageModel, ModelChoice
from charlstm.cli.options import Given, settings_options
from charlstm.config import PRESETS, DataConfig, ModelConfig, SettingError, TrainConfig, build
from charlstm.config import option_name as option
from charlstm.errors import CharLSTMError
from charlstm.generation.adaptation import (
    GENERATION_CACHE_MIX,
    Adaptation,
    CacheConfig,
    DynamicConfig,
    from_settings,
)
from charlstm.generation.decoding import SamplingConfig
from charlstm.generation.sample import GenerateRequest
from charlstm.storage import checkpoint as ckpt
from charlstm.storage import safe_io

app = typer.Typer(
    name="charlstm",
    help="Character-level LSTM lyrics generator: train, resume, evaluate, generate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts show "[default: ...]" literally
)

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=code)


#: What to make smaller when a command runs out of memory.
OUT_OF_MEMORY_HINTS = {  # by the command's function name
    "train": f"a smaller {option('batch_size')} or {option('hidden_size')}",
    "generate": f"a smaller {option('length')}, {option('num_samples')} or "
    f"{option('cache.window')}",
    "evaluate": f"a shorter text or a smaller {option('cache.window')}",
}


def handle_errors(command: F) -> F:
    """Turn ``CharLSTMError`` (and a stray Ctrl-C) into one line and an exit code.

    A file-system failure nobody anticipated (a full disk while writing a log, say) is
    the environment's, not a bug: it too is one line, naming the file.
    """

    smaller = OUT_OF_MEMORY_HINTS.get(command.__name__, "smaller settings")
    out_of_memory = f"out of memory; try {smaller}"

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except SettingError as err:  # the library names fields; a user typed options
            raise fail(err.render(option), err.exit_code) from None
        except CharLSTMError as err:
            raise fail(str(err), err.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except MemoryError:
            raise fail(out_of_memory, 1) from None
        except RuntimeError as err:  # torch reports a failed allocation as a RuntimeError
            text = str(err).lower()
            if "out of memory" not in text and "can't allocate memory" not in text:
                raise
            raise fail(out_of_memory, 1) from None
        except OSError as err:
            where = f": {err.filename}" if err.filename else ""
            raise fail(f"{err.strerror or err}{where}", 1) from None

    return wrapper  # type: ignore[return-value]


RunsRoot = Annotated[
    Path, typer.Option("--runs-root", help="Where run directories are created and looked up.")
]


AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


@app.command()
@handle_errors
@settings_options(DataConfig, ModelConfig, TrainConfig)
def train(
    corpus: Annotated[
        Path | None,
        typer.Argument(
            help="Corpus: a .zip of text files or a .txt file. Default: the demo corpus in data/.",
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


@app.command()
@handle_errors
@settings_options(
    GenerateRequest,
    SamplingConfig,
    ModelChoice,
    Adaptation,
    CacheConfig,
    DynamicConfig,
    shown={"cache.mix": GENERATION_CACHE_MIX},  # writing feeds the cache its own text
)
def generate(runs_root: RunsRoot = Path("runs"), given: Given | None = None) -> None:
    """Write text that continues each prefix, streamed as it is generated.

    --cache and --dynamic adapt each sample to its own text (the prefix, then every
    character written) as eval does; the sampling controls apply to the adapted
    distribution.

    Example: charlstm generate --prefix 分开 --length 100 --temperature 0.8 --seed 1
    """
    from charlstm.cli.display import SampleStream, render_samples, use_style
    from charlstm.generation.decoding import new_seed

    given = given or {}
    request = build(GenerateRequest, given)
    prefixes = request.all_prefixes()
    sampling = build(SamplingConfig, given)
    cache, dynamic = from_settings(given, generating=True)
    model = build(ModelChoice, given).load(runs_root)
    seed = new_seed() if request.seed is None else request.seed
    stream = None
    if request.out is None and request.output_format == "text":
        rows = [p for p in prefixes for _ in range(request.num_samples)]
        stream = SampleStream(rows, lambda s: typer.echo(s, nl=False), use_style(sys.stdout))
    try:
        texts = model.generate_many(
            prefixes,
            request.length,
            request.num_samples,
            sampling,
            seed,
            stop_at=request.stop_at,
            lines=request.lines,
            on_step=stream.on_step if stream else None,
            cache=cache,
            dynamic=dynamic,
        )
    except KeyboardInterrupt:
        if stream is not None and stream.started:
            typer.echo("")  # end the half-written line before the message
        raise
    if stream is not None:
        stream.close()
        return
    settings = _generation_record(model, request, sampling, cache, dynamic)
    checkpoint = str(model.checkpoint.path)
    body = render_samples(prefixes, texts, request.output_format, settings, checkpoint, seed)
    if request.out is None:
        typer.echo(body, nl=False)
        return
    safe_io.write_atomic(request.out, body)  # a full disk: one line, and no half-written file
    typer.echo(f"wrote {len(prefixes) * request.num_samples} samples to {request.out}", err=True)


def _generation_record(
    model: LanguageModel,
    request: GenerateRequest,
    sampling: SamplingConfig,
    cache: CacheConfig | None,
    dynamic: DynamicConfig | None,
) -> dict[str, Any]:
    """The settings ``--format jsonl`` records beside each sample."""
    return {
        "length": request.length,
        **sampling.as_dict(),
        "stop_at": request.stop_at,
        "lines": request.lines,
        "num_samples": request.num_samples,
        "cache": None if cache is None else asdict(cache),
        "dynamic": None if dynamic is None else asdict(dynamic),
        "model": model.describe(),
        "device": str(model.device),
    }


@app.command("eval")
@handle_errors
@settings_options(
    ModelChoice,
    EvalScope,
    (DataConfig, ("member", "encoding")),
    Adaptation,
    CacheConfig,
    DynamicConfig,
)
def evaluate(
    corpus: Annotated[Path, typer.Argument(help="Text to score: a .zip or .txt file.")],
    as_json: AsJson = False,
    runs_root: RunsRoot = Path("runs"),
    given: Given | None = None,
) -> None:
    """Score a text with a trained model: loss (nats/char), bits per char, perplexity.

    --cache and --dynamic adapt to the text as it is read; each character is still scored
    before the model sees it.

    Example: charlstm eval ../shared/data/jaychou_lyrics.txt.zip --checkpoint runs/x --cache
    """
    given = given or {}
    cache, dynamic = from_settings(given)
    model = build(ModelChoice, given).load(runs_root)
    report = model.evaluate_file(
        corpus,
        val_fraction=given.get("val_fraction"),
        member=given.get("member"),
        encoding=given.get("encoding"),
        cache=cache,
        dynamic=dynamic,
    )
    if report["chars"] == 0:
        raise CharLSTMError(f"nothing to score: {corpus} ({report['scope']}) is too short")
    if as_json:
        typer.echo(json.dumps(report, ensure_ascii=False))
        return
    typer.echo(
        f"{report['corpus']}: {report['chars']:,} characters scored "
        f"({report['scope']}); loss {report['loss']:.4f} nats/char, "
        f"{report['bpc']:.4f} bits/char, perplexity {report['perplexity']:.2f} "
        f"[{report['model']}]"
        + "".join(f" [{name}]" for name in ("cache", "dynamic") if report[name])
    )


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


def main() -> None:
    """Console-script entry point.

    Runs the app outside click's standalone mode so that a malformed command line (an
    unknown option, ``--batch-size abc``) is one ``error:`` line, like every other mistake,
    instead of a usage block. Typer raises click's exception types (vendored in recent
    versions), recognised here by their interface: ``format_message()`` and ``exit_code``.
    """
    try:
        code = app(standalone_mode=False)
    except (KeyboardInterrupt, typer.Abort):  # Ctrl-C outside a command
        code = 130
    except Exception as err:
        if not (hasattr(err, "format_message") and hasattr(err, "exit_code")):
            raise
        if type(err).__name__ == "NoArgsIsHelpError":  # bare `charlstm`: show the help
            err.show()
        else:
            ctx = getattr(err, "ctx", None)
            hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
            typer.echo(f"error: {err.format_message()}{hint}", err=True)
        code = err.exit_code
    sys.exit(code if isinstance(code, int) else 0)


from charlstm.cli import serve as _serve  # noqa: E402, F401  (registers `charlstm serve`)

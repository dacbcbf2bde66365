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

from charlstm import checkpoint as ckpt
from charlstm import safe_io
from charlstm.config import (
    PRESETS,
    DataConfig,
    ModelConfig,
    SettingError,
    TrainConfig,
    option_name,
    positive,
)
from charlstm.errors import CharLSTMError
from charlstm.evaluate import CacheConfig, DynamicConfig
from charlstm.options import Given, settings_options

app = typer.Typer(
    name="charlstm",
    help="Character-level LSTM lyrics generator: train, resume, evaluate, generate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts show "[default: ...]" literally
)

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", CacheConfig, DynamicConfig)


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=code)


#: What to make smaller when a command runs out of memory.
OUT_OF_MEMORY_HINTS = {  # by the command's function name
    "train": "a smaller --batch-size or --hidden",
    "generate": "a smaller --length, --num-samples or --cache-window",
    "evaluate": "a shorter text or a smaller --cache-window",
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
            raise fail(err.render(option_name), err.exit_code) from None
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


# Evaluation-time adaptation, the same options for eval and generate. The settings default
# to None ("not given") so that one given without its switch is an error, not ignored.
def _adaptation_option(name: str, help: str, default: object = None) -> Any:
    """A typer option of the Adaptation panel; a setting's help shows the library default."""
    if default is not None:
        help += f" [default: {default}]"
    return typer.Option(name, help=help, rich_help_panel="Adaptation", show_default=False)


CacheSwitch = Annotated[
    bool,
    _adaptation_option(
        "--cache", "Mix the model's distribution with a continuous cache of the text read so far."
    ),
]
CacheWindow = Annotated[
    int | None,
    _adaptation_option("--cache-window", "Cache: hidden states kept.", CacheConfig.window),
]
CacheFlatness = Annotated[
    float | None,
    _adaptation_option("--cache-flatness", "Cache: sharpness of the match.", CacheConfig.flatness),
]
CacheMix = Annotated[
    float | None,
    _adaptation_option(
        "--cache-mix", "Cache: its weight in the mixture, in [0, 1).", CacheConfig.mix
    ),
]
GenerateCacheMix = Annotated[  # writing feeds the cache its own text: a lighter default
    float | None,
    _adaptation_option(
        "--cache-mix",
        "Cache: its weight in the mixture, in [0, 1).",
        CacheConfig.for_generation().mix,
    ),
]
LstmOnly = Annotated[
    bool,
    typer.Option(
        "--lstm-only",
        help="Use the LSTM alone, without the n-gram a run trained with --ngram-mix interpolates.",
    ),
]
DynamicSwitch = Annotated[
    bool,
    _adaptation_option(
        "--dynamic", "Dynamic evaluation: learn from the text read so far, one SGD step a segment."
    ),
]
DynamicLr = Annotated[
    float | None,
    _adaptation_option("--dynamic-lr", "Dynamic evaluation: SGD step size.", DynamicConfig.lr),
]
DynamicSegment = Annotated[
    int | None,
    _adaptation_option(
        "--dynamic-segment", "Dynamic evaluation: characters per update.", DynamicConfig.segment
    ),
]


def adaptation(
    cache: bool,
    cache_window: int | None,
    cache_flatness: float | None,
    cache_mix: float | None,
    dynamic: bool,
    dynamic_lr: float | None,
    dynamic_segment: int | None,
    generating: bool = False,
) -> tuple[CacheConfig | None, DynamicConfig | None]:
    """The validated configs of ``--cache`` and ``--dynamic`` (``None`` when off).

    ``generating``: the cache's defaults for writing (:meth:`CacheConfig.for_generation`).
    """
    cache_settings = {"window": cache_window, "flatness": cache_flatness, "mix": cache_mix}
    dynamic_settings = {"lr": dynamic_lr, "segment": dynamic_segment}
    cache_kind = CacheConfig.for_generation if generating else CacheConfig
    return (
        _switched(cache_kind, "--cache", cache, cache_settings),
        _switched(DynamicConfig, "--dynamic", dynamic, dynamic_settings),
    )


def _switched(kind: Callable[..., C], switch: str, on: bool, settings: dict[str, Any]) -> C | None:
    """``kind`` from the settings given (the rest: its defaults) when ``switch`` is on."""
    given = {name: value for name, value in settings.items() if value is not None}
    if not on:
        if given:
            option = f"{switch}-{next(iter(given))}"
            raise CharLSTMError(f"{option} is a setting of {switch}; add {switch}")
        return None
    return kind(**given).validate()


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
    from charlstm.pipeline import RunRequest, start_run

    request = RunRequest(
        corpus, given or {}, preset, run_dir, runs_root, resume, init_from, extend_vocab, overwrite
    )
    trainer = start_run(request, log=typer.echo)
    typer.echo(trainer.describe())
    typer.echo(trainer.fit().summary())


@app.command()
@handle_errors
@settings_options(DataConfig)
def prepare(
    corpus: Annotated[Path, typer.Argument(help="Corpus: a .zip of text files or a text file.")],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Directory to write (default: CORPUS's name + .prepared).", show_default=False
        ),
    ] = None,
    val_fraction: Annotated[
        float,
        typer.Option(
            help="Held-out part at the end of the corpus, never trained on.",
            rich_help_panel="Corpus",
        ),
    ] = TrainConfig.val_fraction,
    given: Given | None = None,
) -> None:
    """Read a corpus of any size once, in chunks, into token files for training.

    Writes DIR/train.bin and DIR/val.bin (uint16 indices, uint32 past 65,535 characters, read
    through memory maps), vocab.json and meta.json; train it with: charlstm train DIR.

    Example: charlstm prepare ../shared/data/tang_poems.txt.zip --out data/tang
    """
    from charlstm.pipeline import layered
    from charlstm.prepared import prepare as prepare_corpus

    data = layered(DataConfig, given or {}, path=str(corpus.resolve()))
    layered(TrainConfig, {"val_fraction": val_fraction})  # checked as train checks it
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
def generate(
    prefix: Annotated[
        list[str] | None,
        typer.Option(help="Text to continue (repeatable).", rich_help_panel="Input"),
    ] = None,
    prefix_file: Annotated[
        Path | None,
        typer.Option(
            help="A UTF-8 file of prefixes, one per line (after any --prefix).",
            rich_help_panel="Input",
            show_default=False,
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Run directory or checkpoint file (default: the newest run's best.pt).",
            show_default=False,
            rich_help_panel="Input",
        ),
    ] = None,
    length: Annotated[
        int,
        typer.Option(
            help="Characters to generate after the prefix (at most, with --stop-at/--lines).",
            rich_help_panel="Length",
        ),
    ] = 100,
    temperature: Annotated[
        float, typer.Option(help="Below 1: safer; above 1: wilder.", rich_help_panel="Sampling")
    ] = 1.0,
    top_k: Annotated[
        int | None,
        typer.Option(
            help="Sample only among the K likeliest characters.", rich_help_panel="Sampling"
        ),
    ] = None,
    top_p: Annotated[
        float | None,
        typer.Option(
            help="Sample only among the likeliest characters holding this much probability.",
            rich_help_panel="Sampling",
        ),
    ] = None,
    greedy: Annotated[
        bool,
        typer.Option(
            "--greedy",
            help="Always take the likeliest character (tends to loop).",
            rich_help_panel="Sampling",
        ),
    ] = False,
    repetition_penalty: Annotated[
        float,
        typer.Option(
            help="Divide the probability of characters generated in the last --penalty-window "
            "characters by this (1: off; try 1.5 to 3).",
            rich_help_panel="Sampling",
        ),
    ] = 1.0,
    penalty_window: Annotated[
        int,
        typer.Option(
            help="How many generated characters back --repetition-penalty looks.",
            rich_help_panel="Sampling",
        ),
    ] = 32,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seed: the same seed gives the same text (default: a random one, "
            "recorded by --format jsonl).",
            rich_help_panel="Sampling",
        ),
    ] = None,
    num_samples: Annotated[
        int,
        typer.Option(
            help="Samples per prefix (all generated as one batch).", rich_help_panel="Sampling"
        ),
    ] = 1,
    stop_at: Annotated[
        str | None,
        typer.Option(
            help="End each sample with the first CHAR it generates ('\\n' for a newline).",
            rich_help_panel="Length",
            metavar="CHAR",
        ),
    ] = None,
    lines: Annotated[
        int | None,
        typer.Option(
            help="End each sample at its N-th newline.", rich_help_panel="Length", metavar="N"
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write the samples to FILE instead of the terminal.",
            rich_help_panel="Output",
            show_default=False,
        ),
    ] = None,
    output_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="text, or jsonl: one JSON object per sample (prefix, text, settings, "
            "checkpoint, seed).",
            rich_help_panel="Output",
        ),
    ] = "text",
    cache: CacheSwitch = False,
    cache_window: CacheWindow = None,
    cache_flatness: CacheFlatness = None,
    cache_mix: GenerateCacheMix = None,
    dynamic: DynamicSwitch = False,
    dynamic_lr: DynamicLr = None,
    dynamic_segment: DynamicSegment = None,
    lstm_only: LstmOnly = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
    runs_root: RunsRoot = Path("runs"),
) -> None:
    """Write text that continues each prefix, streamed as it is generated.

    --cache and --dynamic adapt each sample to its own text (the prefix, then every
    character written) as eval does; the sampling controls apply to the adapted
    distribution.

    Example: charlstm generate --prefix 分开 --length 100 --temperature 0.8 --seed 1
    """
    from charlstm.api import load_model, read_prefix_file
    from charlstm.display import SampleStream, render_samples, use_style
    from charlstm.sampling import SamplingConfig, check_request, new_seed, parse_char

    if output_format not in ("text", "jsonl"):
        raise CharLSTMError(f"unknown --format {output_format!r}; choose text or jsonl")
    prefixes = list(prefix or []) + (read_prefix_file(prefix_file) if prefix_file else [])
    if not prefixes:
        raise CharLSTMError("give a prefix to continue, e.g. --prefix 分开, or --prefix-file")
    sampling = SamplingConfig(
        temperature, top_k, top_p, greedy, repetition_penalty, penalty_window
    ).validate()
    stop_char = parse_char(stop_at) if stop_at is not None else None
    check_request(length, num_samples, seed)  # before any row of the batch is built
    if lines is not None:
        positive("--lines", lines)
    cache_config, dynamic_config = adaptation(
        cache,
        cache_window,
        cache_flatness,
        cache_mix,
        dynamic,
        dynamic_lr,
        dynamic_segment,
        generating=True,
    )
    model = load_model(ckpt.resolve(checkpoint, prefer="best.pt", runs_root=runs_root), device)
    if lstm_only:
        model = model.lstm_only()
    seed = new_seed() if seed is None else seed
    stream = None
    if out is None and output_format == "text":
        rows = [p for p in prefixes for _ in range(num_samples)]
        stream = SampleStream(rows, lambda s: typer.echo(s, nl=False), use_style(sys.stdout))
    try:
        texts = model.generate_many(
            prefixes,
            length,
            num_samples,
            sampling,
            seed,
            stop_at=stop_char,
            lines=lines,
            on_step=stream.on_step if stream else None,
            cache=cache_config,
            dynamic=dynamic_config,
        )
    except KeyboardInterrupt:
        if stream is not None and stream.started:
            typer.echo("")  # end the half-written line before the message
        raise
    if stream is not None:
        stream.close()
        return
    settings = {
        "length": length,
        **sampling.as_dict(),
        "stop_at": stop_char,
        "lines": lines,
        "num_samples": num_samples,
        "cache": None if cache_config is None else asdict(cache_config),
        "dynamic": None if dynamic_config is None else asdict(dynamic_config),
        "model": model.describe(),
        "device": str(model.device),
    }
    body = render_samples(
        prefixes, texts, output_format, settings, str(model.checkpoint.path), seed
    )
    if out is None:
        typer.echo(body, nl=False)
        return
    safe_io.write_atomic(out, body)  # a full disk: one line, and no half-written file
    typer.echo(f"wrote {len(prefixes) * num_samples} samples to {out}", err=True)


@app.command("eval")
@handle_errors
def evaluate(
    corpus: Annotated[Path, typer.Argument(help="Text to score: a .zip or .txt file.")],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Run directory or checkpoint file (default: the newest run's best.pt).",
            show_default=False,
        ),
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(
            help="Score only this last part of the text (default: the run's held-out "
            "part if CORPUS is the run's corpus, else the whole text).",
            show_default=False,
        ),
    ] = None,
    member: Annotated[str | None, typer.Option(help="Zip member to read.")] = None,
    encoding: Annotated[
        str | None, typer.Option(help="Text encoding (default: UTF-8, else GB18030).")
    ] = None,
    cache: CacheSwitch = False,
    cache_window: CacheWindow = None,
    cache_flatness: CacheFlatness = None,
    cache_mix: CacheMix = None,
    dynamic: DynamicSwitch = False,
    dynamic_lr: DynamicLr = None,
    dynamic_segment: DynamicSegment = None,
    lstm_only: LstmOnly = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
    runs_root: RunsRoot = Path("runs"),
) -> None:
    """Score a text with a trained model: loss (nats/char), bits per char, perplexity.

    --cache and --dynamic adapt to the text as it is read; each character is still scored
    before the model sees it.

    Example: charlstm eval ../shared/data/jaychou_lyrics.txt.zip --checkpoint runs/x --cache
    """
    from charlstm.api import load_model

    cache_config, dynamic_config = adaptation(
        cache, cache_window, cache_flatness, cache_mix, dynamic, dynamic_lr, dynamic_segment
    )
    model = load_model(ckpt.resolve(checkpoint, prefer="best.pt", runs_root=runs_root), device)
    if lstm_only:
        model = model.lstm_only()
    report = model.evaluate_file(
        corpus,
        val_fraction=val_fraction,
        member=member,
        encoding=encoding,
        cache=cache_config,
        dynamic=dynamic_config,
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
    from charlstm.convert import convert_checkpoint

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
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    runs_root: RunsRoot = Path("runs"),
) -> None:
    """Describe a trained model: backend, sizes, parameters, vocabulary, corpus, epochs,
    best held-out perplexity, and its metrics as a table and loss sparklines.

    Example: charlstm info runs/x
    """
    from charlstm.report import describe, render_info

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
    from charlstm.report import plot_perplexity

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

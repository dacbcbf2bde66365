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
from charlstm.config import positive
from charlstm.errors import CharLSTMError
from charlstm.evaluate import CacheConfig, DynamicConfig

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
OUT_OF_MEMORY_HINTS = {
    "train": "a smaller --batch-size or --hidden",
    "generate": "a smaller --length, --num-samples or --cache-window",
    "eval": "a shorter text or a smaller --cache-window",
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
def train(
    corpus: Annotated[
        Path | None,
        typer.Argument(
            help="Corpus: a .zip of text files or a .txt file. Default: the demo corpus in data/.",
            show_default=False,
        ),
    ] = None,
    # data
    member: Annotated[
        str | None,
        typer.Option(
            help="Zip member to read (default: every text member, in name order).",
            rich_help_panel="Corpus",
        ),
    ] = None,
    encoding: Annotated[
        str | None,
        typer.Option(
            help="Text encoding (default: UTF-8, else GB18030).", rich_help_panel="Corpus"
        ),
    ] = None,
    newlines: Annotated[
        str | None,
        typer.Option(
            help="keep, or space (d2l's behaviour). [default: keep]", rich_help_panel="Corpus"
        ),
    ] = None,
    max_chars: Annotated[
        int | None,
        typer.Option(
            help="Use only the first N characters (d2l: 10000).", rich_help_panel="Corpus"
        ),
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(
            help="Held-out part at the end of the corpus, never trained on. [default: 0.1]",
            rich_help_panel="Corpus",
        ),
    ] = None,
    # model
    backend: Annotated[
        str | None,
        typer.Option(
            help="scratch (LSTM written out gate by gate) or torch (nn.LSTM). [default: scratch]",
            rich_help_panel="Model",
        ),
    ] = None,
    hidden: Annotated[
        int | None,
        typer.Option(help="Hidden units per layer. [default: 256]", rich_help_panel="Model"),
    ] = None,
    layers: Annotated[
        int | None, typer.Option(help="LSTM layers. [default: 1]", rich_help_panel="Model")
    ] = None,
    embedding_size: Annotated[
        int | None,
        typer.Option(help="Embedding size (default: --hidden).", rich_help_panel="Model"),
    ] = None,
    dropout: Annotated[
        float | None,
        typer.Option(
            help="Dropout between layers and on the output. [default: 0.3]", rich_help_panel="Model"
        ),
    ] = None,
    embed_dropout: Annotated[
        float | None,
        typer.Option(help="Dropout on the embeddings. [default: 0]", rich_help_panel="Model"),
    ] = None,
    weight_drop: Annotated[
        float | None,
        typer.Option(
            help="DropConnect on hidden-to-hidden weights (scratch). [default: 0]",
            rich_help_panel="Model",
        ),
    ] = None,
    variational: Annotated[
        bool | None,
        typer.Option(
            "--variational/--no-variational",
            help="One dropout mask per sequence, shared across time steps. [default: off]",
            rich_help_panel="Model",
            show_default=False,
        ),
    ] = None,
    tie_weights: Annotated[
        bool | None,
        typer.Option(
            "--tie-weights/--no-tie-weights",
            help="Output layer shares the embedding matrix. [default: off]",
            rich_help_panel="Model",
            show_default=False,
        ),
    ] = None,
    scratch_impl: Annotated[
        str | None,
        typer.Option(
            help="fused (hand-derived backward) or autograd (plain). [default: fused]",
            rich_help_panel="Model",
        ),
    ] = None,
    peephole: Annotated[
        bool | None,
        typer.Option(
            "--peephole/--no-peephole",
            help="Peephole connections (scratch only). [default: off]",
            rich_help_panel="Model",
            show_default=False,
        ),
    ] = None,
    # training
    preset: Annotated[
        str | None,
        typer.Option(
            help="Named settings: small-corpus, large-corpus or large-corpus-gpu (options "
            "given override them).",
            rich_help_panel="Training",
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            help="Total epochs (on --resume: the new total). [default: 20]",
            rich_help_panel="Training",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Sequences per batch. [default: 32]", rich_help_panel="Training"),
    ] = None,
    num_steps: Annotated[
        int | None,
        typer.Option(
            help="Characters per window (truncated BPTT length). [default: 35]",
            rich_help_panel="Training",
        ),
    ] = None,
    sampling: Annotated[
        str | None,
        typer.Option(
            help="consecutive (state carried) or random windows. [default: consecutive]",
            rich_help_panel="Training",
        ),
    ] = None,
    optimizer: Annotated[
        str | None,
        typer.Option(help="sgd, adam or adamw. [default: adam]", rich_help_panel="Training"),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(help="Learning rate. [default: 0.002]", rich_help_panel="Training"),
    ] = None,
    clip: Annotated[
        float | None,
        typer.Option(
            help="Clip the global gradient norm to this (0: off). [default: 1.0]",
            rich_help_panel="Training",
        ),
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option(help="Weight decay. [default: 0]", rich_help_panel="Training")
    ] = None,
    label_smoothing: Annotated[
        float | None,
        typer.Option(
            help="Label smoothing of the training targets (held-out loss is unsmoothed). "
            "[default: 0]",
            rich_help_panel="Training",
        ),
    ] = None,
    ngram_teacher: Annotated[
        int | None,
        typer.Option(
            help="Distil a Kneser-Ney n-gram of this order into the model: it supplies soft "
            "training targets, cross-fitted on folds of the training text (0: off). [default: 0]",
            rich_help_panel="Training",
        ),
    ] = None,
    teacher_weight: Annotated[
        float | None,
        typer.Option(
            help="Weight of the n-gram teacher's targets in the training loss. [default: 0.5]",
            rich_help_panel="Training",
        ),
    ] = None,
    teacher_folds: Annotated[
        int | None,
        typer.Option(
            help="Folds of the training text for the n-gram teacher: each fold's targets come "
            "from an n-gram fitted on the others. [default: 5]",
            rich_help_panel="Training",
        ),
    ] = None,
    ngram_mix: Annotated[
        int | None,
        typer.Option(
            help="Predict with the LSTM interpolated with a Kneser-Ney n-gram of this order, "
            "fitted on the training text and kept in the checkpoint; eval and generate use "
            "the interpolation (0: off). [default: 0]",
            rich_help_panel="Training",
        ),
    ] = None,
    mix_weight: Annotated[
        float | None,
        typer.Option(
            help="Weight of the --ngram-mix n-gram in the interpolation, in (0, 1). "
            "[default: 0.25]",
            rich_help_panel="Training",
        ),
    ] = None,
    ema: Annotated[
        float | None,
        typer.Option(
            help="Keep an exponential moving average of the weights with this decay per "
            "optimizer step (e.g. 0.995); held-out scores, samples and saved models use the "
            "average (0: off). [default: 0]",
            rich_help_panel="Training",
        ),
    ] = None,
    schedule: Annotated[
        str | None,
        typer.Option(
            help="Learning-rate schedule: none, cosine or plateau. [default: none]",
            rich_help_panel="Training",
        ),
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(
            help="Stop after N epochs without a better held-out loss (0: never). [default: 0]",
            rich_help_panel="Training",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seed for weights, dropout and data order. [default: 0]",
            rich_help_panel="Training",
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="auto, cpu or cuda. [default: auto]", rich_help_panel="Training"),
    ] = None,
    # output
    prefix: Annotated[
        list[str] | None,
        typer.Option(
            help="Prefix to sample from during training (repeatable). [default: 分开, 不分开]",
            rich_help_panel="Output",
        ),
    ] = None,
    sample_every: Annotated[
        int | None,
        typer.Option(
            help="Print samples every N epochs (0: never). [default: 1]", rich_help_panel="Output"
        ),
    ] = None,
    sample_length: Annotated[
        int | None,
        typer.Option(
            help="Characters per training sample. [default: 50]", rich_help_panel="Output"
        ),
    ] = None,
    time_limit: Annotated[
        float | None,
        typer.Option(
            help="Stop after the epoch during which N minutes of training pass. [default: none]",
            rich_help_panel="Training",
        ),
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(
            help="Also write last.pt every N optimizer steps (0: only each epoch). [default: 0]",
            rich_help_panel="Output",
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
) -> None:
    """Train a model on CORPUS, printing perplexity and samples; writes runs/<name>/.

    Ctrl-C or SIGTERM saves last.pt and prints the command that continues the run.

    After a crash, --resume RUN continues from the newest checkpoint (see --checkpoint-every).

    Example: charlstm train ../shared/data/jaychou_lyrics.txt.zip --backend scratch --epochs 20
    """
    from charlstm.pipeline import prepare_training

    trainer = prepare_training(
        corpus,
        model_options={
            "backend": backend,
            "hidden_size": hidden,
            "num_layers": layers,
            "embedding_size": embedding_size,
            "dropout": dropout,
            "embed_dropout": embed_dropout,
            "weight_drop": weight_drop,
            "variational": variational,
            "tie_weights": tie_weights,
            "scratch_impl": scratch_impl,
            "peephole": peephole,
        },
        train_options={
            "epochs": epochs,
            "batch_size": batch_size,
            "num_steps": num_steps,
            "sampling": sampling,
            "optimizer": optimizer,
            "lr": lr,
            "clip": clip,
            "weight_decay": weight_decay,
            "label_smoothing": label_smoothing,
            "ngram_teacher": ngram_teacher,
            "teacher_weight": teacher_weight,
            "teacher_folds": teacher_folds,
            "ngram_mix": ngram_mix,
            "mix_weight": mix_weight,
            "ema": ema,
            "schedule": schedule,
            "patience": patience,
            "val_fraction": val_fraction,
            "seed": seed,
            "device": device,
            "sample_every": sample_every,
            "sample_length": sample_length,
            "prefixes": prefix or None,
            "checkpoint_every": checkpoint_every,
            "time_limit": time_limit,
        },
        data_options={
            "member": member,
            "encoding": encoding,
            "newlines": newlines,
            "max_chars": max_chars,
        },
        run_dir=run_dir,
        runs_root=runs_root,
        resume=resume,
        init_from=init_from,
        extend_vocab=extend_vocab,
        overwrite=overwrite,
        preset=preset,
        log=typer.echo,
    )
    m = trainer.model_config
    typer.echo(
        f"run {trainer.run_dir}: {m.backend} LSTM {m.num_layers}x{m.hidden_size}, "
        f"{trainer.model.num_parameters():,} parameters, vocabulary {m.vocab_size}, "
        f"{trainer.cut:,} training / {len(trainer.corpus) - trainer.cut:,} held-out characters, "
        f"{len(trainer.batches)} batches per epoch, device {trainer.device}"
    )
    trainer.fit()
    best = trainer.progress.best_val_loss
    summary = f"done: {trainer.run_dir}/best.pt"
    if best < float("inf"):
        import math

        ppl = math.exp(min(best, 700.0))  # a diverged run's loss can overflow exp
        summary += (
            f" (held-out perplexity {ppl:.2f})"
            if ppl < 1e6
            else f" (held-out perplexity {ppl:.3g})"
        )
    typer.echo(
        summary + f"; generate with: charlstm generate --checkpoint {trainer.run_dir} --prefix ..."
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
    from charlstm.sampling import (
        DEFAULT_PENALTY_WINDOW,
        SamplingConfig,
        check_request,
        new_seed,
        parse_char,
    )

    if output_format not in ("text", "jsonl"):
        raise CharLSTMError(f"unknown --format {output_format!r}; choose text or jsonl")
    prefixes = list(prefix or []) + (read_prefix_file(prefix_file) if prefix_file else [])
    if not prefixes:
        raise CharLSTMError("give a prefix to continue, e.g. --prefix 分开, or --prefix-file")
    sampling = SamplingConfig(
        temperature, top_k, top_p, greedy, repetition_penalty, penalty_window
    ).validate()
    if greedy and (temperature != 1.0 or top_k is not None or top_p is not None):
        raise CharLSTMError(
            "--greedy always takes the likeliest character: --temperature, --top-k and "
            "--top-p cannot change it (drop them, or drop --greedy to sample)"
        )
    if penalty_window != DEFAULT_PENALTY_WINDOW and repetition_penalty == 1.0:
        raise CharLSTMError(
            "--penalty-window is a setting of --repetition-penalty; add --repetition-penalty P"
        )
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

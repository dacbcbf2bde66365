"""``charlstm generate`` and ``charlstm eval``: the commands that use a trained model.

Their options come from :mod:`charlstm.generation.settings`, which does not import torch; the
model and the code that runs it are imported when a command runs, so that ``--help`` is
instant.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from charlstm.cli.common import AsJson, RunsRoot, app, handle_errors
from charlstm.cli.options import Given, settings_options
from charlstm.config import DataConfig
from charlstm.errors import CharLSTMError
from charlstm.fields import build
from charlstm.generation.settings import (
    GENERATION_CACHE_MIX,
    Adaptation,
    CacheConfig,
    DynamicConfig,
    EvalScope,
    GenerateRequest,
    ModelChoice,
    SamplingConfig,
    from_settings,
)
from charlstm.generation.verse.forms import VerseSettings
from charlstm.storage import safe_io

if TYPE_CHECKING:
    from charlstm.api import LanguageModel


def load_choice(given: Given, runs_root: Path) -> LanguageModel:
    """The model the options ``--checkpoint``, ``--device`` and ``--lstm-only`` choose."""
    from charlstm.api import load_model

    choice = build(ModelChoice, given)
    model = load_model(choice.checkpoint, choice.device, runs_root=runs_root)
    return model.lstm_only() if choice.lstm_only else model


@app.command()
@handle_errors
@settings_options(
    GenerateRequest,
    SamplingConfig,
    ModelChoice,
    Adaptation,
    CacheConfig,
    DynamicConfig,
    VerseSettings,
    shown={"cache.mix": GENERATION_CACHE_MIX},  # writing feeds the cache its own text
)
def generate(runs_root: RunsRoot = Path("runs"), given: Given | None = None) -> None:
    """Write text that continues each prefix, streamed as it is generated.

    --cache and --dynamic adapt each sample to its own text (the prefix, then every
    character written) as eval does; the sampling controls apply to the adapted
    distribution.

    --form or --line-lengths writes a poem in that form, kept exactly (rhyme, tone pattern,
    --acrostic); the prefix is its title.

    Example: charlstm generate --prefix 分开 --length 100 --temperature 0.8 --seed 1
    """
    from charlstm.cli.display import SampleStream, render_samples, use_style
    from charlstm.cli.verse import verse_request
    from charlstm.generation.decoding import new_seed

    given = given or {}
    verse, given = verse_request(given)  # a poem: no prefix needed, the form sets the length
    request = build(GenerateRequest, given)
    prefixes = request.all_prefixes()
    sampling = build(SamplingConfig, given)
    cache, dynamic = from_settings(given, generating=True)
    model = load_choice(given, runs_root)
    if verse.free_rhyme:  # the line bounds' defaults are the run's own
        from charlstm.generation.verse.lyrics import resolve_bounds

        verse = resolve_bounds(verse, model.checkpoint)
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
            stop=request.stop,
            on_step=stream.on_step if stream else None,
            cache=cache,
            dynamic=dynamic,
            verse=verse,
        )
    except KeyboardInterrupt:
        if stream is not None and stream.started:
            typer.echo("")  # end the half-written line before the message
        raise
    if stream is not None:
        stream.close()
        return
    settings = _generation_record(model, request, sampling, cache, dynamic)
    if verse.active or verse.free_rhyme:
        settings["verse"] = verse.describe()
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
        "stop": request.stop,
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
    model = load_choice(given, runs_root)
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

"""Held-out quality table: charlstm presets against the Kneser-Ney n-gram, one command.

For each corpus: train the preset (or reuse a finished run with --reuse), score the held-out
split with ``charlstm.eval.scoring`` (plain, continuous cache, dynamic evaluation, both),
score
the n-gram baseline on the same split with the same vocabulary, and write a markdown table
with samples for 分开 to ``--out``.

    python scripts/quality.py --corpus ../shared/data/jaychou_lyrics.txt.zip \\
        --preset small-corpus --order 6 --out docs/quality.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from charlstm.api import load_model
from charlstm.data.corpus import read_text, split_point
from charlstm.errors import CharLSTMError
from charlstm.eval.scoring import score, score_heldout
from charlstm.generation.settings import CacheConfig, DynamicConfig
from charlstm.ngram.kneser_ney import evaluate_ngram
from charlstm.storage.runs import read_metrics
from charlstm.training.start import prepare_training


def train_preset(corpus: Path, preset: str, run_dir: Path, reuse: bool, extra: dict) -> float:
    """Train ``preset`` into ``run_dir``; return training minutes (from metrics.jsonl)."""
    if not (reuse and (run_dir / "best.pt").exists()):
        trainer = prepare_training(
            corpus,
            {},
            {"sample_every": 0, **extra},
            {},
            run_dir=run_dir,
            preset=preset,
            overwrite=True,
            log=print,
            progress_bar=False,
        )
        trainer.fit()
    return sum(row["seconds"] for row in read_metrics(run_dir)) / 60


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--preset", default="small-corpus")
    parser.add_argument("--order", type=int, default=6, help="n-gram order of the baseline")
    parser.add_argument("--runs-root", type=Path, default=Path("runs/quality"))
    parser.add_argument("--reuse", action="store_true", help="reuse a finished run")
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="the run (default: RUNS_ROOT/CORPUS-PRESET)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--out", type=Path, default=None, help="append the table here")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (train and score)")
    args = parser.parse_args()
    try:
        extra = {"device": args.device}
        if args.epochs is not None:
            extra["epochs"] = args.epochs
        run_dir = args.run_dir or args.runs_root / f"{args.corpus.name.split('.')[0]}-{args.preset}"
        minutes = train_preset(args.corpus, args.preset, run_dir, args.reuse, extra)
        model = load_model(run_dir, args.device)
        metrics = read_metrics(run_dir)
        best = min(metrics, key=lambda r: r["val_loss"])
        text = read_text(args.corpus, newlines=model.checkpoint.data_config.newlines)
        indices = model.vocab.encode(text)
        cut = split_point(len(text), model.checkpoint.train_config.val_fraction)
        history, heldout = indices[:cut], indices[cut:]
        mixture = model.mixture  # the run's interpolated n-gram (--ngram-mix), if any
        name = "LSTM" if mixture is None else f"LSTM + {mixture.order}-gram"
        rows = []
        t0 = time.perf_counter()
        plain = score_heldout(model.model, history, heldout, mixture)
        rows.append((name, plain, time.perf_counter() - t0))
        alone = plain
        if mixture is not None:
            t0 = time.perf_counter()
            alone = score_heldout(model.model, history, heldout)
            rows.append(("LSTM alone (--lstm-only)", alone, time.perf_counter() - t0))
        # The LSTM on the text it trained on (dropout off): the memorisation gap.
        on_training = score(model.model, indices[1:cut], indices[:1])
        cache, dynamic = CacheConfig(), DynamicConfig()
        for suffix, options in (
            (" + cache", {"cache": cache}),
            (" + dynamic eval", {"dynamic": dynamic}),
            (" + cache + dynamic eval", {"cache": cache, "dynamic": dynamic}),
        ):
            t0 = time.perf_counter()
            result = score_heldout(model.model, history, heldout, mixture, **options)
            rows.append((name + suffix, result, time.perf_counter() - t0))
        # The yardstick (D = 0.75, the reference setup) and the same n-gram with its
        # discount chosen by cross-fitting on the training part (a stronger baseline).
        ngrams = []
        for discount in (0.75, None):
            t0 = time.perf_counter()
            result = evaluate_ngram(
                text,
                args.order,
                val_fraction=model.checkpoint.train_config.val_fraction,
                discount=discount,
                vocab=model.vocab,
            )
            ngrams.append((result, time.perf_counter() - t0))
        ngram, tuned = ngrams[0][0], ngrams[1][0]
    except CharLSTMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    config = model.checkpoint.model_config
    train_config = model.checkpoint.train_config
    teacher = (
        f", Kneser-Ney {train_config.ngram_teacher}-gram teacher at weight "
        f"{train_config.teacher_weight}"
        if train_config.ngram_teacher
        else ""
    )
    if train_config.label_smoothing:
        teacher += f", label smoothing {train_config.label_smoothing:g}"
    if train_config.ema:
        teacher += f", weights averaged (--ema {train_config.ema:g})"
    if mixture is not None:
        teacher += f"; predicts interpolated with a {mixture.describe()}"
    # Where it trained, as config.json records it (runs from before that record do not).
    trained_on = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("machine")
    where = "machine not recorded"
    if trained_on:
        where = trained_on["name"]
        if trained_on["device"] == "cpu":
            where += f", {trained_on['threads']} threads"
    both = rows[-1][1]
    lines = [
        f"### {args.corpus.name}, preset `{args.preset}`",
        "",
        "| corpus | preset | training time | training perplexity | held-out perplexity "
        "| LSTM alone | + cache + dynamic eval | Kneser-Ney n-gram |",
        "|---|---|---|---|---|---|---|---|",
        f"| {args.corpus.name} | {args.preset} | {minutes:.1f} min, {len(metrics)} epochs | "
        f"{on_training.perplexity:.1f} | **{plain.perplexity:.1f}** ({plain.loss:.4f} nats) | "
        f"{alone.perplexity:.1f} ({alone.loss:.4f}) | "
        f"{both.perplexity:.1f} | {ngram['perplexity']:.1f} ({args.order}-gram); "
        f"{tuned['perplexity']:.1f} with D = {tuned['discount']:g} |",
        "",
        "Training perplexity: the best LSTM on its own training text, dropout off. Held-out "
        "perplexity: the model as `charlstm eval` scores it"
        + ("" if mixture is None else f" ({name}; the LSTM alone in the next column)")
        + ".",
        "",
        f"Model: {config.backend} LSTM {config.num_layers}x{config.hidden_size}{teacher}, "
        f"{model.model.num_parameters():,} parameters; trained {len(metrics)} epochs in "
        f"{minutes:.1f} min ({where}); best epoch {best['epoch']} "
        f"(running training perplexity there, dropout on: {best['train_ppl']:.2f}). "
        "Held-out: the last "
        f"{len(heldout):,} characters, vocabulary of the whole file ({len(model.vocab):,}).",
        "",
        "| model | held-out loss (nats/char) | bits/char | held-out perplexity | scoring time |",
        "|---|---|---|---|---|",
    ]
    for name, result, seconds in rows:
        lines.append(
            f"| {name} | {result.loss:.4f} | {result.bpc:.3f} | "
            f"{result.perplexity:.1f} | {seconds:.1f} s |"
        )
    for result, seconds in ngrams:
        how = ", chosen by cross-fitting on the training part" if result["discount_chosen"] else ""
        lines.append(
            f"| Kneser-Ney {args.order}-gram (D = {result['discount']:g}{how}) | "
            f"{result['loss']:.4f} | {result['bpc']:.3f} | {result['perplexity']:.1f} | "
            f"{seconds:.1f} s |"
        )
    lines += [
        "",
        f"Cache: {json.dumps(cache.__dict__)}; dynamic evaluation: {json.dumps(dynamic.__dict__)}.",
        "",
        "Samples (temperature 0.8, seeds 1..):",
        "",
    ]
    prefix = "分开" if not model.vocab.missing("分开") else text[:4]
    for seed in range(1, args.samples + 1):
        sample = model.generate(prefix, length=80, temperature=0.8, seed=seed)
        lines.append(f"- seed {seed}: " + sample.replace("\n", " / "))
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write("\n" + report)
    print(f"perplexity {math.exp(plain.loss):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

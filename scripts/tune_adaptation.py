"""Grid-search the evaluation-time adaptation settings on a run's own held-out split.

Use it on a *tuning run* whose held-out part lies inside the real training text, so the real
held-out text never chooses the defaults. For jaychou (training split = first 56,953 chars):

    charlstm train ../shared/data/jaychou_lyrics.txt.zip --preset small-corpus \\
        --max-chars 56953 --run-dir runs/tune-jaychou
    python scripts/tune_adaptation.py runs/tune-jaychou

It prints the held-out perplexity of every cache setting, of dynamic evaluation at several
learning rates, and of the best of both together.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

from charlstm.api import load_model
from charlstm.data.corpus import Corpus, split_point
from charlstm.errors import CharLSTMError
from charlstm.eval.scoring import score_heldout
from charlstm.generation.settings import CacheConfig, DynamicConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run directory or checkpoint")
    parser.add_argument("--windows", default="500,2000")
    parser.add_argument("--flatness", default="0.5,1,2")
    parser.add_argument("--mixes", default="0.15,0.3,0.45")
    parser.add_argument("--dynamic-lrs", default="0.01,0.03,0.1")
    args = parser.parse_args()
    try:
        model = load_model(args.run)
        corpus = Corpus.read(model.checkpoint.data_config, model.vocab)
    except CharLSTMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cut = split_point(len(corpus), model.checkpoint.train_config.val_fraction)
    history, heldout = corpus.indices[:cut], corpus.indices[cut:]

    def run(**options: object) -> float:
        start = time.perf_counter()
        result = score_heldout(model.model, history, heldout, **options)
        print(
            f"  {options or 'plain'}: perplexity {result.perplexity:.2f} "
            f"({time.perf_counter() - start:.1f} s)",
            flush=True,
        )
        return result.perplexity

    print(f"{args.run}: tuning on {len(heldout):,} held-out characters")
    run()
    caches = [
        CacheConfig(int(w), float(f), float(m))
        for w, f, m in itertools.product(
            args.windows.split(","), args.flatness.split(","), args.mixes.split(",")
        )
    ]
    best_cache = min(caches, key=lambda c: run(cache=c))
    dynamics = [DynamicConfig(lr=float(lr)) for lr in args.dynamic_lrs.split(",")]
    best_dynamic = min(dynamics, key=lambda d: run(dynamic=d))
    both = run(cache=best_cache, dynamic=best_dynamic)
    print(f"best cache {best_cache}; best dynamic {best_dynamic}; both: {both:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

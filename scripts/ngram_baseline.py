"""Held-out perplexity of an interpolated Kneser-Ney character n-gram model.

The honest yardstick for charlstm's LSTMs: fit on the first (1 - val_fraction) of the
corpus, score the rest, vocabulary built from the whole file (unseen characters reach
probability through the uniform lowest order).

    python scripts/ngram_baseline.py ../shared/data/jaychou_lyrics.txt.zip --order 6
    python scripts/ngram_baseline.py ../shared/data/tiny_shakespeare.txt --order 7 --json
    python scripts/ngram_baseline.py ../shared/data/jaychou_lyrics.txt.zip --order 6 --discount auto
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

try:
    import charlstm  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from charlstm.data.corpus import read_text
from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError, option_name
from charlstm.ngram.kneser_ney import evaluate_ngram


def discount_arg(value: str) -> float | None:
    """``--discount``: a number, or ``auto`` (None: chosen on the training part)."""
    if value == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'auto': {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ngram_baseline.py",
        description=(
            "Fit an interpolated Kneser-Ney character n-gram model on the training part of "
            "CORPUS and print its held-out loss (nats/char), bits per char and perplexity."
        ),
    )
    parser.add_argument("corpus", metavar="CORPUS", help="a .zip of text members or a text file")
    parser.add_argument(
        "--order", type=int, required=True, help="n: predict from the n-1 previous characters"
    )
    parser.add_argument(
        "--discount",
        type=discount_arg,
        default=0.75,
        help=(
            "absolute discount D, all orders (default 0.75), or 'auto': the D that scores "
            "the training part best by cross-fitting (5 folds, each scored by a model "
            "fitted on the other four)"
        ),
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="held-out share: the last fraction of characters (default 0.1)",
    )
    parser.add_argument(
        "--newlines",
        choices=["keep", "space"],
        default="keep",
        help="keep newlines, or turn them into spaces (d2l)",
    )
    parser.add_argument(
        "--max-chars", type=int, default=None, help="use only the first N characters"
    )
    parser.add_argument("--member", default=None, help="the member of a zip file to read")
    parser.add_argument(
        "--encoding", default=None, help="text encoding (default: UTF-8, then GB18030)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        text = read_text(
            args.corpus,
            member=args.member,
            encoding=args.encoding,
            newlines=args.newlines,
            max_chars=args.max_chars,
        )
        result = evaluate_ngram(
            text, order=args.order, val_fraction=args.val_fraction, discount=args.discount
        )
    except CharLSTMError as err:
        message = err.render(option_name) if isinstance(err, SettingError) else err
        print(f"error: {message}", file=sys.stderr)
        return err.exit_code
    result["corpus"] = str(args.corpus)
    result["seconds"] = round(time.perf_counter() - start, 3)
    # ru_maxrss is in KiB on Linux: the peak of the whole process, interpreter included
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    chosen = " chosen by cross-fitting on the training part" if result["discount_chosen"] else ""
    print(
        f"{result['order']}-gram Kneser-Ney (D = {result['discount']}{chosen}) on {args.corpus}\n"
        f"  vocabulary        {result['vocab_size']:,} characters (whole file)\n"
        f"  trained on        {result['train_chars']:,} characters\n"
        f"  scored (held out) {result['val_chars']:,} characters, "
        f"{result['unseen_chars']:,} never seen in training "
        f"({result['unseen_distinct']:,} distinct)\n"
        f"  loss              {result['loss']:.4f} nats/char\n"
        f"  bits per char     {result['bpc']:.4f}\n"
        f"  perplexity        {result['perplexity']:.2f}\n"
        f"  time              {result['seconds']:.1f} s\n"
        f"  peak memory       {result['peak_rss_mb']:,} MB (resident, whole process)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

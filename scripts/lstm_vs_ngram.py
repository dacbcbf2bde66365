"""Where a trained LSTM loses to the Kneser-Ney n-gram on held-out text, character by character.

Scores the run's held-out split with both models (same split, same vocabulary) and prints
perplexity on the characters the training text contains, the mean loss on those it never
shows, the mean loss by how long a string ending at the character the training text also
holds (1: only the character, 2: the character and the one before it, ...), and the
perplexity of the two models' linear interpolation for a sweep of weights.
The sweep runs on the held-out text itself: it locates the gap, it does not pick a model.

    python scripts/lstm_vs_ngram.py runs/quality/jaychou_lyrics-small-corpus \\
        ../shared/data/jaychou_lyrics.txt.zip --order 6
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import torch

from charlstm.api import load_model
from charlstm.data.corpus import read_text, split_point
from charlstm.errors import CharLSTMError
from charlstm.eval.scoring import score_heldout
from charlstm.fields import SettingError, option_name
from charlstm.ngram.kneser_ney import KneserNeyLM


def longest_match(train: str, text: str, cut: int, order: int) -> np.ndarray:
    """For each ``i >= cut``: the largest ``k <= order`` with ``text[i-k+1 : i+1]`` in ``train``."""
    grams = [{train[i : i + k] for i in range(len(train) - k + 1)} for k in range(order + 1)]
    lengths = np.zeros(len(text) - cut, dtype=np.int64)
    for row, i in enumerate(range(cut, len(text))):
        k = 0
        while k < order and text[i - k : i + 1] in grams[k + 1]:
            k += 1
        lengths[row] = k
    return lengths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run directory or checkpoint (its best.pt)")
    parser.add_argument("corpus", help="the run's corpus")
    parser.add_argument("--order", type=int, default=6, help="n-gram order")
    args = parser.parse_args()
    try:
        model = load_model(args.run)
        config = model.checkpoint
        text = read_text(args.corpus, newlines=config.data_config.newlines)
        indices = model.vocab.encode(text)
        cut = split_point(len(text), config.train_config.val_fraction)
        lstm = score_heldout(model.model, indices[:cut], indices[cut:])
        ngram = KneserNeyLM(args.order).fit(text[:cut], model.vocab)
    except CharLSTMError as err:
        message = err.render(option_name) if isinstance(err, SettingError) else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    width = args.order - 1
    lstm_nats = lstm.per_char.double().numpy()
    ngram_nats = np.array(
        [-ngram.log_prob(text[max(0, i - width) : i], text[i]) for i in range(cut, len(text))]
    )
    seen = set(text[:cut])
    unseen = np.array([ch not in seen for ch in text[cut:]])

    def ppl(nats: np.ndarray) -> float:
        return math.exp(float(nats.mean()))

    print(f"held-out: {len(lstm_nats):,} characters, {int(unseen.sum())} never in training")
    print(f"{'':34s} {'LSTM':>9s} {f'{args.order}-gram':>9s}")
    print(f"{'perplexity, all':34s} {ppl(lstm_nats):9.1f} {ppl(ngram_nats):9.1f}")
    print(
        f"{'perplexity, characters seen':34s} {ppl(lstm_nats[~unseen]):9.1f} "
        f"{ppl(ngram_nats[~unseen]):9.1f}"
    )
    if unseen.any():
        print(
            f"{'nats per unseen character':34s} {lstm_nats[unseen].mean():9.2f} "
            f"{ngram_nats[unseen].mean():9.2f}"
        )
    match = longest_match(text[:cut], text, cut, args.order)
    print("by the longest string ending here that training also holds (mean nats):")
    for k in range(args.order + 1):
        rows = match == k
        if rows.any():
            gap = (lstm_nats[rows] - ngram_nats[rows]).sum() / len(lstm_nats)
            print(
                f"  {k} chars: {int(rows.sum()):5d} positions  LSTM {lstm_nats[rows].mean():5.2f}"
                f"  {args.order}-gram {ngram_nats[rows].mean():5.2f}"
                f"  (LSTM - n-gram, per held-out char: {gap:+.3f})"
            )
    print("interpolation  w * p_LSTM + (1 - w) * p_ngram:")
    for weight in (0.3, 0.4, 0.5, 0.6, 0.7):
        mixed = -np.log(weight * np.exp(-lstm_nats) + (1 - weight) * np.exp(-ngram_nats))
        print(f"  w = {weight:.1f}: perplexity {ppl(mixed):.1f}")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(min(2, torch.get_num_threads()))
    sys.exit(main())

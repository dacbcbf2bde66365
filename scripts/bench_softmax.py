"""Training-step time of the full softmax against the adaptive softmax, in one run.

A 1x512 model on the Tang poems (a vocabulary of about 9,700 characters), batch 64 x 100
characters from the corpus: one training step (forward, loss through ``model.nll``,
backward) for ``softmax="full"`` and for ``softmax="adaptive"`` with
:func:`charlstm.model.default_cutoffs` of the corpus's character counts and the class
order set from them. Rounds interleave the two, and the median of the rounds counts, so
a noisy neighbour on a shared machine slows both alike. Prints both times and their ratio.

    python scripts/bench_softmax.py
    python scripts/bench_softmax.py --corpus ../shared/data/tang_poems.txt.zip --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

try:
    import charlstm  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from charlstm.config import ModelConfig
from charlstm.corpus import Vocab, read_text
from charlstm.model import CharLSTM, build_model, default_cutoffs

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tang_poems.txt.zip"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100, help="characters per window")
    parser.add_argument("--backend", default="scratch", help="scratch or torch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    text = read_text(args.corpus)
    vocab = Vocab.from_text(text)
    counts = Counter(text)
    char_counts = [counts[ch] for ch in vocab.idx_to_char]
    cutoffs = default_cutoffs(char_counts)
    indices = vocab.encode(text)
    torch.manual_seed(0)
    starts = torch.randint(0, len(indices) - args.steps - 1, (args.batch,))
    window = torch.stack([indices[s : s + args.steps + 1] for s in starts.tolist()], dim=1)
    x, y = window[:-1], window[1:]  # (T, N)

    models: dict[str, CharLSTM] = {}
    for softmax in ("full", "adaptive"):
        config = ModelConfig(
            vocab_size=len(vocab),
            hidden_size=args.hidden,
            backend=args.backend,
            dropout=0.0,
            softmax=softmax,
            cutoffs=cutoffs if softmax == "adaptive" else None,
        )
        models[softmax] = build_model(config).train()
    models["adaptive"].set_class_order(char_counts)

    def train_step(model: CharLSTM) -> float:
        start = time.perf_counter()
        loss, _ = model.nll(x, y)
        model.zero_grad(set_to_none=True)
        loss.backward()
        return time.perf_counter() - start

    for model in models.values():  # warm up: allocator, thread pool
        train_step(model)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            times[name].append(train_step(model))
    full, adaptive = (statistics.median(times[name]) for name in ("full", "adaptive"))
    print(
        f"# V={len(vocab):,}, 1x{args.hidden} {args.backend}, batch {args.batch} x {args.steps}, "
        f"cutoffs {cutoffs}, {torch.get_num_threads()} threads, median of {args.rounds}"
    )
    print(f"full softmax:     {full * 1000:8.0f} ms per training step")
    print(f"adaptive softmax: {adaptive * 1000:8.0f} ms per training step")
    print(f"ratio full / adaptive: {full / adaptive:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

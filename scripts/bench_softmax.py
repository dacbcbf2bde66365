"""Training-step time of the full softmax against the adaptive softmax, in one run.

A 1x512 model on the Tang poems (a vocabulary of about 9,700 characters), batch 64 x 100
characters from the corpus: one training step (forward, loss through ``model.nll``,
backward) for ``softmax="full"`` and for ``softmax="adaptive"`` with
:func:`charlstm.model.default_cutoffs` of the corpus's character counts and the class
order set from them (``--cutoffs 1800,6800 --cutoffs 980,6800`` compares given cutoffs
instead); and the LSTM alone (its features and their backward, no output layer), the floor
that no output layer can go under. Rounds interleave the models, and the median of the
rounds counts, so a noisy neighbour on a shared machine slows all alike. Prints the times
and each adaptive softmax's ratio to the full one.

    python scripts/bench_softmax.py
    python scripts/bench_softmax.py --cutoffs 1800,6800 --cutoffs 980,6800 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

try:
    import charlstm  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from charlstm.config import ModelConfig, parse_cutoffs
from charlstm.data.corpus import Vocab, read_text
from charlstm.fields import SettingError
from charlstm.model import CharLSTM, build_model, default_cutoffs

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tang_poems.txt.zip"


def cutoffs_argument(text: str) -> list[int]:
    """``--cutoffs`` as argparse reads it: a bad value is argparse's one-line usage error."""
    try:
        return parse_cutoffs(text)
    except SettingError as error:
        raise argparse.ArgumentTypeError(str(error).replace("{cutoffs}", "--cutoffs")) from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100, help="characters per window")
    parser.add_argument("--backend", default="scratch", help="scratch or torch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--cutoffs",
        action="append",
        type=cutoffs_argument,
        help="adaptive cutoffs to compare, e.g. 980,6800 (repeatable; default: the default's)",
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    text = read_text(args.corpus)
    vocab = Vocab.from_text(text)
    counts = Counter(text)
    char_counts = [counts[ch] for ch in vocab.idx_to_char]
    variants = args.cutoffs or [default_cutoffs(char_counts)]
    indices = vocab.encode(text)
    torch.manual_seed(0)
    starts = torch.randint(0, len(indices) - args.steps - 1, (args.batch,))
    window = torch.stack([indices[s : s + args.steps + 1] for s in starts.tolist()], dim=1)
    x, y = window[:-1], window[1:]  # (T, N)

    def build(cutoffs: list[int] | None) -> CharLSTM:
        config = ModelConfig(
            vocab_size=len(vocab),
            hidden_size=args.hidden,
            backend=args.backend,
            dropout=0.0,
            softmax="full" if cutoffs is None else "adaptive",
            cutoffs=cutoffs,
        )
        model = build_model(config).train()
        if cutoffs is not None:
            model.set_class_order(char_counts)
        return model

    models = {"full softmax": build(None)}
    models.update({f"adaptive {cutoffs}": build(cutoffs) for cutoffs in variants})

    def train_step(model: CharLSTM) -> float:
        start = time.perf_counter()
        loss, _ = model.nll(x, y)
        model.zero_grad(set_to_none=True)
        loss.backward()
        return time.perf_counter() - start

    def lstm_alone() -> float:
        model = models["full softmax"]
        start = time.perf_counter()
        features, _ = model.features(x)
        model.zero_grad(set_to_none=True)
        features.sum().backward()
        return time.perf_counter() - start

    steps: dict[str, Callable[[], float]] = {
        name: (lambda model=model: train_step(model)) for name, model in models.items()
    }
    steps["LSTM alone (no output layer)"] = lstm_alone
    for step in steps.values():  # warm up: allocator, thread pool
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(step())
    median = {name: statistics.median(values) for name, values in times.items()}
    full = median["full softmax"]
    print(
        f"# V={len(vocab):,}, 1x{args.hidden} {args.backend}, batch {args.batch} x {args.steps}, "
        f"{torch.get_num_threads()} threads, median of {args.rounds}; one training step "
        "(forward, loss, backward)"
    )
    for name, seconds in median.items():
        print(f"{name:34s} {seconds * 1000:8.0f} ms   full / this {full / seconds:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

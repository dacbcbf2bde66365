"""Generation speed: charlstm against d2l's one-character-at-a-time prediction helper.

Builds a model of the d2l lyrics setup's sizes (a vocabulary of 1,027 characters, one LSTM
layer of 256 hidden units) with random weights, and measures, in one run, characters
generated per second by:

* the reference: d2l's ``predict_rnn_pytorch`` with its ``RNNModel`` (``nn.LSTM`` fed
  one-hot vectors, then a linear layer), re-implemented below as d2l wrote it: every step
  builds a (1, 1) tensor from a Python list, one-hot encodes it, runs the model with the
  state, takes the arg max with ``.item()`` and appends to a list, the prefix included,
  one character at a time. Its weights are charlstm's, ported, so it computes the same
  function, and its greedy text must equal charlstm's;
* ``charlstm.generation.sample.generate`` (what ``charlstm generate`` and the Python API run), one
  stream greedy and sampled, and a batch of 32 streams sampled, for both backends.

Each configuration runs ``--repeats`` times, round robin, and the best time counts (other
processes on a shared machine only ever slow a run down).

    python scripts/bench_generate.py
    python scripts/bench_generate.py --length 1000 --repeats 7 --device cuda
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

try:
    import charlstm  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from charlstm.config import ModelConfig
from charlstm.data.corpus import Vocab
from charlstm.generation.sample import generate
from charlstm.generation.settings import SamplingConfig
from charlstm.model import CharLSTM, build_model, convert_state_dict

VOCAB_SIZE = 1027  # d2l's Jay Chou lyrics vocabulary
HIDDEN = 256


# -- the reference: d2l (PyTorch edition) chapter 6, as written there -----------------------


def one_hot(x: torch.Tensor, n_class: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    x = x.long()
    res = torch.zeros(x.shape[0], n_class, dtype=dtype, device=x.device)
    res.scatter_(1, x.view(-1, 1), 1)
    return res


def to_onehot(X: torch.Tensor, n_class: int) -> list[torch.Tensor]:
    return [one_hot(X[:, i], n_class) for i in range(X.shape[1])]


class RNNModel(nn.Module):
    def __init__(self, rnn_layer: nn.LSTM, vocab_size: int) -> None:
        super().__init__()
        self.rnn = rnn_layer
        self.hidden_size = rnn_layer.hidden_size * (2 if rnn_layer.bidirectional else 1)
        self.vocab_size = vocab_size
        self.dense = nn.Linear(self.hidden_size, vocab_size)
        self.state = None

    def forward(self, inputs, state):  # noqa: ANN001, ANN201 - d2l's code
        X = to_onehot(inputs, self.vocab_size)
        Y, self.state = self.rnn(torch.stack(X), state)
        output = self.dense(Y.view(-1, Y.shape[-1]))
        return output, self.state


def predict_rnn_pytorch(prefix, num_chars, model, vocab_size, device, idx_to_char, char_to_idx):  # noqa: ANN001, ANN201, E501
    state = None
    output = [char_to_idx[prefix[0]]]
    for t in range(num_chars + len(prefix) - 1):
        X = torch.tensor([output[-1]], device=device).view(1, 1)
        if state is not None:
            if isinstance(state, tuple):  # LSTM, state: (h, c)
                state = (state[0].to(device), state[1].to(device))
            else:
                state = state.to(device)
        (Y, state) = model(X, state)
        if t < len(prefix) - 1:
            output.append(char_to_idx[prefix[t + 1]])
        else:
            output.append(int(Y.argmax(dim=1).item()))
    return "".join([idx_to_char[i] for i in output])


def reference_from(model: CharLSTM) -> RNNModel:
    """d2l's model computing the same function as charlstm's ``torch``-backend ``model``:
    a one-hot row times ``W_ih E^T`` is the embedding row times ``W_ih``."""
    config = model.config
    state = model.state_dict()
    reference = RNNModel(nn.LSTM(config.vocab_size, config.hidden_size), config.vocab_size)
    with torch.no_grad():
        embedding = state["embedding.weight"]  # (V, D)
        reference.rnn.weight_ih_l0.copy_(state["layers.0.lstm.weight_ih_l0"] @ embedding.t())
        reference.rnn.weight_hh_l0.copy_(state["layers.0.lstm.weight_hh_l0"])
        reference.rnn.bias_ih_l0.copy_(state["layers.0.lstm.bias_ih_l0"])
        reference.rnn.bias_hh_l0.copy_(state["layers.0.lstm.bias_hh_l0"])
        reference.dense.weight.copy_(state["head.weight"])
        reference.dense.bias.copy_(state["head.bias"])
    return reference


# -- measuring ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_generate.py",
        description="Characters per second of charlstm generation against d2l's helper.",
    )
    parser.add_argument("--length", type=int, default=500, help="characters per stream")
    parser.add_argument("--batch", type=int, default=32, help="streams in the batched run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per configuration")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but CUDA is not available", file=sys.stderr)
        return 2

    vocab = Vocab([chr(0x4E00 + i) for i in range(VOCAB_SIZE)])
    torch.manual_seed(args.seed)
    config = ModelConfig(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, backend="torch")
    models = {"torch": build_model(config)}
    scratch_config = ModelConfig(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, backend="scratch")
    models["scratch"] = build_model(scratch_config)
    models["scratch"].load_state_dict(
        convert_state_dict(models["torch"].state_dict(), config, "scratch")
    )
    for model in models.values():
        model.to(device).eval()
    reference = reference_from(models["torch"]).to(device)

    prefix = vocab.idx_to_char[17] + vocab.idx_to_char[42]
    n, batch = args.length, args.batch
    sampled = SamplingConfig(temperature=0.8)
    greedy = SamplingConfig(greedy=True)
    texts: dict[str, str] = {}

    def ref_run() -> None:
        texts["reference"] = predict_rnn_pytorch(
            prefix, n, reference, VOCAB_SIZE, device, vocab.idx_to_char, vocab.char_to_idx
        )

    def ours(backend: str, config: SamplingConfig, streams: int) -> Callable[[], None]:
        def run() -> None:
            out = generate(models[backend], vocab, [prefix], n, config, streams, seed=1)
            if config.greedy:
                texts[backend] = prefix + out[0][0]

        return run

    # (label, backend, streams, sampling, function)
    rows: list[tuple[str, str, int, str, Callable[[], None]]] = [
        ("d2l predict_rnn_pytorch (reference)", "nn.LSTM, one-hot", 1, "greedy", ref_run)
    ]
    for backend in ("scratch", "torch"):
        rows += [
            ("charlstm generate", backend, 1, "greedy", ours(backend, greedy, 1)),
            ("charlstm generate", backend, 1, "T=0.8", ours(backend, sampled, 1)),
            ("charlstm generate", backend, batch, "T=0.8", ours(backend, sampled, batch)),
        ]
    best = [float("inf")] * len(rows)
    for row in rows:  # warm up: allocator, thread pool, lazy initialisation
        row[4]()
    for _ in range(args.repeats):
        for i, row in enumerate(rows):
            start = time.perf_counter()
            row[4]()
            best[i] = min(best[i], time.perf_counter() - start)
    speed = [row[2] * n / seconds for row, seconds in zip(rows, best, strict=True)]

    threads = torch.get_num_threads()
    cpu = platform.processor() or platform.machine()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({cpu})"
    print(
        f"# generation: V={VOCAB_SIZE}, H={HIDDEN}, 1 layer, random weights; {n} characters "
        f"per stream after a 2-character prefix; best of {args.repeats}; {where}, "
        f"{threads} torch threads (os.cpu_count() {os.cpu_count()}), torch {torch.__version__}"
    )
    print()
    print("| generator | backend | streams | decoding | chars/s | vs reference | vs one stream |")
    print("|---|---|--:|---|--:|--:|--:|")
    one_stream: dict[str, float] = {}
    for row, chars_per_sec in zip(rows, speed, strict=True):
        label, backend, streams, decoding, _ = row
        if streams == 1 and decoding != "greedy":
            one_stream[backend] = chars_per_sec
        ratio = f"{chars_per_sec / speed[0]:.1f}x"
        vs_one = f"{chars_per_sec / one_stream[backend]:.1f}x" if streams > 1 else ""
        print(
            f"| {label} | {backend} | {streams} | {decoding} | {chars_per_sec:,.0f} | {ratio} "
            f"| {vs_one} |"
        )
    print()
    for backend in ("scratch", "torch"):
        same = "yes" if texts[backend] == texts["reference"] else "NO"
        print(f"greedy text of the {backend} backend equals the reference's: {same}")
    for backend in ("scratch", "torch"):
        i = next(k for k, r in enumerate(rows) if r[1] == backend and r[3] == "greedy")
        single = max(speed[i], speed[i + 1]) / speed[0]
        batched = speed[i + 2] / speed[i + 1]
        print(
            f"targets, {backend}: one stream {min(speed[i], speed[i + 1]) / speed[0]:.1f}x to "
            f"{single:.1f}x the reference (>= 2x: "
            f"{'met' if min(speed[i], speed[i + 1]) >= 2 * speed[0] else 'NOT met'}); "
            f"batch of {batch} {batched:.1f}x one stream (>= 10x: "
            f"{'met' if batched >= 10 else 'NOT met'})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

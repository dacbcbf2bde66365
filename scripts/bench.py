"""Training throughput on the d2l setup: characters per second, as ratios to a reference.

Measured in one run, on the same batches, for:

- ``d2l reference``: d2l's from-scratch LSTM as the book writes it (one-hot inputs, four
  separate gate matrix products per step, plain autograd, Python step loop);
- ``d2l nn.LSTM``: d2l's ``RNNModel`` (one-hot inputs into ``nn.LSTM``);
- ``torch backend``, ``scratch (hand BPTT)``, ``scratch (autograd)``: charlstm's models;
- ``scratch one-hot``: ``--embedding-size 0``, d2l's own parameterisation (one-hot inputs
  into the gates) with the input weights looked up by row instead of multiplied.

The roofline columns: before the rounds the script measures this machine's matrix-product
rate (GFLOP/s, float32, the threads in use) for every shape a model's training step
multiplies (``(T N, D) @ (D, 4H)``, ``(N, H) @ (H, 4H)``, ``(T N, H) @ (H, V)`` and the
transposed products of the backward pass). ``GFLOP`` is a step's matrix-product work
(forward and backward; a multiply-add counts 2), ``GFLOP/s`` what the model achieved, and
``of limit`` the share of the step's time that those products would take at the measured
rates: 100 % would be a step that does nothing but its matrix products, at the speed this
machine multiplies matrices of those shapes.

Each measurement is a full training step (forward, cross-entropy, backward, clipping, Adam):
charlstm's models with the optimizer ``charlstm train`` builds (torch's fused Adam kernel),
d2l's models with ``torch.optim.Adam``'s default implementation, as d2l-style code writes it
(one more row shows the one-hot model with that default too).
Rounds interleave the models, and the median of the rounds is reported, so that a noisy
neighbour on a shared machine slows every model alike.

    python scripts/bench.py                 # CPU, vocabulary 1,027, hidden 256, batch 32, 35 steps
    python scripts/bench.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from charlstm.config import ModelConfig, TrainConfig
from charlstm.lstm_function import use_cuda_graphs
from charlstm.model import CharLSTM, build_model
from charlstm.training.parts import make_optimizer


class D2LScratchLSTM(nn.Module):
    """d2l's ``lstm`` / ``get_params``: one-hot X, W_xi, W_hi, b_i ... as separate tensors."""

    def __init__(self, vocab_size: int, hidden: int) -> None:
        super().__init__()

        def normal(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(shape) * 0.01)

        def three() -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
            return (
                normal(vocab_size, hidden),
                normal(hidden, hidden),
                nn.Parameter(torch.zeros(hidden)),
            )

        self.W_xi, self.W_hi, self.b_i = three()
        self.W_xf, self.W_hf, self.b_f = three()
        self.W_xo, self.W_ho, self.b_o = three()
        self.W_xc, self.W_hc, self.b_c = three()
        self.W_hq = normal(hidden, vocab_size)
        self.b_q = nn.Parameter(torch.zeros(vocab_size))
        self.vocab_size, self.hidden = vocab_size, hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (T, N) -> logits (T, N, V)
        H = torch.zeros(x.shape[1], self.hidden, device=x.device)
        C = torch.zeros_like(H)
        outputs = []
        for X in nn.functional.one_hot(x, self.vocab_size).float():  # d2l's to_onehot
            I = torch.sigmoid(X @ self.W_xi + H @ self.W_hi + self.b_i)  # noqa: E741
            F = torch.sigmoid(X @ self.W_xf + H @ self.W_hf + self.b_f)
            O = torch.sigmoid(X @ self.W_xo + H @ self.W_ho + self.b_o)  # noqa: E741
            C_tilda = torch.tanh(X @ self.W_xc + H @ self.W_hc + self.b_c)
            C = F * C + I * C_tilda
            H = O * C.tanh()
            outputs.append(H @ self.W_hq + self.b_q)
        return torch.stack(outputs)


class D2LRNNModel(nn.Module):
    """d2l's ``RNNModel`` around ``nn.LSTM``: one-hot inputs, a linear output layer."""

    def __init__(self, vocab_size: int, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(vocab_size, hidden)
        self.dense = nn.Linear(hidden, vocab_size)
        self.vocab_size = vocab_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        X = nn.functional.one_hot(x, self.vocab_size).float()  # (T, N, V)
        Y, _ = self.rnn(X)
        return self.dense(Y)


def charlstm_model(
    backend: str, impl: str, vocab: int, hidden: int, embedding_size: int | None = None
) -> nn.Module:
    model = build_model(
        ModelConfig(
            vocab_size=vocab,
            backend=backend,
            hidden_size=hidden,
            embedding_size=embedding_size,
            dropout=0.0,
            scratch_impl=impl,
        )
    )

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)[0]

    return Wrapped()


class DefaultAdam(nn.Module):
    """The wrapped charlstm model, stepped by ``torch.optim.Adam``'s default implementation
    instead of charlstm's fused one: the row shows what the fused kernel buys."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


class WithoutGraphs(nn.Module):
    """Runs the wrapped model with CUDA-graph replay of the scratch loops turned off."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        previous = use_cuda_graphs(False)
        try:
            return self.inner(x)
        finally:
            use_cuda_graphs(previous)


#: A matrix product (m, k) @ (k, n), and how many of them a training step does.
Product = tuple[int, int, int, int]


def lstm_products(
    V: int, D: int, H: int, N: int, T: int, *, input_matmul: bool, input_grad: bool
) -> list[Product]:
    """The matrix products of one training step of an LSTM language model whose input
    projection is one product for all T steps (``input_matmul``; absent for the one-hot
    lookup) and whose ``dW_h`` is one product over all steps. ``input_grad``: the inputs
    are embeddings that need a gradient (``dx = da W_x^T``)."""
    M = T * N
    products = [
        (N, H, 4 * H, T),  # h_{t-1} W_h, every step
        (M, H, V, 1),  # output layer
        (N, 4 * H, H, T),  # backward: dh_{t-1} = da W_h^T, every step
        (H, M, 4 * H, 1),  # dW_h = sum_t h_{t-1}^T da_t
        (H, M, V, 1),  # dW_out
        (M, V, H, 1),  # dh = dlogits W_out^T
    ]
    if input_matmul:
        products += [(M, D, 4 * H, 1), (D, M, 4 * H, 1)]  # x W_x, dW_x
    if input_grad:
        products.append((M, 4 * H, D, 1))  # dx
    return products


def d2l_scratch_products(V: int, H: int, N: int, T: int) -> list[Product]:
    """d2l's scratch LSTM: per step and gate a one-hot (N, V) @ (V, H) and an
    (N, H) @ (H, H), and the output layer per step; autograd's backward mirrors them."""
    return [
        (N, V, H, 4 * T),  # X W_x*
        (N, H, H, 4 * T),  # H W_h*
        (N, H, V, T),  # output
        (V, N, H, 4 * T),  # dW_x*
        (H, N, H, 4 * T),  # dW_h*
        (N, H, H, 4 * T),  # dH
        (H, N, V, T),  # dW_hq
        (N, V, H, T),  # dH from the output
    ]


def matmul_rates(shapes: set[tuple[int, int, int]], device: torch.device) -> dict:
    """GFLOP/s of ``(m, k) @ (k, n)`` for each shape, float32: the best of 5 timings."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rates = {}
    for m, k, n in sorted(shapes):
        a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        out = torch.empty(m, n, device=device)
        repeats = max(1, int(2e8 // (2 * m * k * n)))  # about 0.2 GFLOP per timing
        best = float("inf")
        for _ in range(6):  # the first is a warm-up
            sync()
            start = time.perf_counter()
            for _ in range(repeats):
                torch.mm(a, b, out=out)
            sync()
            best = min(best, (time.perf_counter() - start) / repeats)
        rates[(m, k, n)] = 2 * m * k * n / best / 1e9
    return rates


def roofline(products: list[Product], rates: dict, seconds: float) -> tuple[float, float, float]:
    """(GFLOP per step, achieved GFLOP/s, share of the step the products take at ``rates``)."""
    gflop = sum(2 * m * k * n * count for m, k, n, count in products) / 1e9
    bound = sum(2 * m * k * n * count / 1e9 / rates[(m, k, n)] for m, k, n, count in products)
    return gflop, gflop / seconds, bound / seconds


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One training step of ``model``: charlstm's models update with the optimizer
    ``charlstm train`` builds (:func:`charlstm.training.parts.make_optimizer`, torch's fused Adam),
    any other model (d2l's, or one wrapped in :class:`DefaultAdam`) with
    ``torch.optim.Adam``'s default implementation, as d2l-style code writes it."""
    if isinstance(model, (CharLSTM, WithoutGraphs)):
        optimizer = make_optimizer(model, TrainConfig(optimizer="adam", lr=1e-3))
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        logits = model(x)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description="Training characters per second, d2l setup.")
    parser.add_argument("--vocab", type=int, default=1027)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-steps", type=int, default=35)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps-per-round", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    V, H, N, T = args.vocab, args.hidden, args.batch_size, args.num_steps
    x = torch.randint(0, V, (T, N), device=device)
    y = torch.randint(0, V, (T, N), device=device)
    embedded = lstm_products(V, H, H, N, T, input_matmul=True, input_grad=True)
    models = {  # name: (model, its matrix products per training step)
        "d2l reference (one-hot, 4 gate matmuls/step, autograd)": (
            D2LScratchLSTM(V, H),
            d2l_scratch_products(V, H, N, T),
        ),
        D2L_LSTM: (
            D2LRNNModel(V, H),
            lstm_products(V, V, H, N, T, input_matmul=True, input_grad=False),
        ),
        TORCH: (charlstm_model("torch", "fused", V, H), embedded),
        "charlstm scratch (hand BPTT, default)": (
            charlstm_model("scratch", "fused", V, H),
            embedded,
        ),
        "charlstm scratch (autograd)": (charlstm_model("scratch", "autograd", V, H), embedded),
        "charlstm scratch one-hot (--embedding-size 0)": (
            charlstm_model("scratch", "fused", V, H, embedding_size=0),
            lstm_products(V, V, H, N, T, input_matmul=False, input_grad=False),
        ),
        "  the same with torch's default (unfused) Adam": (
            DefaultAdam(charlstm_model("scratch", "fused", V, H, embedding_size=0)),
            lstm_products(V, V, H, N, T, input_matmul=False, input_grad=False),
        ),
    }
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as `charlstm train` runs on a GPU
        # The scratch loops replay captured CUDA graphs by default; this row launches them
        # op by op, to show what the graphs buy.
        models["charlstm scratch (hand BPTT, no CUDA graphs)"] = (
            WithoutGraphs(charlstm_model("scratch", "fused", V, H)),
            embedded,
        )
    rates = matmul_rates({p[:3] for _, products in models.values() for p in products}, device)
    times = measure({name: make_step(m.to(device), x, y) for name, (m, _) in models.items()}, args)
    print(
        f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}; "
        f"V={V} H={H} N={N} T={T}; median of {args.rounds} rounds x {args.steps_per_round} "
        "training steps"
    )
    print("matrix-product rate measured here, GFLOP/s: " + ", ".join(
        f"({m}x{k})@({k}x{n}) {rate:.0f}"
        for (m, k, n), rate in rates.items()
        if (m, k, n) in {(T * N, H, 4 * H), (N, H, 4 * H), (T * N, H, V), (T * N, V, 4 * H)}
    ))  # fmt: skip
    reference = statistics.median(times[next(iter(times))])
    d2l_lstm, torch_backend = (statistics.median(times[name]) for name in (D2L_LSTM, TORCH))
    print(
        f"{'model':50s} {'ms/step':>8s} {'chars/s':>8s} {'vs ref':>7s} {'vs d2l nn.LSTM':>14s}"
        f" {'vs torch':>8s} {'GFLOP':>6s} {'GFLOP/s':>7s} {'of limit':>8s}"
    )
    for name, values in times.items():
        t = statistics.median(values)
        gflop, achieved, share = roofline(models[name][1], rates, t)
        print(
            f"{name:50s} {1000 * t:8.1f} {N * T / t:8,.0f} {reference / t:6.2f}x "
            f"{d2l_lstm / t:13.2f}x {torch_backend / t:7.2f}x {gflop:6.2f} {achieved:7.1f} "
            f"{100 * share:7.0f}%"
        )


D2L_LSTM = "d2l nn.LSTM model (one-hot into nn.LSTM)"
TORCH = "charlstm torch backend (nn.LSTM)"


def measure(steps: dict[str, Callable[[], None]], args: argparse.Namespace) -> dict:
    """Seconds per training step of each model, one list per model: rounds interleave them."""
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for step in steps.values():  # warm-up: allocator, oneDNN/cuDNN plans
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            for _ in range(args.steps_per_round):
                step()
            sync()
            times[name].append((time.perf_counter() - start) / args.steps_per_round)
    return times


if __name__ == "__main__":
    main()

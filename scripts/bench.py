"""Training throughput on the d2l setup: characters per second, as ratios to a reference.

Measured in one run, on the same batches, for:

- ``d2l reference``: d2l's from-scratch LSTM as the book writes it (one-hot inputs, four
  separate gate matrix products per step, plain autograd, Python step loop);
- ``d2l nn.LSTM``: d2l's ``RNNModel`` (one-hot inputs into ``nn.LSTM``);
- ``torch backend``, ``scratch (hand BPTT)``, ``scratch (autograd)``: charlstm's models.

Each measurement is a full training step (forward, cross-entropy, backward, clipping, Adam).
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

from charlstm.config import ModelConfig
from charlstm.lstm_function import use_cuda_graphs
from charlstm.model import build_model


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


def charlstm_model(backend: str, impl: str, vocab: int, hidden: int) -> nn.Module:
    model = build_model(
        ModelConfig(
            vocab_size=vocab, backend=backend, hidden_size=hidden, dropout=0.0, scratch_impl=impl
        )
    )

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)[0]

    return Wrapped()


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


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
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
    models = {
        "d2l reference (one-hot, 4 gate matmuls/step, autograd)": D2LScratchLSTM(V, H),
        "d2l nn.LSTM model (one-hot into nn.LSTM)": D2LRNNModel(V, H),
        "charlstm torch backend (nn.LSTM)": charlstm_model("torch", "fused", V, H),
        "charlstm scratch (hand BPTT, default)": charlstm_model("scratch", "fused", V, H),
        "charlstm scratch (autograd)": charlstm_model("scratch", "autograd", V, H),
    }
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as `charlstm train` runs on a GPU
        # The scratch loops replay captured CUDA graphs by default; this row launches them
        # op by op, to show what the graphs buy.
        models["charlstm scratch (hand BPTT, no CUDA graphs)"] = WithoutGraphs(
            charlstm_model("scratch", "fused", V, H)
        )
    steps = {name: make_step(m.to(device), x, y) for name, m in models.items()}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
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
    chars = N * T
    reference = statistics.median(times[next(iter(times))])
    d2l_lstm = statistics.median(times["d2l nn.LSTM model (one-hot into nn.LSTM)"])
    torch_backend = statistics.median(times["charlstm torch backend (nn.LSTM)"])
    print(
        f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}; "
        f"V={V} H={H} N={N} T={T}; median of {args.rounds} rounds x {args.steps_per_round} "
        "training steps"
    )
    print(
        f"{'model':58s} {'ms/step':>8s} {'chars/s':>9s} {'vs ref':>7s} {'vs d2l nn.LSTM':>15s}"
        f" {'vs torch':>9s}"
    )
    for name, values in times.items():
        t = statistics.median(values)
        print(
            f"{name:58s} {1000 * t:8.1f} {chars / t:9,.0f} {reference / t:6.2f}x "
            f"{d2l_lstm / t:14.2f}x {torch_backend / t:8.2f}x"
        )


if __name__ == "__main__":
    main()

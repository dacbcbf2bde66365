"""Held-out scoring: negative log-likelihood per character, bits per character, perplexity.

Every character of the scored text is predicted exactly once from the characters before
it. The text is cut into ``C`` contiguous columns that run side by side as a batch; each
column starts from a zero state, warmed on the ``history`` characters before it when they
are given (for held-out text: the end of the training text, as the n-gram baseline does).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from charlstm.model import CharLSTM


@dataclass
class EvalResult:
    loss: float  # nats per character
    chars: int  # characters scored

    @property
    def bpc(self) -> float:
        return self.loss / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    def as_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "bpc": self.bpc, "perplexity": self.perplexity}


def eval_columns(num_chars: int, chars_per_column: int = 4096, max_columns: int = 64) -> int:
    """How many side-by-side columns to score ``num_chars`` with (long columns keep context)."""
    return max(1, min(max_columns, num_chars // chars_per_column))


@torch.no_grad()
def score(
    model: CharLSTM,
    targets: torch.Tensor,
    context: torch.Tensor,
    columns: int | None = None,
    num_steps: int = 256,
) -> EvalResult:
    """Score ``targets`` (n,) given ``context`` (at least one character before them).

    ``context[-1]`` is the input that predicts ``targets[0]``; earlier context characters
    only warm the state of the first column.
    """
    model.eval()
    device = model.head.weight.device
    n = len(targets)
    if n == 0:
        return EvalResult(loss=float("nan"), chars=0)
    inputs = torch.cat([context[-1:], targets[:-1]])  # (n,)
    columns = columns or eval_columns(n)
    length = math.ceil(n / columns)
    pad = columns * length - n
    ignore = -100
    x = torch.cat([inputs, inputs.new_zeros(pad)]).view(columns, length).t()  # (T_all, C)
    y = torch.cat([targets, targets.new_full((pad,), ignore)]).view(columns, length).t()
    x, y = x.to(device), y.to(device)
    state = model.init_state(columns)
    warm = context[:-1]
    if len(warm):
        # Only the first column follows the context; the others start mid-text from zero.
        _, warm_state = model(warm.view(-1, 1).to(device), None)
        state[0][:, 0] = warm_state[0][:, 0]
        state[1][:, 0] = warm_state[1][:, 0]
    total = 0.0
    for start in range(0, length, num_steps):
        logits, state = model(x[start : start + num_steps], state)
        total += nn.functional.cross_entropy(
            logits.flatten(0, 1).float(),
            y[start : start + num_steps].flatten(),
            ignore_index=ignore,
            reduction="sum",
        ).item()
    return EvalResult(loss=total / n, chars=n)


def score_split(
    model: CharLSTM,
    indices: torch.Tensor,
    cut: int,
    history: int = 256,
) -> EvalResult:
    """Score ``indices[cut:]`` (held out) after up to ``history`` training characters."""
    if cut <= 0:
        return score(model, indices[1:], indices[:1])
    return score(model, indices[cut:], indices[max(0, cut - history) : cut])

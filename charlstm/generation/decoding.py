"""The draw: from a distribution over the vocabulary to one character per row.

The rules that shape the distribution before the draw (penalties, temperature, a form's
masks, top-k, top-p) are one list, :mod:`charlstm.generation.rules`; this module holds what
comes after them: the uniform numbers, the inverse-CDF draw, and fresh seeds.
"""

from __future__ import annotations

import secrets
from typing import Any

import torch


def uniforms(
    rows: int, generator: torch.Generator | None, device: Any, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The (N, 1) uniform numbers :func:`draw` uses for N rows."""
    return torch.rand((rows, 1), generator=generator, device=device, dtype=dtype)


def draw(
    probs: torch.Tensor,
    generator: torch.Generator | None = None,
    u: torch.Tensor | None = None,
) -> torch.Tensor:
    """One index per row of ``probs`` (N, V) -> (N,), by inverse CDF.

    One uniform number ``u`` in [0, 1) per row (from ``generator``, or given: (N, 1)); the
    index is the first whose cumulative probability reaches ``(1 - u) * total``, a value
    in (0, total]. A zero-probability entry never is that first index, so masked
    characters are never drawn. (Much faster than ``torch.multinomial`` for a batch of
    rows on a CPU.) Every step is row by row: a row's index depends only on its own
    probabilities and ``u``.
    """
    cdf = probs.cumsum(dim=-1)  # (N, V)
    if u is None:
        u = uniforms(probs.shape[0], generator, probs.device, cdf.dtype)
    target = (1.0 - u).mul_(cdf[:, -1:])  # (N, 1)
    return torch.searchsorted(cdf, target).squeeze_(1).clamp_(max=probs.shape[-1] - 1)


def new_seed() -> int:
    """A fresh random seed, to be reported so that a run can be repeated."""
    return secrets.randbelow(2**31)

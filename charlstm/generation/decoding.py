"""Decoding rules: from one step's logits to one character per sequence.

Each step turns every sequence's logits (N, V) into one character by these rules, in this
order (logits are any scores whose softmax is the distribution: a model's logits, or
log-probabilities, which :mod:`charlstm.generation.sample` passes when the distribution has been
adapted or mixed, and which the adaptive softmax gives anyway):

1. repetition penalty: each character found among the last ``penalty_window`` characters
   that this sequence generated has its probability divided by ``repetition_penalty``
   (its logit lowered by ``log(repetition_penalty)``; the rest renormalise). The prefix
   does not count. 1 turns it off; values below 1 (which would favour repeats) are refused;
2. temperature: logits divided by ``temperature`` (below 1: safer, above 1: wilder);
3. top-k: only the ``top_k`` likeliest characters stay;
4. top-p (nucleus): a character stays while the likelier characters before it hold less
   than ``top_p`` of the probability, so the smallest set holding ``top_p`` stays;
5. a draw from what is left (one uniform number per sequence, inverse CDF), or the arg
   max with ``greedy`` (after the penalty; temperature, top-k and top-p cannot change it,
   so :meth:`SamplingConfig.validate` refuses them beside it).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass
from typing import Any

import torch

from charlstm.config import (
    SettingError,
    check_fields,
    is_positive,
    optional,
    register,
    setting,
)

#: How many characters back the repetition penalty looks by default.
DEFAULT_PENALTY_WINDOW = 32


def _temperature(value: float) -> str | None:
    if value > 0 and math.isfinite(value):
        return None
    return f"must be positive, not {value} (use {{greedy}} for arg max)"


def _penalty(value: float) -> str | None:
    if value >= 1 and math.isfinite(value):
        return None
    return f"must be at least 1 (1: off), not {value}"


def _top_p(value: float) -> str | None:
    return None if 0 < value <= 1 else f"must be in (0, 1], not {value}"


@register
@dataclass
class SamplingConfig:
    """How the next character is chosen (see the module docstring for the exact rules)."""

    temperature: float = setting(
        1.0, "Below 1: safer; above 1: wilder.", "Sampling", check=_temperature
    )
    top_k: int | None = setting(
        None,
        "Sample only among the K likeliest characters.",
        "Sampling",
        check=optional(is_positive),
    )
    top_p: float | None = setting(
        None,
        "Sample only among the likeliest characters holding this much probability.",
        "Sampling",
        check=optional(_top_p),
    )
    greedy: bool = setting(
        False, "Always take the likeliest character (tends to loop).", "Sampling"
    )
    repetition_penalty: float = setting(
        1.0,
        "Divide the probability of characters generated in the last --penalty-window "
        "characters by this (1: off; try 1.5 to 3).",
        "Sampling",
        check=_penalty,
    )
    penalty_window: int = setting(
        DEFAULT_PENALTY_WINDOW,
        "How many generated characters back --repetition-penalty looks.",
        "Sampling",
        check=is_positive,
    )

    def validate(self, vocab_size: int | None = None) -> SamplingConfig:
        """Refuse settings out of range and settings that cannot act: the one place for
        these rules, for the CLI and the Python API alike."""
        check_fields(self)
        if self.top_k is not None and vocab_size is not None and self.top_k > vocab_size:
            raise SettingError(
                f"{{top_k}} {self.top_k} is larger than the vocabulary ({vocab_size} characters)"
            )
        if self.greedy and (
            self.temperature != 1.0 or self.top_k is not None or self.top_p is not None
        ):
            raise SettingError(
                "{greedy} always takes the likeliest character: {temperature}, {top_k} and "
                "{top_p} cannot change it (drop them, or drop {greedy} to sample)"
            )
        if self.penalty_window != DEFAULT_PENALTY_WINDOW and self.repetition_penalty == 1.0:
            raise SettingError(
                "{penalty_window} is a setting of {repetition_penalty}; add {repetition_penalty} P"
            )
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def filter_logits(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Temperature, then top-k and top-p masking (masked entries become -inf). ``(N, V)``."""
    if config.temperature != 1.0:
        logits = logits / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[-1]:
        kth = torch.topk(logits, config.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p is not None and config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a character when the mass strictly before it already reaches top_p
        before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = before >= config.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


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


def next_chars(
    logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """Choose one index per row of ``logits`` (N, V) -> (N,) (no repetition penalty)."""
    if config.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits.float(), config), dim=-1)
    return draw(probs, generator)


class RepetitionPenalty:
    """Lowers the logits of characters among each row's last ``window`` generated ones.

    ``recent`` (N, W) is a ring of the last W indices per row, ``V`` marking an empty slot.
    """

    def __init__(self, config: SamplingConfig, batch: int, vocab_size: int, device: Any) -> None:
        self.log_penalty = math.log(config.repetition_penalty)
        self.window = config.penalty_window
        self.vocab_size = vocab_size
        self.recent = torch.full((batch, self.window), vocab_size, dtype=torch.long, device=device)
        self.seen = torch.zeros((batch, vocab_size + 1), dtype=torch.bool, device=device)
        self.count = 0

    def push(self, chosen: torch.Tensor) -> None:
        """Record the characters (N,) just generated."""
        self.recent[:, self.count % self.window] = chosen
        self.count += 1

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        seen = self.seen.zero_().scatter_(1, self.recent, True)[:, : self.vocab_size]
        return torch.where(seen, logits - self.log_penalty, logits)


def new_seed() -> int:
    """A fresh random seed, to be reported so that a run can be repeated."""
    return secrets.randbelow(2**31)

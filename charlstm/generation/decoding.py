"""Decoding rules: from one step's logits to one character per sequence.

Each step turns every sequence's logits (N, V) into one character by these rules, in this
order (logits are any scores whose softmax is the distribution: a model's logits, or
log-probabilities, which :mod:`charlstm.generation.sample` passes when the distribution has been
adapted or mixed, and which the adaptive softmax gives anyway):

1. repetition penalty: each character found among the last ``penalty_window`` characters
   that this sequence generated has its probability divided by ``repetition_penalty``
   (its logit lowered by ``log(repetition_penalty)``; the rest renormalise). The prefix
   does not count. 1 turns it off; values below 1 (which would favour repeats) are refused;
   then OpenAI's additive penalties (:class:`CountPenalty`): with ``c[j]`` how often
   character ``j`` was generated so far, ``logits[j] -= c[j] * frequency_penalty +
   (c[j] > 0) * presence_penalty``; then OpenAI's ``logit_bias`` added to the logits
   (:class:`~charlstm.generation.settings.LogitRules`);
2. temperature: logits divided by ``temperature`` (below 1: safer, above 1: wilder);
   then, when writing verse, the form's mask (``allowed``; :mod:`charlstm.generation.verse`);
3. top-k: only the ``top_k`` likeliest characters stay;
4. top-p (nucleus): a character stays while the likelier characters before it hold less
   than ``top_p`` of the probability, so the smallest set holding ``top_p`` stays;
5. a draw from what is left (one uniform number per sequence, inverse CDF), or the arg
   max with ``greedy`` (after the penalty; temperature, top-k and top-p cannot change it,
   so :class:`~charlstm.generation.settings.SamplingConfig` refuses them beside it).
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import torch

from charlstm.generation.settings import SamplingConfig


def filter_logits(
    logits: torch.Tensor, config: SamplingConfig, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    """Temperature, then top-k and top-p masking (masked entries become -inf). ``(N, V)``.

    ``allowed`` (N, V), a verse form's constraints (:mod:`charlstm.generation.verse`), masks
    after the temperature and before top-k / top-p."""
    if config.temperature != 1.0:
        logits = logits / config.temperature
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
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
    logits: torch.Tensor,
    config: SamplingConfig,
    generator: torch.Generator | None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Choose one index per row of ``logits`` (N, V) -> (N,) (no repetition penalty), among
    the ``allowed`` (N, V) characters if given."""
    if config.greedy:
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits.float(), config, allowed), dim=-1)
    return draw(probs, generator)


def scored_next_chars(
    logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`next_chars` (the same characters, drawn the same way) and the
    log-probabilities (N, V) of the distribution they were drawn from: after temperature,
    top-k and top-p (masked characters: -inf). With ``greedy``, the distribution whose arg
    max is taken: the logits' softmax at temperature 1."""
    if config.greedy:
        return logits.argmax(dim=-1), torch.log_softmax(logits.float(), dim=-1)
    filtered = filter_logits(logits.float(), config)
    chosen = draw(torch.softmax(filtered, dim=-1), generator)
    return chosen, torch.log_softmax(filtered, dim=-1)


class CountPenalty:
    """OpenAI's frequency and presence penalties: ``logits[j] -= c[j] * frequency +
    (c[j] > 0) * presence``, ``c`` (N, V) counting each row's generated characters (the
    prefix does not count)."""

    def __init__(
        self, frequency: float, presence: float, batch: int, vocab_size: int, device: Any
    ) -> None:
        self.frequency, self.presence = frequency, presence
        self.counts = torch.zeros((batch, vocab_size), device=device)  # (N, V)

    def push(self, chosen: torch.Tensor) -> None:
        """Count the characters (N,) just generated."""
        self.counts[torch.arange(len(chosen), device=chosen.device), chosen] += 1

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        counts = self.counts
        return logits - counts * self.frequency - (counts > 0).to(counts.dtype) * self.presence


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

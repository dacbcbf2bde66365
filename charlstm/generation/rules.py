"""Rows and the rules that act on them: one interface for everything a batch holds per row.

**Rows.** Everything that keeps state per row (the model's streams, the continuous cache,
the repetition and OpenAI penalties, where a row stops, a verse form's rhyme and tone)
implements one method, ``select(index, source=None)``: row ``i`` becomes row ``index[i]``
of this holder's rows followed by ``source``'s (another holder of the same kind), and
``-1`` is a fresh row. One call keeps, reorders or duplicates rows, as Hugging Face's
``_reorder_cache`` does for beams: sequences join and leave a served batch, a poem keeps
the best of its candidate lines and copies it to every candidate, and :func:`take` makes
the copy of some rows that a poem restarts a line from.

**Logits rules.** Every step turns each row's logits (N, V) into one character through
one list of rules, in this order (:func:`logits_rules` builds the sampling part; a verse
form adds its own after the temperature, :mod:`charlstm.generation.verse.constraints`):

1. repetition penalty (:class:`RepetitionPenalty`): a character among the row's last
   ``penalty_window`` generated ones has its logit lowered by ``log(repetition_penalty)``;
2. OpenAI's frequency and presence penalties (:class:`CountPenalty`), then ``logit_bias``
   (:class:`LogitBias`);
3. temperature (:class:`Temperature`);
4. a verse form's rules: form, acrostic, rhyme, tone (free-length rhyme for lyrics): each
   masks characters that may not stand here; a rule that would leave a row with nothing
   leaves the row as it was and marks it failed (:func:`apply`);
5. top-k (:class:`TopK`), then top-p (:class:`TopP`);
6. the draw (:func:`choose`): one uniform number per row, inverse CDF; or the arg max with
   ``greedy``.

A rule is called as ``rule(logits, at)`` (``at``: where the rows stand, :class:`At`, for a
form's rules; ``None`` in running text), told the characters just drawn with
``rule.push(chosen, at)``, and has ``select``. Rules that need no state per row have
``select`` doing nothing.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

from charlstm.generation.decoding import draw
from charlstm.generation.settings import LogitRules, SamplingConfig


@dataclass(frozen=True)
class At:
    """Where every row of a poem stands: line ``line`` (0-based), position ``pos`` in it
    (positions past the line's length are its ending)."""

    line: int
    pos: int


class Rows(Protocol):
    def select(self, index: torch.Tensor, source: Any = None) -> None: ...


class LogitsRule(Rows, Protocol):
    #: A constraint (a verse rule) may leave a row with nothing; :func:`apply` checks it.
    constrains: bool
    name: str

    def __call__(self, logits: torch.Tensor, at: At | None) -> torch.Tensor: ...

    def push(self, chosen: torch.Tensor, at: At | None) -> None: ...


H = TypeVar("H")


def pick(values: Any, index: torch.Tensor, source: Any = None, fresh: Any = 0) -> Any:
    """Rows ``index`` of ``values`` followed by ``source``'s (a tensor, rows first, or a
    list); ``-1`` gives ``fresh`` (a value, or for a tensor a fill value)."""
    if isinstance(values, list):
        pool = values + (list(source) if source is not None else [])
        return [pool[i] if i >= 0 else copy.copy(fresh) for i in index.tolist()]
    pool = values if source is None else torch.cat([values, source.to(values.device)])
    if len(pool) == 0:
        return pool.new_full((len(index), *pool.shape[1:]), fresh)
    taken = pool.index_select(0, index.clamp(min=0))
    if bool((index < 0).any()):
        taken[index < 0] = fresh
    return taken


def take(holder: H, rows: torch.Tensor) -> H:
    """A copy of ``holder`` with only the rows ``rows``: a snapshot that later changes to
    ``holder`` do not touch (every ``select`` builds new tensors)."""
    snapshot = copy.copy(holder)
    snapshot.select(rows)  # type: ignore[attr-defined]
    return snapshot


class _Stateless:
    constrains = False

    def push(self, chosen: torch.Tensor, at: At | None) -> None:
        pass

    def select(self, index: torch.Tensor, source: Any = None) -> None:
        pass


class RepetitionPenalty:
    """Lowers the logits of characters among each row's last ``window`` generated ones.

    ``recent`` (N, W) is a ring of the last W indices per row, ``V`` marking an empty slot;
    every row of a group writes the same slot (``count``)."""

    constrains = False
    name = "repetition_penalty"

    def __init__(self, config: SamplingConfig, batch: int, vocab_size: int, device: Any) -> None:
        self.log_penalty = math.log(config.repetition_penalty)
        self.window = config.penalty_window
        self.vocab_size = vocab_size
        self.recent = torch.full((batch, self.window), vocab_size, dtype=torch.long, device=device)
        self.count = 0

    def push(self, chosen: torch.Tensor, at: At | None = None) -> None:
        self.recent[:, self.count % self.window] = chosen
        self.count += 1

    def __call__(self, logits: torch.Tensor, at: At | None = None) -> torch.Tensor:
        seen = torch.zeros(
            (len(self.recent), self.vocab_size + 1), dtype=torch.bool, device=logits.device
        )
        seen = seen.scatter_(1, self.recent, True)[:, : self.vocab_size]
        return torch.where(seen, logits - self.log_penalty, logits)

    def select(self, index: torch.Tensor, source: RepetitionPenalty | None = None) -> None:
        other = source.recent if source is not None else None
        own = len(self.recent)
        self.recent = pick(self.recent, index, other, fresh=self.vocab_size)
        if source is not None and bool((index >= own).any()):
            self.count = source.count  # rows restored from a snapshot come back to its slot


class CountPenalty:
    """OpenAI's frequency and presence penalties: ``logits[j] -= c[j] * frequency +
    (c[j] > 0) * presence``, ``c`` (N, V) counting each row's generated characters (the
    prefix does not count)."""

    constrains = False
    name = "frequency_penalty"

    def __init__(
        self, frequency: float, presence: float, batch: int, vocab_size: int, device: Any
    ) -> None:
        self.frequency, self.presence = frequency, presence
        self.counts = torch.zeros((batch, vocab_size), device=device)  # (N, V)

    def push(self, chosen: torch.Tensor, at: At | None = None) -> None:
        self.counts[torch.arange(len(chosen), device=chosen.device), chosen] += 1

    def __call__(self, logits: torch.Tensor, at: At | None = None) -> torch.Tensor:
        counts = self.counts
        return logits - counts * self.frequency - (counts > 0).to(counts.dtype) * self.presence

    def select(self, index: torch.Tensor, source: CountPenalty | None = None) -> None:
        self.counts = pick(self.counts, index, source.counts if source is not None else None)


class LogitBias(_Stateless):
    """OpenAI's ``logit_bias``: a value added to chosen characters' logits."""

    name = "logit_bias"

    def __init__(self, bias: dict[int, float], vocab_size: int, device: Any) -> None:
        self.bias = torch.zeros(vocab_size, device=device)  # (V,)
        for index, value in bias.items():
            self.bias[index] = value

    def __call__(self, logits: torch.Tensor, at: At | None = None) -> torch.Tensor:
        return logits + self.bias


class Temperature(_Stateless):
    name = "temperature"

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature

    def __call__(self, logits: torch.Tensor, at: At | None = None) -> torch.Tensor:
        return logits / self.temperature


class TopK(_Stateless):
    """Only the ``k`` likeliest characters stay."""

    name = "top_k"

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, logits: torch.Tensor, at: At | None = None) -> torch.Tensor:
        if self.k >= logits.shape[-1]:
            return logits
        kth = torch.topk(logits, self.k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, float("-inf"))


class TopP(_Stateless):
    """Nucleus: a character stays while the likelier characters before it hold less than
    ``p`` of the probability."""

    name = "top_p"

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, logits: torch.Tensor, at: At | None = None) -> torch.Tensor:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass strictly before each character
        drop_sorted = before >= self.p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        return logits.masked_fill(drop, float("-inf"))


def penalty_rules(
    sampling: SamplingConfig,
    penalties: LogitRules | None,
    batch: int,
    vocab_size: int,
    device: Any,
) -> list[LogitsRule]:
    """Steps 1-2 of the list: the rules that keep what each row wrote."""
    rules: list[LogitsRule] = []
    if sampling.repetition_penalty != 1.0:
        rules.append(RepetitionPenalty(sampling, batch, vocab_size, device))
    if penalties is not None and penalties.penalizes:
        rules.append(
            CountPenalty(
                penalties.frequency_penalty, penalties.presence_penalty, batch, vocab_size, device
            )
        )
    if penalties is not None and penalties.logit_bias:
        rules.append(LogitBias(penalties.logit_bias, vocab_size, device))
    return rules


def filter_rules(sampling: SamplingConfig) -> tuple[list[LogitsRule], list[LogitsRule]]:
    """Steps 3 and 5: the temperature (before a form's rules), top-k and top-p (after)."""
    before: list[LogitsRule] = []
    if sampling.temperature != 1.0:
        before.append(Temperature(sampling.temperature))
    after: list[LogitsRule] = []
    if sampling.top_k is not None:
        after.append(TopK(sampling.top_k))
    if sampling.top_p is not None and sampling.top_p < 1.0:
        after.append(TopP(sampling.top_p))
    return before, after


def logits_rules(
    sampling: SamplingConfig,
    penalties: LogitRules | None,
    batch: int,
    vocab_size: int,
    device: Any,
    constraints: list[LogitsRule] | None = None,
) -> list[LogitsRule]:
    """The whole list, in the documented order, with ``constraints`` (a form's rules, or
    free-length rhyme) after the temperature."""
    before, after = filter_rules(sampling)
    rules = penalty_rules(sampling, penalties, batch, vocab_size, device)
    return rules + before + list(constraints or []) + after


def apply(
    rules: list[LogitsRule],
    logits: torch.Tensor,
    at: At | None = None,
    failed: torch.Tensor | None = None,
) -> torch.Tensor:
    """``logits`` (N, V) through ``rules`` in order (as float). A constraint that leaves a
    row with no character leaves that row as it was; ``failed`` (N,) then records the
    rule's number (1-based in ``rules``) for rows not failed before."""
    logits = logits.float()
    for k, rule in enumerate(rules, start=1):
        narrowed = rule(logits, at)
        if narrowed is logits or not rule.constrains:
            logits = narrowed
            continue
        empty = ~(narrowed > float("-inf")).any(dim=1)
        if bool(empty.any()):
            if failed is not None:
                failed.copy_(torch.where(empty & (failed == 0), k, failed))
            narrowed = torch.where(empty[:, None], logits, narrowed)
        logits = narrowed
    return logits


def choose(
    logits: torch.Tensor,
    greedy: bool,
    generator: torch.Generator | None = None,
    u: torch.Tensor | None = None,
) -> torch.Tensor:
    """One character per row of the filtered ``logits`` (N, V): the arg max, or a draw
    (from ``u`` (N, 1) uniform numbers if given, else from ``generator``)."""
    if greedy:
        return logits.argmax(dim=-1)
    return draw(torch.softmax(logits, dim=-1), generator, u)

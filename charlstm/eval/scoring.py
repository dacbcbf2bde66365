"""Held-out scoring: negative log-likelihood per character, bits per character, perplexity.

Every character of the scored text is predicted exactly once from the characters before
it. The text is cut into ``C`` contiguous columns that run side by side as a batch; each
column starts from a zero state, warmed on the ``history`` characters before it when they
are given (for held-out text: the end of the training text, as the n-gram baseline does).
:func:`score_heldout` is that rule for a run's held-out part, the one every caller uses.

:func:`score_adaptive` scores one stream that adapts causally to the text already scored,
with the continuous cache and dynamic evaluation of :mod:`charlstm.generation.adaptation`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError, check_argument, is_positive
from charlstm.generation.adaptation import DynamicEvaluation, cache_log_probs, read_log_probs
from charlstm.generation.settings import CacheConfig, DynamicConfig
from charlstm.model import CharLSTM
from charlstm.ngram.mixture import NgramMixture


class Ranks(Protocol):
    """The processes that score one text together, each its share of the columns
    (:class:`charlstm.training.distributed.World` is one; ``None``: this process alone).
    The sums are all-reduced over the default process group."""

    @property
    def distributed(self) -> bool: ...

    def share(self, count: int) -> tuple[int, int]: ...


def _sum_over(ranks: Ranks | None, values: Sequence[float]) -> list[float]:
    """Each of ``values`` summed over the ranks (float64)."""
    if ranks is None or not ranks.distributed:
        return list(values)
    import torch.distributed as dist

    total = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(total)
    return total.tolist()


#: How many training characters before the held-out part warm the state that scores it.
HISTORY = 256
#: How many characters :func:`score_adaptive` reads at a time without dynamic evaluation.
SEGMENT = 256
#: The most logits (steps x columns x vocabulary) one chunk of :func:`score` computes at
#: once: 2**24 float32 values, 64 MB, so that scoring a 10,000-character vocabulary stays
#: in bounded memory.
CHUNK_VALUES = 2**24


@dataclass
class EvalResult:
    loss: float  # nats per character
    chars: int  # characters scored
    per_char: torch.Tensor | None = field(default=None, repr=False)  # (n,) nats, when kept

    @property
    def bpc(self) -> float:
        return self.loss / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    def as_dict(self) -> dict[str, float | int]:
        return {
            "loss": self.loss,
            "chars": self.chars,
            "bpc": self.bpc,
            "perplexity": self.perplexity,
        }


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
    mixture: NgramMixture | None = None,
    world: Ranks | None = None,
) -> EvalResult:
    """Score ``targets`` (n,) given ``context`` (at least one character before them).

    ``context[-1]`` is the input that predicts ``targets[0]``; earlier context characters
    only warm the state of the first column. With ``mixture`` each character is scored by
    the LSTM interpolated with the n-gram (:mod:`charlstm.ngram.mixture`). With a distributed
    ``world`` each rank scores its share of the columns and the sums are all-reduced: the
    loss is the single-process one (``per_char`` then holds this rank's columns only).
    """
    model.eval()
    device = model.device
    n = len(targets)
    if n == 0:
        return EvalResult(loss=float("nan"), chars=0)
    inputs = torch.cat([context[-1:], targets[:-1]])  # (n,)
    columns = columns or eval_columns(n)
    length = math.ceil(n / columns)
    pad = columns * length - n  # at the end of the last column, cut off below
    first, last = world.share(columns) if world is not None else (0, columns)
    x = torch.cat([inputs, inputs.new_zeros(pad)]).view(columns, length).t()  # (T_all, C)
    y = torch.cat([targets, targets.new_zeros(pad)]).view(columns, length).t()
    x, y = x[:, first:last].to(device), y[:, first:last].to(device)
    mine = last - first
    state = model.init_state(mine)
    warm = context[:-1]
    if len(warm) and first == 0 and mine:
        # Only the first column follows the context; the others start mid-text from zero.
        _, warm_state = model.features(warm.view(-1, 1).to(device), None)
        state[0][:, 0] = warm_state[0][:, 0]
        state[1][:, 0] = warm_state[1][:, 0]
    # Only the targets' log-probabilities are kept (the adaptive softmax computes only
    # their clusters); a chunk's logits are bounded by CHUNK_VALUES whatever the vocabulary.
    steps = max(1, min(num_steps, CHUNK_VALUES // max(1, mine * model.config.vocab_size)))
    losses = [torch.empty(0, mine, device=device)]
    for start in range(0, length if mine else 0, steps):
        chunk = slice(start, start + steps)
        nll, state = model.nll(x[chunk], y[chunk], state, reduction="none")
        losses.append(nll.float().view(-1, mine))
    begin, end = min(first * length, n), min(last * length, n)  # its characters, text order
    per_char = torch.cat(losses).t().reshape(-1)[: end - begin].cpu().double()
    if mixture is not None:
        lstm = -per_char
        ngram = mixture.target_log_probs(targets.cpu(), context.cpu())[begin:end]
        per_char = -mixture.mix(lstm, ngram)
    (total,) = _sum_over(world, [per_char.sum().item()])
    return EvalResult(loss=total / n, chars=n, per_char=per_char)


@torch.no_grad()
def prompt_log_probs(
    model: CharLSTM, text: torch.Tensor, mixture: NgramMixture | None = None
) -> torch.Tensor:
    """The distributions (T - 1, V) that predict ``text[1:]`` (T,), each from the
    characters before it, read from a zero state in one pass: :func:`score`'s rule for a
    text scored after its first character (``charlstm eval`` on a text of its own, and
    :meth:`~charlstm.api.LanguageModel.score_text`), whole distributions instead of the
    targets' losses. With ``mixture``, interpolated with the n-gram as there."""
    features, _ = model.features(text[:-1].view(-1, 1).to(model.device))  # (T - 1, 1, H)
    log_p = model.features_log_probs(features[:, 0])  # (T - 1, V)
    if mixture is not None:
        chars = mixture.vocab.decode(text)
        log_p = mixture.mix(log_p, mixture.log_distributions_at(chars, 1, len(chars)))
    return log_p


def score_heldout(
    model: CharLSTM,
    history_ids: torch.Tensor,
    heldout_ids: torch.Tensor,
    mixture: NgramMixture | None = None,
    max_chars: int | None = None,
    *,
    cache: CacheConfig | None = None,
    dynamic: DynamicConfig | None = None,
    world: Ranks | None = None,
) -> EvalResult:
    """Score a run's held-out part ``heldout_ids`` (n,) after its training part
    ``history_ids`` (indices): the first held-out character is predicted from the last
    training character, and the :data:`HISTORY` training characters before it warm the
    state. Without a training part (``history_ids`` empty) the held-out text is scored
    after its own first character. ``max_chars`` scores only the first ``max_chars``
    held-out characters; ``cache`` / ``dynamic`` score with :func:`score_adaptive`.
    With a distributed ``world`` the ranks score parts and agree (:func:`score`).
    """
    if len(history_ids) > 0:
        targets, context = heldout_ids, history_ids[-HISTORY:]
    else:
        targets, context = heldout_ids[1:], heldout_ids[:1]
    if max_chars is not None:
        check_argument("max_chars", max_chars, is_positive)
        targets = targets[:max_chars]
    if cache is None and dynamic is None:
        return score(model, targets, context, mixture=mixture, world=world)
    if world is not None and world.distributed:
        raise CharLSTMError("adaptive scoring (cache, dynamic evaluation) runs in one process")
    return score_adaptive(model, targets, context, cache, dynamic, mixture=mixture)


def score_adaptive(
    model: CharLSTM,
    targets: torch.Tensor,
    context: torch.Tensor,
    cache: CacheConfig | None = None,
    dynamic: DynamicConfig | None = None,
    segment: int | None = None,
    mixture: NgramMixture | None = None,
) -> EvalResult:
    """Score ``targets`` as one stream, adapting causally to the text already scored.

    The text is read in segments of ``segment`` characters (default 256; with dynamic
    evaluation it is ``dynamic.segment``, and another ``segment`` is refused). Each
    segment is scored first; only then does the model see it: its hidden states and the
    characters that followed them join the cache, and (dynamic evaluation) one SGD step on
    its loss updates a private copy of the weights. ``model`` is left unchanged. Without
    dynamic evaluation the segment length changes nothing but speed. With ``mixture`` the
    (adapted) LSTM's distribution is interpolated with the n-gram before the cache is mixed
    in; dynamic evaluation learns from the LSTM's own loss.
    """
    learner = DynamicEvaluation(model, dynamic) if dynamic is not None else None
    if segment is not None:
        check_argument("segment", segment, is_positive)
    if learner is not None:
        if segment is not None and segment != learner.config.segment:
            raise SettingError(
                f"with dynamic evaluation the segment is {{dynamic.segment}} "
                f"({learner.config.segment}), not {segment}: give one of them"
            )
        model = learner.model  # set up for learning by DynamicEvaluation
        segment = learner.config.segment
    else:
        model.eval()
        segment = segment or SEGMENT
    device = model.device
    n = len(targets)
    if n == 0:
        return EvalResult(loss=float("nan"), chars=0)
    inputs = torch.cat([context[-1:], targets[:-1]]).to(device)
    targets = targets.to(device)
    with torch.no_grad():
        state = model.init_state(1)
        if len(context) > 1:
            _, state = model.features(context[:-1].view(-1, 1).to(device), state)
    text = ""
    if mixture is not None:  # the scored stream as characters, for the n-gram's contexts
        text = mixture.vocab.decode(torch.cat([context.cpu(), targets.cpu()]))
    offset = len(text) - n
    hidden = model.config.hidden_size
    keys = torch.empty(0, hidden, device=device)
    key_next = torch.empty(0, dtype=torch.long, device=device)
    nll = []
    for start in range(0, n, segment):
        y = targets[start : start + segment]  # (S,)
        with torch.set_grad_enabled(learner is not None):
            features, log_p, new_state = read_log_probs(
                model, inputs[start : start + segment], state
            )  # (S, H), (S, V)
            if learner is not None:
                learner.learn(nn.functional.nll_loss(log_p, y))
        with torch.no_grad():
            log_p = log_p.detach()
            if mixture is not None:
                at = offset + start
                log_p = mixture.mix(log_p, mixture.log_distributions_at(text, at, at + len(y)))
            if cache is not None:
                queries = features.detach().float()
                keys = torch.cat([keys, queries])
                key_next = torch.cat([key_next, y])
                log_p = cache_log_probs(log_p, queries, keys, key_next, cache)
                keys, key_next = keys[-cache.window :], key_next[-cache.window :]
            nll.append(-log_p.gather(1, y[:, None])[:, 0])
        state = (new_state[0].detach(), new_state[1].detach())
    per_char = torch.cat(nll).cpu()
    return EvalResult(loss=per_char.sum().item() / n, chars=n, per_char=per_char)

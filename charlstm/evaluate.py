"""Held-out scoring: negative log-likelihood per character, bits per character, perplexity.

Every character of the scored text is predicted exactly once from the characters before
it. The text is cut into ``C`` contiguous columns that run side by side as a batch; each
column starts from a zero state, warmed on the ``history`` characters before it when they
are given (for held-out text: the end of the training text, as the n-gram baseline does).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from charlstm.model import CharLSTM


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


@dataclass
class CacheConfig:
    """Continuous cache (Grave et al., 2017): recent hidden states vote for what followed them.

    ``p(c | h_t) = (1 - mix) * p_model(c | h_t) + mix * p_cache(c | h_t)`` with
    ``p_cache(c) ∝ Σ_{i in window, i < t} [x_{i+1} = c] exp(flatness * h_t · h_i)``.
    """

    # Defaults tuned with scripts/tune_adaptation.py on a split inside jaychou's training
    # text (never on the held-out part); see docs/quality.md.
    window: int = 500
    flatness: float = 0.5
    mix: float = 0.45

    def validate(self) -> CacheConfig:
        from charlstm.errors import CharLSTMError

        if self.window <= 0:
            raise CharLSTMError(f"--cache-window must be positive, not {self.window}")
        if not 0 < self.mix < 1:
            raise CharLSTMError(f"--cache-mix must be in (0, 1), not {self.mix}")
        if self.flatness <= 0:
            raise CharLSTMError(f"--cache-flatness must be positive, not {self.flatness}")
        return self


@dataclass
class DynamicConfig:
    """Dynamic evaluation (Krause et al., 2018): after scoring each segment, one SGD step
    on it, pulled back towards the trained weights by ``decay``."""

    lr: float = 0.1  # tuned together with the cache (alone, 0.3 scored better)
    segment: int = 50
    decay: float = 0.0

    def validate(self) -> DynamicConfig:
        from charlstm.errors import CharLSTMError

        if self.lr <= 0:
            raise CharLSTMError(f"--dynamic-lr must be positive, not {self.lr}")
        if self.segment <= 0:
            raise CharLSTMError(f"--dynamic-segment must be positive, not {self.segment}")
        if not 0 <= self.decay < 1:
            raise CharLSTMError(f"--dynamic-decay must be in [0, 1), not {self.decay}")
        return self


def _cache_log_probs(
    log_p: torch.Tensor,
    queries: torch.Tensor,
    keys: torch.Tensor,
    key_next: torch.Tensor,
    cache: CacheConfig,
) -> torch.Tensor:
    """Mix model log-probabilities (S, V) with the cache over ``keys`` seen before each query.

    ``queries`` (S, H) are the hidden states of the S positions being scored, in order;
    ``keys`` (K + S, H) are the K cached states followed by these S states, and
    ``key_next`` (K + S,) the character that followed each key. Query ``s`` may only use
    keys ``< K + s`` (strictly before it) and at most ``cache.window`` of them.
    """
    steps = queries.shape[0]
    past = keys.shape[0] - steps
    scores = cache.flatness * (queries @ keys.t())  # (S, K + S)
    query_pos = past + torch.arange(steps, device=keys.device)[:, None]
    key_pos = torch.arange(keys.shape[0], device=keys.device)[None, :]
    visible = (key_pos < query_pos) & (key_pos >= query_pos - cache.window)
    scores = scores.masked_fill(~visible, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no key: all zero
    p_cache = torch.zeros_like(log_p).scatter_add_(1, key_next.expand(steps, -1), weights)
    has_keys = visible.any(dim=-1, keepdim=True)
    mix = torch.where(has_keys, cache.mix, 0.0)
    p = (1 - mix) * log_p.exp() + mix * p_cache
    return p.clamp_min(1e-30).log()


def score_adaptive(
    model: CharLSTM,
    targets: torch.Tensor,
    context: torch.Tensor,
    cache: CacheConfig | None = None,
    dynamic: DynamicConfig | None = None,
    segment: int = 256,
) -> EvalResult:
    """Score ``targets`` as one stream, adapting causally to the text already scored.

    Each segment is scored first; only then does the model see it: its hidden states and
    the characters that followed them join the cache, and (dynamic evaluation) one SGD
    step on its loss updates a private copy of the weights. ``model`` is left unchanged.
    """
    cache = cache.validate() if cache is not None else None
    dynamic = dynamic.validate() if dynamic is not None else None
    if dynamic is not None:
        model = copy.deepcopy(model)
        segment = dynamic.segment
        params = list(model.parameters())
        originals = [p.detach().clone() for p in params]
    model.eval()
    device = model.head.weight.device
    n = len(targets)
    if n == 0:
        return EvalResult(loss=float("nan"), chars=0)
    inputs = torch.cat([context[-1:], targets[:-1]]).to(device)
    targets = targets.to(device)
    with torch.no_grad():
        state = model.init_state(1)
        if len(context) > 1:
            _, state = model.features(context[:-1].view(-1, 1).to(device), state)
    hidden = model.config.hidden_size
    keys = torch.empty(0, hidden, device=device)
    key_next = torch.empty(0, dtype=torch.long, device=device)
    nll = []
    for start in range(0, n, segment):
        x = inputs[start : start + segment].view(-1, 1)  # (S, 1)
        y = targets[start : start + segment]  # (S,)
        with torch.set_grad_enabled(dynamic is not None):
            features, new_state = model.features(x, state)  # (S, 1, H)
            log_p = torch.log_softmax(model.head(features[:, 0]).float(), dim=-1)  # (S, V)
            if dynamic is not None:
                loss = nn.functional.nll_loss(log_p, y)
                grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            log_p = log_p.detach()
            if cache is not None:
                queries = features[:, 0].detach().float()
                keys = torch.cat([keys, queries])
                key_next = torch.cat([key_next, y])
                log_p = _cache_log_probs(log_p, queries, keys, key_next, cache)
                keys, key_next = keys[-cache.window :], key_next[-cache.window :]
            nll.append(-log_p.gather(1, y[:, None])[:, 0])
            if dynamic is not None:
                for param, grad, original in zip(params, grads, originals, strict=True):
                    param -= dynamic.lr * grad
                    if dynamic.decay:
                        param += dynamic.decay * (original - param)
        state = (new_state[0].detach(), new_state[1].detach())
    per_char = torch.cat(nll).cpu()
    return EvalResult(loss=per_char.sum().item() / n, chars=n, per_char=per_char)

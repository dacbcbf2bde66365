"""Held-out scoring: negative log-likelihood per character, bits per character, perplexity.

Every character of the scored text is predicted exactly once from the characters before
it. The text is cut into ``C`` contiguous columns that run side by side as a batch; each
column starts from a zero state, warmed on the ``history`` characters before it when they
are given (for held-out text: the end of the training text, as the n-gram baseline does).

Evaluation-time adaptation lives here too, for scoring (:func:`score_adaptive`) and for
generation (:mod:`charlstm.sampling` reads its streams with :class:`StreamCache` and
:class:`DynamicEvaluation`): the continuous cache and dynamic evaluation, both causal.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from charlstm.config import positive
from charlstm.errors import CharLSTMError
from charlstm.mixture import NgramMixture
from charlstm.model import CharLSTM, State


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
) -> EvalResult:
    """Score ``targets`` (n,) given ``context`` (at least one character before them).

    ``context[-1]`` is the input that predicts ``targets[0]``; earlier context characters
    only warm the state of the first column. With ``mixture`` each character is scored by
    the LSTM interpolated with the n-gram (:mod:`charlstm.mixture`).
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
    losses = []
    for start in range(0, length, num_steps):
        logits, state = model(x[start : start + num_steps], state)
        losses.append(
            nn.functional.cross_entropy(
                logits.flatten(0, 1).float(),
                y[start : start + num_steps].flatten(),
                ignore_index=ignore,
                reduction="none",
            ).view(-1, columns)
        )
    per_char = torch.cat(losses).t().reshape(-1)[:n].cpu().double()  # (n,) in text order
    if mixture is not None:
        per_char = -mixture.mix(-per_char, mixture.target_log_probs(targets.cpu(), context.cpu()))
    return EvalResult(loss=per_char.sum().item() / n, chars=n, per_char=per_char)


def score_split(
    model: CharLSTM,
    indices: torch.Tensor,
    cut: int,
    history: int = 256,
    mixture: NgramMixture | None = None,
) -> EvalResult:
    """Score ``indices[cut:]`` (held out) after up to ``history`` training characters."""
    if cut <= 0:
        return score(model, indices[1:], indices[:1], mixture=mixture)
    return score(model, indices[cut:], indices[max(0, cut - history) : cut], mixture=mixture)


@dataclass
class CacheConfig:
    """Continuous cache (Grave et al., 2017): recent hidden states vote for what followed them.

    ``p(c | h_t) = (1 - mix) * p_model(c | h_t) + mix * p_cache(c | h_t)`` with
    ``p_cache(c) ∝ Σ_{i in window, i < t} [x_{i+1} = c] exp(flatness * h_t · h_i)``.
    ``mix = 0`` leaves the model's distribution as it is.
    """

    # Defaults tuned with scripts/tune_adaptation.py on a split inside jaychou's training
    # text (never on the held-out part); see docs/quality.md.
    window: int = 500
    flatness: float = 0.5
    mix: float = 0.45

    @classmethod
    def for_generation(cls, **settings: Any) -> CacheConfig:
        """The defaults for writing text rather than scoring it: ``mix`` 0.05.

        A generated text feeds the cache its own characters, and consecutive hidden states
        are alike, so a strong cache votes for the character just written: at the scoring
        mix (0.45) a sample stutters. 0.05 is the largest mix tried (0.03, 0.05, 0.075,
        0.1, 0.2, 0.3, 0.45) whose samples repeat a character no more often than the model
        alone (jaychou, the 1x512 small-corpus run, 16 samples x 300 characters, T = 0.8; see
        docs/generation.md).
        """
        return cls(**{"mix": 0.05, **settings})

    def validate(self) -> CacheConfig:
        positive("--cache-window", self.window)
        if not 0 <= self.mix < 1:
            raise CharLSTMError(f"--cache-mix must be in [0, 1), not {self.mix}")
        if not (self.flatness > 0 and math.isfinite(self.flatness)):
            raise CharLSTMError(f"--cache-flatness must be positive, not {self.flatness}")
        return self


@dataclass
class DynamicConfig:
    """Dynamic evaluation (Krause et al., 2018): after scoring each segment, one SGD step
    on it, pulled back towards the trained weights by ``decay``. ``lr = 0`` never changes
    the weights."""

    lr: float = 0.1  # tuned together with the cache (alone, 0.3 scored better)
    segment: int = 50
    decay: float = 0.0

    def validate(self) -> DynamicConfig:
        if not (self.lr >= 0 and math.isfinite(self.lr)):
            raise CharLSTMError(f"--dynamic-lr must be >= 0, not {self.lr}")
        positive("--dynamic-segment", self.segment)
        if not 0 <= self.decay < 1:
            raise CharLSTMError(f"--dynamic-decay must be in [0, 1), not {self.decay}")
        return self


def cache_mixture(
    log_p: torch.Tensor,
    scores: torch.Tensor,
    visible: torch.Tensor,
    key_next: torch.Tensor,
    mix: float,
) -> torch.Tensor:
    """``log((1 - mix) * p_model + mix * p_cache)`` for R rows: (R, V).

    ``log_p`` (R, V) are the model's log-probabilities; ``scores`` (R, K) are
    ``flatness * h · h_i`` of each row's query against K keys, ``visible`` (R, K) says
    which keys a row may use and ``key_next`` (R, K) is the character that followed each
    key. ``p_cache`` is the softmax of the visible scores, summed per character; a row
    with no visible key keeps the model's distribution.
    """
    scores = scores.masked_fill(~visible, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no key: all zero
    p_cache = torch.zeros_like(log_p).scatter_add_(1, key_next, weights)
    mix = torch.where(visible.any(dim=-1, keepdim=True), mix, 0.0)
    p = (1 - mix) * log_p.exp() + mix * p_cache
    return p.clamp_min(1e-30).log()


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
    return cache_mixture(log_p, scores, visible, key_next.expand(steps, -1), cache.mix)


class StreamCache:
    """The continuous cache of N streams that are read side by side, for generation.

    Each stream keeps a ring of its last ``window`` pairs (hidden state, the character that
    followed it): ``keys`` (N, W, H), ``key_next`` (N, W), ``filled`` (N, W); ``slot`` (N,)
    is where a stream writes next, its oldest pair once the ring is full. A query sees
    exactly the pairs :func:`score_adaptive` would let it see: the ``window`` latest ones
    before it, each pair added only once its next character is known.
    """

    def __init__(
        self, config: CacheConfig, batch: int, hidden_size: int, device: torch.device
    ) -> None:
        self.config = config
        window = config.window
        self.keys = torch.zeros((batch, window, hidden_size), device=device)  # (N, W, H)
        self.key_next = torch.zeros((batch, window), dtype=torch.long, device=device)
        self.filled = torch.zeros((batch, window), dtype=torch.bool, device=device)
        self.slot = torch.zeros(batch, dtype=torch.long, device=device)

    def fill(self, rows: torch.Tensor, keys: torch.Tensor, key_next: torch.Tensor) -> None:
        """Start the empty streams ``rows`` (R,) with T pairs each, oldest first:
        ``keys`` (T, R, H), ``key_next`` (T, R). Only the last ``window`` are kept."""
        count = min(keys.shape[0], self.config.window)
        if count:
            self.keys[rows, :count] = keys[-count:].transpose(0, 1).float()
            self.key_next[rows, :count] = key_next[-count:].t()
            self.filled[rows, :count] = True
        self.slot[rows] = count % self.config.window

    def add(self, keys: torch.Tensor, key_next: torch.Tensor) -> None:
        """One pair per stream: ``keys`` (N, H), ``key_next`` (N,)."""
        rows = torch.arange(len(self.slot), device=self.slot.device)
        self.keys[rows, self.slot] = keys.float()
        self.key_next[rows, self.slot] = key_next
        self.filled[rows, self.slot] = True
        self.slot = (self.slot + 1) % self.config.window

    def mix(
        self, log_p: torch.Tensor, queries: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The mixture's log-probabilities (R, V) for ``queries`` (R, H) of ``rows`` (all
        streams when ``None``), from the model's ``log_p`` (R, V)."""
        keys, key_next, filled = self.keys, self.key_next, self.filled
        if rows is not None:
            keys, key_next, filled = keys[rows], key_next[rows], filled[rows]
        scores = torch.bmm(keys, queries.float().unsqueeze(-1)).squeeze(-1)  # (R, W)
        return cache_mixture(
            log_p, self.config.flatness * scores, filled, key_next, self.config.mix
        )


class DynamicEvaluation:
    """A private copy of ``model`` that learns from what it reads: :meth:`learn` takes one
    SGD step on a segment's loss, pulled back towards the original weights by ``decay``.
    The model given is never changed."""

    def __init__(self, model: CharLSTM, config: DynamicConfig) -> None:
        self.config = config
        self.model = copy.deepcopy(model).eval()
        for module in self.model.modules():
            if isinstance(module, nn.LSTM):
                # cuDNN differentiates an LSTM only in training mode. charlstm's nn.LSTM
                # layers have no dropout of their own (it lives in separate modules, which
                # stay in evaluation mode), so training mode computes the same function.
                module.train()
                module.flatten_parameters()  # the copy's weights, in cuDNN's one buffer
        self.params = list(self.model.parameters())
        self.originals = [p.detach().clone() for p in self.params] if config.decay else []

    def learn(self, loss: torch.Tensor) -> None:
        """One step down the gradient of ``loss``, a function of this copy's weights."""
        grads = torch.autograd.grad(loss, self.params)
        with torch.no_grad():
            for param, grad in zip(self.params, grads, strict=True):
                param -= self.config.lr * grad
            if self.config.decay:
                for param, original in zip(self.params, self.originals, strict=True):
                    param += self.config.decay * (original - param)


def read_log_probs(
    model: CharLSTM, x: torch.Tensor, state: State
) -> tuple[torch.Tensor, torch.Tensor, State]:
    """Read ``x`` (T,) as one stream from ``state``: the last layer's output (T, H), the
    log-probabilities of the next character after each step (T, V) and the new state."""
    features, state = model.features(x.view(-1, 1), state)  # (T, 1, H)
    features = features[:, 0]
    return features, torch.log_softmax(model.head(features).float(), dim=-1), state


def score_adaptive(
    model: CharLSTM,
    targets: torch.Tensor,
    context: torch.Tensor,
    cache: CacheConfig | None = None,
    dynamic: DynamicConfig | None = None,
    segment: int = 256,
    mixture: NgramMixture | None = None,
) -> EvalResult:
    """Score ``targets`` as one stream, adapting causally to the text already scored.

    Each segment is scored first; only then does the model see it: its hidden states and
    the characters that followed them join the cache, and (dynamic evaluation) one SGD
    step on its loss updates a private copy of the weights. ``model`` is left unchanged.
    With ``mixture`` the (adapted) LSTM's distribution is interpolated with the n-gram
    before the cache is mixed in; dynamic evaluation learns from the LSTM's own loss.
    """
    cache = cache.validate() if cache is not None else None
    learner = DynamicEvaluation(model, dynamic.validate()) if dynamic is not None else None
    if learner is not None:
        model = learner.model  # set up for learning by DynamicEvaluation
        segment = learner.config.segment
    else:
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
                log_p = _cache_log_probs(log_p, queries, keys, key_next, cache)
                keys, key_next = keys[-cache.window :], key_next[-cache.window :]
            nll.append(-log_p.gather(1, y[:, None])[:, 0])
        state = (new_state[0].detach(), new_state[1].detach())
    per_char = torch.cat(nll).cpu()
    return EvalResult(loss=per_char.sum().item() / n, chars=n, per_char=per_char)

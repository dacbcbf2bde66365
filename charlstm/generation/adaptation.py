"""Evaluation-time adaptation: the continuous cache and dynamic evaluation, both causal.

Both make the model's distribution depend on the text it has read so far, for scoring
(:func:`charlstm.eval.scoring.score_adaptive`) and for writing
(:mod:`charlstm.generation.streams`):

* the continuous cache (:class:`~charlstm.generation.settings.CacheConfig`): recent hidden
  states vote for the character that followed them, ``p = (1 - mix) * p_model + mix * p_cache``;
* dynamic evaluation (:class:`~charlstm.generation.settings.DynamicConfig`): after each
  segment, one SGD step on its loss updates a private copy of the weights
  (:class:`DynamicEvaluation`).

The model is read only through its interface (``features``, ``log_probs``, ``step``), so
both work with either backend and either softmax.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from charlstm.generation.rules import pick
from charlstm.generation.settings import CacheConfig, DynamicConfig
from charlstm.model import CharLSTM, State

# -- the continuous cache ---------------------------------------------------------------------


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


def cache_log_probs(
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
    exactly the pairs :func:`~charlstm.eval.scoring.score_adaptive` would let it see: the
    ``window`` latest ones before it, each pair added only once its next character is known.
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

    def select(self, index: torch.Tensor, source: StreamCache | None = None) -> None:
        """Keep, reorder or duplicate streams (:mod:`charlstm.generation.rules`); -1: an
        empty one."""
        for name in ("keys", "key_next", "filled", "slot"):
            other = getattr(source, name) if source is not None else None
            setattr(self, name, pick(getattr(self, name), index, other))

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


# -- dynamic evaluation -------------------------------------------------------------------------


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
    log-probabilities of the next character after each step (T, V) and the new state.
    With the adaptive softmax the log-probabilities come from its head, so a loss on them
    (dynamic evaluation's) is differentiated through it."""
    features, state = model.features(x.view(-1, 1), state)  # (T, 1, H)
    features = features[:, 0]
    return features, model.features_log_probs(features), state

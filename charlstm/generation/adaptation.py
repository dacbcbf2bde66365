"""Evaluation-time adaptation: the continuous cache and dynamic evaluation, both causal.

Both make the model's distribution depend on the text it has read so far, for scoring
(:func:`charlstm.generation.scoring.score_adaptive`) and for writing
(:mod:`charlstm.generation.sample` reads through :class:`AdaptiveStreams`):

* the continuous cache (:class:`CacheConfig`): recent hidden states vote for the character
  that followed them, ``p = (1 - mix) * p_model + mix * p_cache``;
* dynamic evaluation (:class:`DynamicConfig`): after each segment, one SGD step on its loss
  updates a private copy of the weights (:class:`DynamicEvaluation`).

The model is read only through its interface (``features``, ``log_probs``, ``step``), so
both work with either backend and either softmax.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from charlstm.config import (
    at_least_zero,
    build,
    check_fields,
    check_given,
    in_range,
    is_positive,
    register,
    setting,
)
from charlstm.model import CharLSTM, State
from charlstm.ngram.mixture import NgramMixture


@register
@dataclass
class Adaptation:
    """The switches of evaluation-time adaptation, as ``charlstm eval`` and ``generate``
    take them; the Python API passes a :class:`CacheConfig` / :class:`DynamicConfig` instead."""

    cache: bool = setting(
        False,
        "Mix the model's distribution with a continuous cache of the text read so far.",
        "Adaptation",
    )
    dynamic: bool = setting(
        False,
        "Dynamic evaluation: learn from the text read so far, one SGD step a segment.",
        "Adaptation",
    )

    def validate(self) -> Adaptation:
        return self


@register
@dataclass
class CacheConfig:
    """Continuous cache (Grave et al., 2017): recent hidden states vote for what followed them.

    ``p(c | h_t) = (1 - mix) * p_model(c | h_t) + mix * p_cache(c | h_t)`` with
    ``p_cache(c) ∝ Σ_{i in window, i < t} [x_{i+1} = c] exp(flatness * h_t · h_i)``.
    ``mix = 0`` leaves the model's distribution as it is. Its settings are ``cache.window``
    etc. (``--cache-window``).
    """

    SETTING_PREFIX: ClassVar[str] = "cache"

    # Defaults tuned with scripts/tune_adaptation.py on a split inside jaychou's training
    # text (never on the held-out part); see docs/quality.md.
    window: int = setting(500, "Cache: hidden states kept.", "Adaptation", check=is_positive)
    flatness: float = setting(
        0.5, "Cache: sharpness of the match.", "Adaptation", check=is_positive
    )
    mix: float = setting(
        0.45, "Cache: its weight in the mixture, in [0, 1).", "Adaptation", check=in_range(0, 1)
    )

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
        return cls(**{"mix": GENERATION_CACHE_MIX, **settings})

    def validate(self) -> CacheConfig:
        check_fields(self)
        return self


#: :meth:`CacheConfig.for_generation`'s mix.
GENERATION_CACHE_MIX = 0.05


@register
@dataclass
class DynamicConfig:
    """Dynamic evaluation (Krause et al., 2018): after scoring each segment, one SGD step
    on it, pulled back towards the trained weights by ``decay`` (a setting of the Python
    API only; the CLI keeps 0). ``lr = 0`` never changes the weights. Its settings are
    ``dynamic.lr`` etc. (``--dynamic-lr``)."""

    SETTING_PREFIX: ClassVar[str] = "dynamic"

    lr: float = setting(  # tuned together with the cache (alone, 0.3 scored better)
        0.1, "Dynamic evaluation: SGD step size.", "Adaptation", check=at_least_zero()
    )
    segment: int = setting(
        50, "Dynamic evaluation: characters per update.", "Adaptation", check=is_positive
    )
    decay: float = setting(0.0, cli=False, check=in_range(0, 1))

    def validate(self) -> DynamicConfig:
        check_fields(self)
        return self


def from_settings(
    given: dict[str, Any], generating: bool = False
) -> tuple[CacheConfig | None, DynamicConfig | None]:
    """The validated configs of ``--cache`` and ``--dynamic`` from the settings given by key
    (``None`` when a switch is off; a setting given without its switch is an error, from
    :data:`charlstm.config.REQUIRES`). ``generating``: :meth:`CacheConfig.for_generation`'s
    defaults."""
    switches = build(Adaptation, given)
    check_given(given, switches)
    cache = dynamic = None
    if switches.cache:
        cache = build(
            CacheConfig, {"cache.mix": GENERATION_CACHE_MIX, **given} if generating else given
        )
    if switches.dynamic:
        dynamic = build(DynamicConfig, given)
    return cache, dynamic


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
    exactly the pairs :func:`~charlstm.generation.scoring.score_adaptive` would let it see: the
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


# -- streams for generation ---------------------------------------------------------------------


class Streams(Protocol):
    """N sequences read side by side (see :class:`charlstm.generation.sample.ModelStreams`):
    :meth:`read` the prefix of the rows ``rows`` (R,), ``x`` (T, R), and :meth:`step` one
    character (N,) for every row; both return the last layer's output ((T, R, H) or
    (N, H)) and the logits of the next character ((R, V) or (N, V))."""

    def read(self, rows: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class LearningStream:
    """One sequence read by a private copy of the model that learns as it reads.

    The text (prefix, then each character generated) is cut into segments of
    ``config.segment`` characters, each predicted from the ones before it, exactly as
    :func:`~charlstm.generation.scoring.score_adaptive` cuts it: once a segment's last character is
    known, one SGD step on the segment's loss (from the state at its start) updates the
    copy, which reads everything after it. ``segment`` holds the inputs read since the
    current segment began, ``start_state`` the state before them.
    """

    def __init__(self, model: CharLSTM, config: DynamicConfig) -> None:
        self.learner = DynamicEvaluation(model, config)
        self.model = self.learner.model
        self.state = self.model.init_state(1)
        self.start_state = self.state
        self.segment: list[int] = []

    def _arrive(self, char: int) -> None:
        """``char`` is the next character of the text: learn from a segment it completes."""
        size = self.learner.config.segment
        if len(self.segment) < size:
            return
        x = torch.tensor(self.segment, device=self.model.device)
        y = torch.cat([x[1:], x.new_tensor([char])])
        with torch.enable_grad():
            _, log_p, _ = read_log_probs(self.model, x, self.start_state)
            self.learner.learn(nn.functional.nll_loss(log_p, y))
        self.start_state = self.state
        self.segment = []

    def read(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Read ``x`` (T,): outputs (T, 1, H) and the next character's logits (1, V)."""
        features = []
        start = 0
        while start < len(x):
            self._arrive(int(x[start]))
            chunk = x[start : start + self.learner.config.segment - len(self.segment)]
            out, _, self.state = read_log_probs(self.model, chunk, self.state)
            self.segment += chunk.tolist()
            features.append(out)
            start += len(chunk)
        features_all = torch.cat(features)[:, None]  # (T, 1, H)
        return features_all, self.model.logits(features_all[-1])

    def step(self, char: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Read one character: output (1, H) and the next character's logits (1, V)."""
        self._arrive(char)
        x = torch.tensor([char], device=self.model.device)
        logits, self.state = self.model.step(x, self.state)
        self.segment.append(char)
        return self.state[0][-1], logits


class LearningStreams:
    """N :class:`LearningStream` rows behind the :class:`Streams` interface; every row
    starts from a fresh copy of the weights."""

    def __init__(self, model: CharLSTM, batch: int, config: DynamicConfig) -> None:
        self.rows = [LearningStream(model, config) for _ in range(batch)]

    def read(self, rows: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [self.rows[row].read(x[:, i]) for i, row in enumerate(rows.tolist())]
        return torch.cat([f for f, _ in outs], dim=1), torch.cat([g for _, g in outs])

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [row.step(char) for row, char in zip(self.rows, x.tolist(), strict=True)]
        return torch.cat([h for h, _ in outs]), torch.cat([g for _, g in outs])


class AdaptiveStreams:
    """Streams whose distribution is more than the model's; returns log-probabilities.

    ``streams`` reads the text (a :class:`LearningStreams` for dynamic evaluation).
    ``mixture``: the LSTM's distribution is interpolated with the run's n-gram
    (:mod:`charlstm.ngram.mixture`), which reads the last characters of each row. ``cache``: a
    :class:`StreamCache` holds each row's (hidden state, next character) pairs, the
    prefix's included, and the distribution is mixed with it. A pair joins the cache when
    its next character is read, so a query never sees its own answer.
    """

    def __init__(
        self,
        streams: Streams,
        model: CharLSTM,
        batch: int,
        cache: CacheConfig | None = None,
        mixture: NgramMixture | None = None,
    ) -> None:
        self.streams = streams
        self.device = device = model.device
        hidden = model.config.hidden_size
        self.cache = StreamCache(cache, batch, hidden, device) if cache is not None else None
        self.query = torch.zeros((batch, hidden), device=device)  # each row's last output
        self.mixture = mixture
        self.recent = [""] * batch  # each row's last characters, for the n-gram

    def _mix_ngram(self, log_p: torch.Tensor, rows: list[int]) -> torch.Tensor:
        if self.mixture is None:
            return log_p
        contexts = [self.recent[row] for row in rows]
        return self.mixture.mix(log_p, self.mixture.log_distributions(contexts))

    def read(self, rows: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, logits = self.streams.read(rows, x)
        log_p = torch.log_softmax(logits.float(), dim=-1)  # (adaptive softmax: no change)
        if self.mixture is not None:
            width, vocab = self.mixture.width, self.mixture.vocab
            for column, row in enumerate(rows.tolist()):
                self.recent[row] = vocab.decode(x[-width:, column])
            log_p = self._mix_ngram(log_p, rows.tolist())
        if self.cache is None:
            return features, log_p
        self.cache.fill(rows, features[:-1], x[1:])
        self.query[rows] = features[-1].float()
        return features, self.cache.mix(log_p, features[-1], rows)

    def resize(self, keep: torch.Tensor, new: int) -> None:
        """Keep the rows ``keep`` (K,), in that order, then ``new`` fresh rows, as
        :meth:`charlstm.generation.sample.ModelStreams.resize` does; for streams without
        a cache or dynamic evaluation (a batch that sequences join and leave)."""
        if self.cache is not None or not hasattr(self.streams, "resize"):
            raise TypeError("only streams without a cache or dynamic evaluation change size")
        self.streams.resize(keep, new)
        self.recent = [self.recent[i] for i in keep.tolist()] + [""] * new
        self.query = torch.cat([self.query[keep], self.query.new_zeros(new, self.query.shape[1])])

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache is not None:
            self.cache.add(self.query, x)
        features, logits = self.streams.step(x)
        log_p = torch.log_softmax(logits.float(), dim=-1)
        if self.mixture is not None:
            width, chars = self.mixture.width, self.mixture.vocab.idx_to_char
            self.recent = [
                (recent + chars[i])[-width:]
                for recent, i in zip(self.recent, x.tolist(), strict=True)
            ]
            log_p = self._mix_ngram(log_p, list(range(len(self.recent))))
        if self.cache is None:
            return features, log_p
        self.query = features.float()
        return features, self.cache.mix(log_p, features)

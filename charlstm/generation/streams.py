"""Streams: N sequences read side by side, each giving its next character's distribution.

:func:`charlstm.generation.sample.generate` reads every row's prefix, then one character per
step for all rows at once, through one :class:`Streams` object:

* :class:`ModelStreams`: the model as it is (logits);
* :class:`LearningStreams`: each row a private copy of the model that learns from its own
  text as it is written (dynamic evaluation, :mod:`charlstm.generation.adaptation`);
* :class:`MixedStreams`: either of those, its distribution mixed with the run's n-gram
  (:mod:`charlstm.ngram.mixture`) and/or the continuous cache of each row's text
  (log-probabilities).

:func:`open_streams` picks them for a set of settings.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

import torch
from torch import nn

from charlstm.generation.adaptation import DynamicEvaluation, StreamCache, read_log_probs
from charlstm.generation.rules import pick
from charlstm.generation.settings import CacheConfig, DynamicConfig
from charlstm.model import CharLSTM
from charlstm.ngram.mixture import NgramMixture


class Streams(Protocol):
    """N sequences read side by side (see :class:`ModelStreams`):
    :meth:`read` the prefix of the rows ``rows`` (R,), ``x`` (T, R), and :meth:`step` one
    character (N,) for every row; both return the last layer's output ((T, R, H) or
    (N, H)) and the logits of the next character ((R, V) or (N, V))."""

    def read(self, rows: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def select(self, index: torch.Tensor, source: Any = None) -> None: ...


#: Every batch the model computes has a multiple of this many rows (padded with idle rows).
#: On a CPU, a row's results are then bitwise the same in any batch: measured with torch
#: 2.13 (MKL) at 1 and 2 threads, batches of 1-3 rows (and 5-7, 9-11 at 2 threads) take
#: other kernels, whose sums differ in the last bits. So a seed writes the same text
#: whatever else shares the batch (``charlstm serve``) and whether it is written alone.
ROW_MULTIPLE = 4


def _padded(rows: int) -> int:
    return -(-rows // ROW_MULTIPLE) * ROW_MULTIPLE


class ModelStreams:
    """N sequences read by the model as it is: each prefix in one pass, then one
    :meth:`~charlstm.model.CharLSTM.step` per character for all rows at once.

    With ``fold`` the steps use the model's :meth:`~charlstm.model.CharLSTM.step_table`
    (built once, after the prefixes): worth it when the run computes at least V rows.
    The model always computes a multiple of :data:`ROW_MULTIPLE` rows; the state holds
    the idle ones after the N rows.
    """

    def __init__(self, model: CharLSTM, batch: int, fold: bool = False) -> None:
        self.model = model
        self.device = model.device
        self.fold = fold
        self.rows = batch
        self.state = model.init_state(_padded(batch))  # (L, N', H) each, N' >= N
        self.table: torch.Tensor | None = None

    def read(self, rows: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = x.shape[1]
        extra = _padded(count) - count
        h, c = self.state[0][:, rows], self.state[1][:, rows]
        if extra:  # idle columns, from a zero state
            x = torch.cat([x, x.new_zeros(x.shape[0], extra)], dim=1)
            h = torch.cat([h, h.new_zeros(h.shape[0], extra, h.shape[2])], dim=1)
            c = torch.cat([c, c.new_zeros(c.shape[0], extra, c.shape[2])], dim=1)
        features, (h, c) = self.model.features(x, (h, c))  # (T, R', H)
        self.state[0][:, rows], self.state[1][:, rows] = h[:, :count], c[:, :count]
        return features[:, :count], self.model.logits(features[-1])[:count]

    def select(self, index: torch.Tensor, source: ModelStreams | None = None) -> None:
        """Row i becomes row ``index[i]`` of these rows then ``source``'s; -1: a fresh
        row (zero state). Sequences join and leave a batch between steps (``charlstm
        serve``), and a poem keeps its best candidate lines (:mod:`charlstm.generation.rules`)."""
        states = [part.transpose(0, 1)[: self.rows] for part in self.state]  # (N, L, H)
        others = [None, None]
        if source is not None:
            others = [part.transpose(0, 1)[: source.rows] for part in source.state]
        self.rows = len(index)
        extra = _padded(self.rows) - self.rows
        new = []
        for part, other in zip(states, others, strict=True):
            taken = pick(part, index, other)  # (N, L, H)
            taken = torch.cat([taken, taken.new_zeros(extra, *taken.shape[1:])])
            new.append(taken.transpose(0, 1).contiguous())
        self.state = (new[0], new[1])

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fold and self.table is None:
            self.table = self.model.step_table()  # (V, 4H)
        extra = self.state[0].shape[1] - len(x)
        if extra:
            x = torch.cat([x, x.new_zeros(extra)])
        logits, self.state = self.model.step(x, self.state, self.table)
        return self.state[0][-1][: self.rows], logits[: self.rows]


class LearningStream:
    """One sequence read by a private copy of the model that learns as it reads.

    The text (prefix, then each character generated) is cut into segments of
    ``config.segment`` characters, each predicted from the ones before it, exactly as
    :func:`~charlstm.eval.scoring.score_adaptive` cuts it: once a segment's last character is
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
        self.model, self.config = model, config
        self.rows = [LearningStream(model, config) for _ in range(batch)]

    def select(self, index: torch.Tensor, source: LearningStreams | None = None) -> None:
        """As :meth:`ModelStreams.select`; every row taken is a copy (its weights too), so
        duplicated rows learn apart and a snapshot never changes; -1: a fresh copy of the
        model."""
        pool = self.rows + (source.rows if source is not None else [])
        self.rows = [
            copy.deepcopy(pool[i]) if i >= 0 else LearningStream(self.model, self.config)
            for i in index.tolist()
        ]

    def read(self, rows: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [self.rows[row].read(x[:, i]) for i, row in enumerate(rows.tolist())]
        return torch.cat([f for f, _ in outs], dim=1), torch.cat([g for _, g in outs])

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [row.step(char) for row, char in zip(self.rows, x.tolist(), strict=True)]
        return torch.cat([h for h, _ in outs]), torch.cat([g for _, g in outs])


class MixedStreams:
    """Streams whose distribution is the model's mixed with more: the run's n-gram, the
    continuous cache of each row's text, or both; returns log-probabilities.

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

    def __copy__(self) -> MixedStreams:
        """A copy whose streams and cache are copies too (so that selecting rows of the
        copy, :func:`~charlstm.generation.rules.take`, leaves this one alone)."""
        other = object.__new__(MixedStreams)
        other.__dict__.update(self.__dict__)
        other.streams = copy.copy(self.streams)
        other.cache = copy.copy(self.cache)
        return other

    def select(self, index: torch.Tensor, source: MixedStreams | None = None) -> None:
        """As :meth:`ModelStreams.select`, for the streams, the cache and the n-gram's
        context of each row."""
        self.streams.select(index, source.streams if source is not None else None)
        self.recent = pick(self.recent, index, source.recent if source is not None else None, "")
        self.query = pick(self.query, index, source.query if source is not None else None)
        if self.cache is not None:
            self.cache.select(index, source.cache if source is not None else None)

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


def open_streams(
    model: CharLSTM,
    batch: int,
    cache: CacheConfig | None = None,
    dynamic: DynamicConfig | None = None,
    mixture: NgramMixture | None = None,
    fold: bool = False,
) -> ModelStreams | MixedStreams:
    """The streams that give each row's next-character distribution: the model's own
    (logits), or with ``cache`` / ``dynamic`` / ``mixture`` the mixed one (log-probs)."""
    if cache is None and dynamic is None and mixture is None:
        return ModelStreams(model, batch, fold)
    streams: Streams = ModelStreams(model, batch, fold)
    if dynamic is not None:
        streams = LearningStreams(model, batch, dynamic)
    return MixedStreams(streams, model, batch, cache, mixture)

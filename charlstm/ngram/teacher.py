"""A Kneser-Ney n-gram as the LSTM's teacher: soft training targets (``--ngram-teacher``).

On a lyrics-sized corpus (tens of thousands of characters, thousands of distinct ones)
the n-gram model scores unseen songs better than a regularised LSTM: it recalls which
characters follow a two- to five-character context anywhere in the training text and
backs off smoothly when the context is new, where the LSTM either memorises or smooths
too much (docs/quality.md has the breakdown). Distillation hands that knowledge to the
LSTM during training only. With ``--ngram-teacher ORDER --teacher-weight w`` the loss of
each training character is::

    (1 - w) * CE(one-hot target) + w * CE(q),    CE(q) = -sum_v q(v) log p_LSTM(v)

where ``q`` is the teacher's distribution for that position. The trained model is an
ordinary LSTM; nothing of the n-gram is kept or used when scoring or generating.

A teacher that has seen the character it predicts would only repeat the one-hot target
(its top-order counts include that very occurrence). So the teacher is *cross-fitted*:
the training text is cut into ``folds`` contiguous parts, and the positions of part ``f``
get their ``q`` from an n-gram fitted on the other parts. The held-out split is never
read. Building the teacher takes seconds for lyrics and grows with the text (200,000
characters of Tiny Shakespeare, order 7: 26 s on one core, 0.5 GB). ``q`` is stored
compactly (:meth:`charlstm.ngram.kneser_ney.KneserNeyLM.sparse_distributions`):
a scaled copy of the fold's unigram level plus at most ``top`` characters with extra
probability.
"""

from __future__ import annotations

import numpy as np
import torch

from charlstm.data.corpus import Vocab
from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError
from charlstm.ngram.kneser_ney import KneserNeyLM

FOLDS = 5
TOP = 64


class NgramTeacher:
    """Cross-fitted Kneser-Ney distributions for every position of a training text.

    Row ``p`` is the distribution that predicts ``text[p]`` from the ``order - 1``
    characters before it, as estimated without the fold that holds ``p``.
    """

    def __init__(
        self, text: str, vocab: Vocab, order: int, folds: int = FOLDS, top: int = TOP
    ) -> None:
        if order < 2:
            raise SettingError(f"{{ngram_teacher}} must be an order >= 2 (0: off), not {order}")
        if len(text) < 2 * folds:
            raise CharLSTMError(
                f"training text too short for an n-gram teacher on {folds} folds "
                f"(--teacher-folds): {len(text)} characters, at least 2 per fold needed"
            )
        top = min(top, len(vocab))
        n = len(text)
        edges = [round(n * f / folds) for f in range(folds + 1)]
        fold = np.zeros(n, dtype=np.int64)
        base = np.zeros(n)
        ids = np.zeros((n, top), dtype=np.int32)  # int32 / float32: 8 bytes per entry
        values = np.zeros((n, top), dtype=np.float32)
        unigram = np.zeros((folds, len(vocab)))
        for f in range(folds):
            start, stop = edges[f], edges[f + 1]
            # The other folds, joined: the n - 1 n-grams that straddle the join are spurious
            # but few (folds - 1 joins), and never include a character of fold f.
            model = KneserNeyLM(order).fit(text[:start] + text[stop:], vocab)
            fold[start:stop] = f
            base[start:stop], ids[start:stop], values[start:stop] = model.sparse_distributions(
                text, start, stop, top
            )
            unigram[f] = model.base_distribution()
        self.order, self.folds = order, folds
        self.fold = torch.from_numpy(fold)
        self.base = torch.from_numpy(base).float()
        self.ids = torch.from_numpy(ids)
        self.values = torch.from_numpy(values)
        self.unigram = torch.from_numpy(unigram).float()  # (folds, V)

    def to(self, device: torch.device) -> NgramTeacher:
        for name in ("fold", "base", "ids", "values", "unigram"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def __len__(self) -> int:
        return len(self.base)

    def dense(self, positions: torch.Tensor) -> torch.Tensor:
        """The teacher's distributions ``q`` (M, V) at ``positions`` (M,), for inspection."""
        q = self.base[positions, None] * self.unigram[self.fold[positions]]
        return q.scatter_add(1, self.ids[positions].long(), self.values[positions])

    def cross_entropy(self, log_probs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``-sum_v q(v) log p(v)`` per row: ``log_probs`` (M, V), ``positions`` (M,) -> (M,).

        Computed from the compact form, without building ``q``: the unigram term is one
        matrix product over the folds' unigram levels, the rest a gather of ``top`` entries.
        """
        unigram_term = (log_probs @ self.unigram.t()).gather(1, self.fold[positions, None])
        ids = self.ids[positions].long()
        sparse = (self.values[positions] * log_probs.gather(1, ids)).sum(1)
        return -(self.base[positions] * unigram_term.squeeze(1) + sparse)

"""The LSTM interpolated with a Kneser-Ney n-gram: one model for scoring and writing.

With ``--ngram-mix ORDER --mix-weight w`` a run's model predicts the next character with::

    p(c | text so far) = (1 - w) * p_LSTM(c | text so far) + w * p_KN(c | last ORDER - 1 chars)

where ``p_KN`` is a Kneser-Ney n-gram (:class:`charlstm.ngram.kneser_ney.KneserNeyLM`,
discount 0.75) fitted on the run's training text, the held-out part excluded. The two models
are good at different things: the LSTM generalises across contexts it has never seen verbatim, the
n-gram recalls exactly which characters followed a five-character string anywhere in the
training text (a chorus sung before, a stock phrase), which the regularised LSTM only
half remembers. On lyrics the interpolation scores about 5 % better than the LSTM alone
(docs/quality.md); the weight was chosen on a split inside the training text.

The n-gram is kept in the checkpoint as the training text it was fitted on (fitting takes
a fraction of a second for lyrics, about two seconds for a megabyte), and refitted when the
model is loaded. Held-out scoring during training, ``charlstm eval``, ``generate`` and the
samples during training all use the interpolated distribution; ``--lstm-only`` (or
:meth:`charlstm.api.LanguageModel.lstm_only`) scores and writes with the LSTM alone. The
LSTM's training loss does not involve the n-gram.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from charlstm.data.corpus import Vocab
from charlstm.ngram.kneser_ney import KneserNeyLM

#: The discount of the interpolated n-gram (the yardstick's; docs/quality.md).
DISCOUNT = 0.75


class NgramMixture:
    """A fitted Kneser-Ney n-gram and its weight ``w`` in the interpolation."""

    def __init__(self, text: str, vocab: Vocab, order: int, weight: float) -> None:
        self.text, self.order, self.weight = text, order, weight
        self.vocab = vocab
        self.ngram = KneserNeyLM(order, DISCOUNT).fit(text, vocab)
        self.width = order - 1

    def __repr__(self) -> str:
        return f"NgramMixture(order={self.order}, weight={self.weight})"

    def describe(self) -> str:
        return f"Kneser-Ney {self.order}-gram at weight {self.weight:g}"

    def mix(self, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        """``log((1 - w) * exp(log_p) + w * exp(log_q))``, element-wise (any shapes that
        broadcast): the LSTM's log-probabilities ``log_p``, the n-gram's ``log_q``."""
        log_q = log_q.to(log_p.device, log_p.dtype)
        return torch.logaddexp(log_p + math.log1p(-self.weight), log_q + math.log(self.weight))

    def target_log_probs(self, targets: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``log p_KN`` (n,) float64 of each of ``targets`` (n,) given the characters before
        it, the first ones' reaching back into ``context`` (indices, like ``targets``)."""
        history = self.vocab.decode(context[-self.width :])  # the n-gram reads no further
        values = self.ngram.log_probs(self.vocab.decode(targets), history)
        return torch.tensor(values, dtype=torch.float64)

    def log_distributions(self, contexts: list[str]) -> torch.Tensor:
        """``log p_KN(. | context)`` (R, V) float32, one row per context string."""
        return torch.from_numpy(np.log(self.ngram.distributions(contexts))).float()

    def log_distributions_at(self, text: str, start: int, stop: int) -> torch.Tensor:
        """The rows (stop - start, V) that predict ``text[i]`` for ``start <= i < stop``."""
        width = self.width
        return self.log_distributions([text[max(0, i - width) : i] for i in range(start, stop)])

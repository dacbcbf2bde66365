"""Interpolated Kneser-Ney character n-gram language model: the held-out yardstick.

A character n-gram model predicts the next character ``w`` from the ``order - 1``
characters before it (its *context* ``h``). This module implements interpolated
Kneser-Ney smoothing as in Chen & Goodman (1998), "An Empirical Study of Smoothing
Techniques for Language Modeling", section 2.7, with one absolute discount ``D`` for
every order. Plain Python dictionaries keyed by strings do the counting; scoring looks
up only the terms needed for the character that actually comes next, so it never loops
over the vocabulary.

Notation (``V`` = ``len(vocab)``, ``n`` = ``order``, ``k`` = context length, ``0 <= k < n``):

* ``c(h w)``        raw count of the string ``h + w`` in the training text.
* ``N1+(• h w)``    continuation count: the number of *distinct* characters ``v`` with
  ``c(v h w) > 0`` (how many different left extensions ``h + w`` has).
* ``a_k(h w)``      the count used at level ``k``: ``c(h w)`` at the top level
  (``k = n - 1``), ``N1+(• h w)`` at every lower level.
* ``T_k(h)  = sum_w a_k(h w)``          the context total (``c(h •)`` or ``N1+(• h •)``).
* ``N_k(h)  = #{w : a_k(h w) > 0}``     distinct characters seen after ``h`` (``N1+(h •)``).

The probability at level ``k`` is defined from the level below (``h'`` = ``h`` without its
first character, so ``len(h') = k - 1``)::

    P_k(w | h) = max(a_k(h w) - D, 0) / T_k(h)  +  gamma_k(h) * P_{k-1}(w | h')
    gamma_k(h) = D * N_k(h) / T_k(h)            # the probability mass the discount freed

    P_k(w | h) = P_{k-1}(w | h')                # if T_k(h) == 0: unseen context, full backoff

    P_{-1}(w)  = 1 / V                          # uniform over the whole vocabulary

so the unigram level (``k = 0``, empty context) mixes the continuation unigram with the
uniform distribution, and a character that is in ``vocab`` but never seen in training
still gets ``gamma_0 / V > 0``. Each level sums to one over the vocabulary because
``sum_w max(a - D, 0) = T - D * N`` when every nonzero ``a >= 1 >= D``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import numpy as np

from charlstm.corpus import Vocab, show_chars, split_point
from charlstm.errors import CharLSTMError

#: The longest training text :meth:`KneserNeyLM.fit` accepts. The counts are Python
#: dictionaries keyed by strings: a 5-gram on tang_poems' 4.04 M training characters peaks
#: at 3.45 GB, so this bound keeps a fit to about 4.5 GB instead of an out-of-memory crash.
MAX_NGRAM_CHARS = 5_000_000
#: The most training text a checkpoint may embed for ``--ngram-mix`` (a few MB of UTF-8).
MAX_EMBEDDED_NGRAM_CHARS = 2_000_000


def check_ngram_chars(num_chars: int, limit: int = MAX_NGRAM_CHARS, what: str = "n-gram") -> None:
    """Raise ``CharLSTMError`` naming the limit when ``num_chars`` exceeds it."""
    if num_chars > limit:
        raise CharLSTMError(
            f"the {what} model is limited to {limit:,} training characters "
            f"(charlstm.ngram.MAX_NGRAM_CHARS) and this text has {num_chars:,}; "
            "fit it on a shorter text (--max-chars)"
        )


class KneserNeyLM:
    """Interpolated Kneser-Ney character n-gram model (Chen & Goodman), one discount ``D``.

    ``order`` is ``n``: a character is predicted from the ``n - 1`` characters before it.
    Call :meth:`fit` on the training text, then :meth:`score` (fast, whole text) or
    :meth:`log_prob` / :meth:`distribution` (one context).
    """

    def __init__(self, order: int, discount: float = 0.75) -> None:
        if not isinstance(order, int) or order < 1:
            raise CharLSTMError(f"--order must be a positive integer, not {order!r}")
        if not 0.0 < discount <= 1.0:
            raise CharLSTMError(f"--discount must be in (0, 1], not {discount}")
        self.order = order
        self.discount = float(discount)
        self.vocab: Vocab | None = None
        # Per level k (context length 0 .. order-1), indexed by k:
        #   counts[k][h + w] = a_k(h w)   (raw counts at k = order-1, continuation counts below)
        #   totals[k][h]     = T_k(h)
        #   types[k][h]      = N_k(h)
        self.counts: list[dict[str, int]] = []
        self.totals: list[dict[str, int]] = []
        self.types: list[dict[str, int]] = []

    # ------------------------------------------------------------------ fitting

    def fit(self, text: str, vocab: Vocab) -> KneserNeyLM:
        """Count n-grams of ``text`` (the training text only) and return ``self``.

        Every character of ``text`` must be in ``vocab``; ``vocab`` may hold more
        characters (they get probability through the uniform lowest level).
        """
        unknown = vocab.missing(text)
        if unknown:
            raise CharLSTMError(
                f"training text has characters not in the vocabulary: {show_chars(unknown)}"
            )
        if not text:
            raise CharLSTMError("cannot fit an n-gram model on an empty text")
        check_ngram_chars(len(text))
        n = self.order
        self.vocab = vocab

        # Top level: raw counts c(h w) of every n-gram (string of length n).
        top = Counter(text[i : i + n] for i in range(len(text) - n + 1))
        counts: list[dict[str, int]] = [{} for _ in range(n)]
        counts[n - 1] = dict(top)

        # Lower levels: a_k(g) = N1+(• g) for every (k+1)-gram g, i.e. the number of
        # distinct (k+2)-grams that end in g. Walk down from the distinct n-grams.
        longer: Any = top.keys()  # distinct (k+2)-grams, starting with k + 2 = n
        for k in range(n - 2, -1, -1):
            counts[k] = dict(Counter(gram[1:] for gram in longer))
            # distinct (k+1)-grams of the text, for the next level down
            longer = {text[i : i + k + 1] for i in range(len(text) - k)}

        totals: list[dict[str, int]] = []
        types: list[dict[str, int]] = []
        for table in counts:
            total: Counter[str] = Counter()
            distinct: Counter[str] = Counter()
            for gram, count in table.items():
                total[gram[:-1]] += count
                distinct[gram[:-1]] += 1
            totals.append(dict(total))
            types.append(dict(distinct))
        self.counts, self.totals, self.types = counts, totals, types
        return self

    def _check_fitted(self) -> Vocab:
        if self.vocab is None:
            raise CharLSTMError("the n-gram model is not fitted yet (call fit first)")
        return self.vocab

    # ------------------------------------------------------------------ probabilities

    def _prob(self, context: str, char: str) -> float:
        """``P(char | context)``; ``context`` is the last ``<= order - 1`` characters.

        Goes up from the uniform distribution one level at a time, using only the
        counts of ``char`` itself: O(order) dictionary lookups.
        """
        prob = 1.0 / len(self.vocab)  # type: ignore[arg-type]  # P_{-1}(w) = 1 / V
        d = self.discount
        for k in range(len(context) + 1):
            h = context[len(context) - k :]  # the last k characters
            total = self.totals[k].get(h)
            if not total:
                continue  # unseen context: P_k = P_{k-1}
            count = self.counts[k].get(h + char, 0)
            prob = (max(count - d, 0.0) + d * self.types[k][h] * prob) / total
        return prob

    def log_prob(self, context: str, char: str) -> float:
        """Natural log of ``P(char | context)``; only the last ``order - 1`` chars count."""
        vocab = self._check_fitted()
        if char not in vocab:
            raise CharLSTMError(f"character not in the vocabulary: {char!r}")
        return math.log(self._prob(self._context(context), char))

    def distribution(self, context: str) -> np.ndarray:
        """``(V,)`` float64 array: ``P(w | context)`` for every ``w`` in vocabulary order.

        Loops over the vocabulary, so it is for inspection and tests, not for scoring.
        """
        vocab = self._check_fitted()
        context = self._context(context)
        return np.array([self._prob(context, ch) for ch in vocab.idx_to_char], dtype=np.float64)

    def _context(self, text: str) -> str:
        return text[max(0, len(text) - self.order + 1) :]

    # ------------------------------------------------------------------ whole distributions

    def base_distribution(self) -> np.ndarray:
        """``(V,)`` float64: ``P_0(w)``, the unigram level every context backs off to."""
        vocab = self._check_fitted()
        d, total = self.discount, self.totals[0].get("", 0)
        uniform = np.full(len(vocab), 1.0 / len(vocab))
        if not total:
            return uniform
        counts = np.zeros(len(vocab))
        for gram, count in self.counts[0].items():
            counts[vocab.char_to_idx[gram]] = max(count - d, 0.0)
        return counts / total + d * self.types[0][""] / total * uniform

    def _followers(self) -> list[dict[str, tuple[np.ndarray, np.ndarray]]]:
        """Per level ``k >= 1``: context ``h`` -> (indices of ``w``, ``max(a_k(h w) - D, 0)``).

        Built on first use and kept (for the discount it was built with).
        """
        vocab = self._check_fitted()
        cached = getattr(self, "_followers_cache", None)
        if cached is not None and cached[0] == self.discount:
            return cached[1]
        levels: list[dict[str, tuple[np.ndarray, np.ndarray]]] = [{}]
        for k in range(1, self.order):
            grouped: dict[str, tuple[list[int], list[float]]] = {}
            for gram, count in self.counts[k].items():
                ids, values = grouped.setdefault(gram[:-1], ([], []))
                ids.append(vocab.char_to_idx[gram[-1]])
                values.append(max(count - self.discount, 0.0))
            levels.append(
                {h: (np.array(i, dtype=np.int64), np.array(v)) for h, (i, v) in grouped.items()}
            )
        self._followers_cache = (self.discount, levels)
        return levels

    def _additions(
        self,
        context: str,
        followers: list[dict[str, tuple[np.ndarray, np.ndarray]]],
        scratch: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """``P(w | context) = scale * P_0(w) + sum_j mass[j] * [w == seen[j]]``.

        Every level above the unigram adds probability to the characters seen after its
        part of ``context``; ``scale`` is the product of the backoff weights. Returns
        ``(seen, mass, scale)``; ``scratch`` is a zeroed (V,) work array, left zeroed.
        """
        touched: list[np.ndarray] = []
        scale = 1.0  # product of the backoff weights of the levels above
        for k in range(len(context), 0, -1):
            h = context[len(context) - k :]
            total = self.totals[k].get(h)
            if not total:
                continue
            idx, discounted = followers[k][h]
            scratch[idx] += scale * discounted / total
            touched.append(idx)
            scale *= self.discount * self.types[k][h] / total
        if not touched:
            return np.zeros(0, dtype=np.int64), np.zeros(0), scale
        seen = np.unique(np.concatenate(touched))
        mass = scratch[seen].copy()
        scratch[seen] = 0.0
        return seen, mass, scale

    def distributions(self, contexts: list[str]) -> np.ndarray:
        """``(R, V)`` float64: ``P(w | contexts[r])`` for every ``w``, one row per context.

        Built from the compact form (a scaled unigram level plus the few characters seen
        after each context), so a row costs O(order) lookups and one (V,) vector.
        """
        vocab = self._check_fitted()
        followers = self._followers()
        base = self.base_distribution()
        out = np.empty((len(contexts), len(vocab)))
        scratch = np.zeros(len(vocab))
        for row, context in enumerate(contexts):
            seen, mass, scale = self._additions(self._context(context), followers, scratch)
            out[row] = scale * base
            out[row, seen] += mass
        return out

    def sparse_distributions(
        self, text: str, start: int, stop: int, top: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The distributions that predict ``text[i]``, ``start <= i < stop``, in compact form.

        ``P(w | h) = base[i] * P_0(w) + sum_j values[i, j] * [w == ids[i, j]]``: every level
        above the unigram adds probability to the few characters seen after its context, and
        the rest is the unigram level scaled by the backoff weights (:meth:`base_distribution`
        is ``P_0``). Only the ``top`` largest additions are kept; the mass of any dropped
        ones moves to the unigram term, so each row still sums to one. Returns ``base``
        (P,), ``ids`` (P, top) int64 and ``values`` (P, top), zero-padded.
        """
        vocab = self._check_fitted()
        followers = self._followers()
        count = stop - start
        base = np.ones(count)
        ids = np.zeros((count, top), dtype=np.int64)
        values = np.zeros((count, top))
        scratch = np.zeros(len(vocab))
        width = self.order - 1
        for row, i in enumerate(range(start, stop)):
            seen, mass, _ = self._additions(text[max(0, i - width) : i], followers, scratch)
            if len(seen) > top:
                keep = np.argpartition(mass, -top)[-top:]
                seen, mass = seen[keep], mass[keep]
            ids[row, : len(seen)], values[row, : len(seen)] = seen, mass
            base[row] = 1.0 - values[row].sum()
        return base, ids, values

    # ------------------------------------------------------------------ scoring

    def score(self, text: str, history: str = "") -> tuple[float, int]:
        """Return ``(total negative log-likelihood in nats, number of characters scored)``.

        Character ``text[i]`` is predicted from the ``order - 1`` characters before it,
        which may reach back into ``history`` (e.g. the training text just before a
        held-out part). Near the start, with fewer characters available, the context is
        shorter. Mean loss in nats/char is ``nll / count``; perplexity is ``exp`` of it.
        """
        return -math.fsum(self.log_probs(text, history)), len(text)

    def log_probs(self, text: str, history: str = "") -> list[float]:
        """``log P(text[i] | the order - 1 characters before it)`` for every ``i``, in nats;
        the context of the first characters reaches back into ``history``."""
        vocab = self._check_fitted()
        unknown = vocab.missing(text)
        if unknown:
            raise CharLSTMError(f"characters not in the vocabulary: {show_chars(unknown)}")
        width = self.order - 1
        history = self._context(history)
        full = history + text
        prob = self._prob
        log = math.log
        return [
            log(prob(full[max(0, i - width) : i], full[i])) for i in range(len(history), len(full))
        ]


def cross_fitted_loss(
    text: str, vocab: Vocab, order: int, folds: int = 5, max_scored: int = 100_000
) -> Callable[[float], float]:
    """``loss(D)``: nats/char of ``text``'s folds, each scored by a model fitted without it.

    ``text`` is cut into ``folds`` contiguous parts; part ``f`` is scored (with the text
    before it as history) by a Kneser-Ney model fitted on the other parts, so characters
    and strings that only part ``f`` holds are as new to it as a held-out text's are. The
    models are fitted once; the discount only enters when probabilities are computed, so
    ``loss`` can be called for many ``D``. At most ``max_scored`` characters are scored in
    all (the start of each part), which keeps a megabyte corpus to seconds per call.
    """
    if folds < 2 or len(text) < 2 * folds:
        raise CharLSTMError(f"cannot cut {len(text)} characters into {folds} folds")
    edges = [round(len(text) * f / folds) for f in range(folds + 1)]
    per_fold = max(1, max_scored // folds)
    parts = []
    for start, stop in pairwise(edges):
        model = KneserNeyLM(order).fit(text[:start] + text[stop:], vocab)
        parts.append((model, text[:start], text[start : min(stop, start + per_fold)]))
    scored = sum(len(part) for _, _, part in parts)

    def loss(discount: float) -> float:
        nll = 0.0
        for model, history, part in parts:
            model.discount = discount
            nll += model.score(part, history=history)[0]
        return nll / scored

    return loss


def choose_discount(
    text: str, vocab: Vocab, order: int, folds: int = 5, tolerance: float = 0.005
) -> float:
    """The discount ``D`` in [0.05, 1] that minimises :func:`cross_fitted_loss` on ``text``.

    Chosen on the training text alone, never on held-out text: a golden-section search,
    which finds the minimum of a loss with one minimum in the interval (the cross-fitted
    loss of Kneser-Ney smoothing in ``D`` is such a curve: it falls, then rises) to within
    ``tolerance``; about 13 calls of the loss.
    """
    loss = cross_fitted_loss(text, vocab, order, folds)
    ratio = (math.sqrt(5) - 1) / 2
    low, high = 0.05, 1.0
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    while high - low > tolerance:
        if loss_a <= loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return round((low + high) / 2, 3)


def evaluate_ngram(
    text: str,
    order: int,
    val_fraction: float = 0.1,
    discount: float | None = 0.75,
    vocab: Vocab | None = None,
) -> dict[str, Any]:
    """Fit a Kneser-Ney ``order``-gram on the first part of ``text``, score the held-out rest.

    The vocabulary defaults to every character of the whole ``text`` (the rule charlstm's
    LSTM uses); the split is :func:`charlstm.corpus.split_point`; the held-out part is
    scored with the training text as history, so its first character is predicted from
    the end of the training text. ``discount=None`` chooses it on the training part by
    cross-fitting (:func:`choose_discount`).

    Returns ``{"order", "discount", "discount_chosen" (whether it was), "vocab_size",
    "train_chars", "val_chars", "loss" (nats/char), "bpc" (loss / ln 2), "perplexity"
    (exp loss), "unseen_chars" (held-out characters never seen in training, counted with
    repeats), "unseen_distinct"}``.
    """
    vocab = vocab if vocab is not None else Vocab.from_text(text)
    cut = split_point(len(text), val_fraction)
    train, val = text[:cut], text[cut:]
    if not train:
        raise CharLSTMError("the training part is empty (the corpus is too short)")
    if not val:
        raise CharLSTMError("the held-out part is empty: use a val fraction > 0 or a longer text")
    chosen = discount is None
    if discount is None:
        discount = choose_discount(train, vocab, order)
    model = KneserNeyLM(order, discount).fit(train, vocab)
    nll, count = model.score(val, history=train)
    loss = nll / count
    seen = set(train)
    unseen = [ch for ch in val if ch not in seen]
    return {
        "order": order,
        "discount": discount,
        "discount_chosen": chosen,
        "vocab_size": len(vocab),
        "train_chars": len(train),
        "val_chars": count,
        "loss": loss,
        "bpc": loss / math.log(2),
        "perplexity": math.exp(loss),
        "unseen_chars": len(unseen),
        "unseen_distinct": len(set(unseen)),
    }

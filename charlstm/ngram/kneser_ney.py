"""Interpolated Kneser-Ney character n-gram model: the held-out yardstick.

A character n-gram model predicts the next character ``w`` from the ``order - 1``
characters before it (its *context* ``h``). This module implements interpolated
Kneser-Ney smoothing as in Chen & Goodman (1998), "An Empirical Study of Smoothing
Techniques for Language Modeling", section 2.7, with one absolute discount ``D`` for
every order. The counts are NumPy integer arrays (see *Counting* below), so memory grows
with the number of distinct n-grams, never with Python objects per string; scoring looks
up only the terms needed for the character that actually comes next.

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

Counting. Every distinct string of length ``m`` in the training text gets an id, built
length by length: the empty string is id 0, and the ``m``-gram ``g + w`` (an
``(m - 1)``-gram ``g`` and a character index ``w``) has the key ``id(g) * V + w``; the
sorted unique keys of length ``m`` (``np.unique``) are ``keys[m]`` and an ``m``-gram's id is
its rank there (``np.searchsorted``), which is also its rank in vocabulary order. The
prefix of the ``m``-gram with key ``K`` is ``K // V``, so the strings sharing a context are
one contiguous run of ``keys[m]``. ``a_k`` is an integer array over the ``(k + 1)``-gram
ids, ``T_k`` and ``N_k`` are arrays over the ``k``-gram ids (``np.bincount`` by prefix).
A fit holds a few integer arrays of the text's length at a time and keeps about
``8 * order`` bytes per training character (docs/benchmarks.md has the measurements).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import numpy as np

from charlstm.data.corpus import Vocab, show_chars, split_point
from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError

#: The longest training text :meth:`KneserNeyLM.fit` accepts. Counting peaks at about
#: 100 bytes per training character for a 5-gram (tang_poems' 4.04 M characters: 370 MB
#: above the interpreter's own, docs/benchmarks.md), so this bound keeps a fit to about 2 GB.
MAX_NGRAM_CHARS = 20_000_000
#: The most training text a checkpoint may embed for ``--ngram-mix`` (a few MB of UTF-8).
MAX_EMBEDDED_NGRAM_CHARS = 2_000_000
#: Cells (rows x vocabulary) of :meth:`KneserNeyLM.sparse_distributions`'s dense work
#: arrays at a time: this bounds its memory (about 10 bytes per cell per level).
SPARSE_CELLS = 1 << 20


def check_ngram_chars(num_chars: int, limit: int = MAX_NGRAM_CHARS, what: str = "n-gram") -> None:
    """Raise ``CharLSTMError`` naming the limit when ``num_chars`` exceeds it."""
    if num_chars > limit:
        raise CharLSTMError(
            f"the {what} model is limited to {limit:,} training characters "
            f"(charlstm.ngram.kneser_ney.MAX_NGRAM_CHARS) and this text has {num_chars:,}; "
            "fit it on a shorter text (--max-chars)"
        )


def _unique(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` for non-negative int64 ``values``.

    When each value and its position fit in 63 bits together, one ``np.sort`` of
    ``value << bits | position`` replaces ``np.unique``'s ``argsort``, several times faster.
    """
    if not len(values):
        return values.copy(), np.zeros(0, dtype=np.int64)
    bits = max(1, (len(values) - 1).bit_length())
    if int(values.max()) >> (63 - bits):
        unique, inverse = np.unique(values, return_inverse=True)
        return unique, inverse.reshape(-1)
    packed = np.sort((values << bits) | np.arange(len(values)))
    ordered = packed >> bits
    new = np.empty(len(values), dtype=bool)
    new[0], new[1:] = True, ordered[1:] != ordered[:-1]
    inverse = np.empty(len(values), dtype=np.int64)
    inverse[packed & ((1 << bits) - 1)] = np.cumsum(new) - 1
    return ordered[new], inverse


def _ranges(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(r, p)`` with ``low[r] <= p < high[r]``, as two flat arrays, row by row."""
    lengths = high - low
    rows = np.repeat(np.arange(len(low)), lengths)
    offsets = np.cumsum(lengths) - lengths  # where row r starts in the flat arrays
    return rows, np.arange(int(lengths.sum())) + np.repeat(low - offsets, lengths)


class KneserNeyLM:
    """Interpolated Kneser-Ney character n-gram model (Chen & Goodman), one discount ``D``.

    ``order`` is ``n``: a character is predicted from the ``n - 1`` characters before it.
    Call :meth:`fit` on the training text, then :meth:`score` (fast, whole text) or
    :meth:`log_prob` / :meth:`distribution` (one context).
    """

    def __init__(self, order: int, discount: float = 0.75) -> None:
        if not isinstance(order, int) or order < 1:
            raise SettingError(
                f"{{order}} must be a positive integer, not {order!r}", arguments=("order",)
            )
        if not 0.0 < discount <= 1.0:
            raise SettingError(
                f"{{discount}} must be in (0, 1], not {discount}", arguments=("discount",)
            )
        self.order = order
        self.discount = float(discount)
        self.vocab: Vocab | None = None
        # keys[m] (m = 0 .. order): sorted keys id(prefix) * V + w of the distinct m-grams.
        # Per level k (context length 0 .. order - 1):
        #   counts[k][id of h + w] = a_k(h w)   (raw counts at k = order-1, continuation below)
        #   totals[k][id of h]     = T_k(h),   types[k][id of h] = N_k(h)
        self.keys: list[np.ndarray] = []
        self.counts: list[np.ndarray] = []
        self.totals: list[np.ndarray] = []
        self.types: list[np.ndarray] = []
        self._followers_cache: tuple[float, list] | None = None

    # ------------------------------------------------------------------ fitting

    def fit(self, text: str, vocab: Vocab) -> KneserNeyLM:
        """Count n-grams of ``text`` (the training text only) and return ``self``.

        Every character of ``text`` must be in ``vocab``; ``vocab`` may hold more
        characters (they get probability through the uniform lowest level).
        """
        self.vocab = vocab
        self._codes, self._code_index = self._code_table(vocab)
        chars = self._encode(text)
        if np.any(chars < 0):
            raise CharLSTMError(
                "training text has characters not in the vocabulary: "
                f"{show_chars(vocab.missing(text))}"
            )
        if not text:
            raise CharLSTMError("cannot fit an n-gram model on an empty text")
        check_ngram_chars(len(text))
        size, length = len(vocab), len(chars)
        keys = [np.zeros(1, dtype=np.int64)]  # the empty string, id 0
        counts: list[np.ndarray] = []
        ids = np.zeros(length + 1, dtype=np.int64)  # id of the 0-gram starting at each i
        for m in range(1, self.order + 1):
            starts = max(length - m + 1, 0)  # m-grams in the text
            unique, longer = _unique(ids[:starts] * size + chars[m - 1 :])
            keys.append(unique)
            if m >= 2:
                # a_{m-2}(g) = N1+(• g): the distinct m-grams that end in the (m-1)-gram g
                suffix = np.empty(len(unique), dtype=np.int64)
                suffix[longer] = ids[1 : starts + 1]
                counts.append(np.bincount(suffix, minlength=len(keys[m - 1])).astype(np.int32))
            ids = longer
        counts.append(np.bincount(ids, minlength=len(keys[-1])).astype(np.int32))  # c(h w)
        self.keys, self.counts = keys, counts
        self.totals, self.types = [], []
        for k, count in enumerate(counts):
            prefix = keys[k + 1] // size
            width = len(keys[k])
            self.totals.append(np.bincount(prefix, count, width).astype(np.int32))
            self.types.append(np.bincount(prefix, count > 0, width).astype(np.int32))
        self._followers_cache = None
        return self

    def _check_fitted(self) -> Vocab:
        if self.vocab is None:
            raise CharLSTMError("the n-gram model is not fitted yet (call fit first)")
        return self.vocab

    # ------------------------------------------------------------------ ids

    @staticmethod
    def _code_table(vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
        """The vocabulary's code points sorted, and the index of each."""
        codes = np.array([ord(ch) for ch in vocab.idx_to_char], dtype=np.int64)
        order = np.argsort(codes)
        return codes[order], order

    def _encode(self, text: str) -> np.ndarray:
        """``(len(text),)`` int64 vocabulary indices, -1 for a character not in it."""
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        if not len(self._codes):
            return np.full(len(codes), -1, dtype=np.int64)
        where = np.minimum(np.searchsorted(self._codes, codes), len(self._codes) - 1)
        return np.where(self._codes[where] == codes, self._code_index[where], -1)

    def _extend(self, m: int, prefix: np.ndarray, chars: np.ndarray) -> np.ndarray:
        """Ids of the m-grams ``prefix + chars`` (element-wise; ``prefix`` are ids of
        (m-1)-grams), -1 where either part is -1 or the m-gram never occurs."""
        keys = self.keys[m]
        query = prefix * len(self.vocab) + chars  # type: ignore[arg-type]
        if not len(keys):
            return np.full(query.shape, -1, dtype=np.int64)
        where = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
        found = (keys[where] == query) & (prefix >= 0) & (chars >= 0)
        return np.where(found, where, -1)

    def _gram_ids(self, chars: np.ndarray, longest: int) -> list[np.ndarray]:
        """``ids[m][j]``: the id of ``chars[j : j + m]`` (-1 if unseen or past the end),
        ``m <= longest``; every array has ``len(chars) + 1`` entries."""
        ids = [np.zeros(len(chars) + 1, dtype=np.int64)]
        for m in range(1, longest + 1):
            starts = max(len(chars) - m + 1, 0)
            grams = np.full(len(chars) + 1, -1, dtype=np.int64)  # the same length at every m
            grams[:starts] = self._extend(m, ids[-1][:starts], chars[m - 1 :])
            ids.append(grams)
        return ids

    def _context_ids(self, chars: np.ndarray, positions: np.ndarray) -> list[np.ndarray]:
        """``ctx[k][r]``: the id of the ``k`` characters before ``chars[positions[r]]``
        (-1 where fewer than ``k`` precede it or they never occur), ``k < order``."""
        ids = self._gram_ids(chars, self.order - 1)
        out = []
        for k, ids_k in enumerate(ids):
            start = positions - k
            out.append(np.where(start >= 0, ids_k[np.maximum(start, 0)], -1))
        return out

    def _lookup(self, table: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """``table[ids]``, 0 where ``ids`` is -1."""
        return np.where(ids >= 0, table[np.maximum(ids, 0)], 0)

    # ------------------------------------------------------------------ probabilities

    def _probs(self, contexts: list[np.ndarray], grams: list[np.ndarray]) -> np.ndarray:
        """``P(w | h)`` element-wise, going up from the uniform distribution one level at a
        time: ``contexts[k]`` ids of the last ``k`` characters of ``h``, ``grams[k]`` ids of
        those followed by ``w`` (-1: never seen), for every level ``k``."""
        prob = np.full(np.broadcast(contexts[0], grams[0]).shape, 1.0 / len(self.vocab))  # type: ignore[arg-type]
        d = self.discount
        for k in range(self.order):
            total = self._lookup(self.totals[k], contexts[k])
            seen = total > 0  # elsewhere an unseen context: P_k = P_{k-1}
            count = self._lookup(self.counts[k], grams[k])
            types = self._lookup(self.types[k], contexts[k])
            level = (np.maximum(count - d, 0.0) + d * types * prob) / np.where(seen, total, 1)
            prob = np.where(seen, level, prob)
        return prob

    def _text_probs(self, chars: np.ndarray, start: int) -> np.ndarray:
        """``P(chars[i] | the order - 1 characters before it)`` for ``start <= i``."""
        positions = np.arange(start, len(chars))
        ids = self._gram_ids(chars, self.order)
        contexts, grams = [], []
        for k in range(self.order):
            first = positions - k  # where the context of length k starts
            valid = first >= 0
            contexts.append(np.where(valid, ids[k][np.maximum(first, 0)], -1))
            grams.append(np.where(valid, ids[k + 1][np.maximum(first, 0)], -1))
        return self._probs(contexts, grams)

    def log_prob(self, context: str, char: str) -> float:
        """Natural log of ``P(char | context)``; only the last ``order - 1`` chars count."""
        vocab = self._check_fitted()
        if char not in vocab:
            raise CharLSTMError(f"character not in the vocabulary: {char!r}")
        chars = self._encode(self._context(context) + char)
        return math.log(self._text_probs(chars, len(chars) - 1)[0])

    def distribution(self, context: str) -> np.ndarray:
        """``(V,)`` float64 array: ``P(w | context)`` for every ``w`` in vocabulary order,
        computed level by level for every ``w`` (the direct form of the definition)."""
        vocab = self._check_fitted()
        chars = self._encode(self._context(context))
        width = len(chars)
        every = np.arange(len(vocab))
        contexts = [c[0] for c in self._context_ids(chars, np.array([width]))]
        grams = [self._extend(k + 1, np.full(len(vocab), c), every) for k, c in enumerate(contexts)]
        return self._probs(contexts, grams)

    def _context(self, text: str) -> str:
        return text[max(0, len(text) - self.order + 1) :]

    # ------------------------------------------------------------------ whole distributions

    def base_distribution(self) -> np.ndarray:
        """``(V,)`` float64: ``P_0(w)``, the unigram level every context backs off to."""
        vocab = self._check_fitted()
        d, total = self.discount, int(self.totals[0][0])
        uniform = np.full(len(vocab), 1.0 / len(vocab))
        if not total:
            return uniform
        counts = np.zeros(len(vocab))
        counts[self.keys[1]] = np.maximum(self.counts[0] - d, 0.0)  # 1-gram key = w
        return counts / total + d * int(self.types[0][0]) / total * uniform

    def _followers(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per level ``k >= 1``: ``(offsets, chars, discounted)``: the characters ``w`` seen
        after the context with id ``p`` are ``chars[offsets[p] : offsets[p + 1]]``, with
        ``max(a_k(h w) - D, 0)`` in ``discounted``. Built on first use and kept (for the
        discount it was built with)."""
        vocab = self._check_fitted()
        cached = self._followers_cache
        if cached is not None and cached[0] == self.discount:
            return cached[1]
        size = len(vocab)
        levels = [(np.zeros(2, dtype=np.int64), np.zeros(0, np.int64), np.zeros(0))]
        for k in range(1, self.order):
            seen = self.counts[k] > 0
            keys = self.keys[k + 1][seen]
            offsets = np.searchsorted(keys // size, np.arange(len(self.keys[k]) + 1))
            discounted = np.maximum(self.counts[k][seen] - self.discount, 0.0)
            levels.append((offsets, keys % size, discounted))
        self._followers_cache = (self.discount, levels)
        return levels

    def _additions(
        self, contexts: list[np.ndarray]
    ) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], np.ndarray]:
        """``P(w | h_r) = scale[r] * P_0(w) + (what the levels above add to w)``.

        ``contexts[k]`` (R,) are the ids of the last ``k`` characters of each context. Every
        level above the unigram adds probability to the characters seen after its part of
        the context; ``scale`` is the product of the backoff weights. Returns, from the top
        level down, ``(rows, chars, mass)`` triples (each ``(row, char)`` once per level)
        and ``scale`` (R,).
        """
        followers = self._followers()
        scale = np.ones(len(contexts[0]))  # product of the backoff weights of the levels above
        added = []
        for k in range(self.order - 1, 0, -1):
            total = self._lookup(self.totals[k], contexts[k])
            seen = np.flatnonzero(total > 0)
            offsets, chars, discounted = followers[k]
            context = contexts[k][seen]
            rows, flat = _ranges(offsets[context], offsets[context + 1])
            rows = seen[rows]
            added.append((rows, chars[flat], scale[rows] * discounted[flat] / total[rows]))
            types = self._lookup(self.types[k], contexts[k])
            backoff = self.discount * types / np.where(total > 0, total, 1)
            scale = np.where(total > 0, scale * backoff, scale)
        return added, scale

    def _window_contexts(self, contexts: list[str]) -> list[np.ndarray]:
        """Context ids (see :meth:`_context_ids`) of each string's last ``order - 1``
        characters, each string left-padded to that width with -1."""
        width = self.order - 1
        shown = [self._context(context) for context in contexts]
        lengths = np.array([len(context) for context in shown], dtype=np.int64)
        matrix = np.full((len(contexts), width + 1), -1, dtype=np.int64)
        rows = np.repeat(np.arange(len(contexts)), lengths)
        columns = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - width, lengths)
        matrix[rows, columns] = self._encode("".join(shown))
        # the last column is the predicted character's place: its context is the row
        positions = np.arange(len(contexts)) * (width + 1) + width
        return self._context_ids(matrix.reshape(-1), positions)

    def distributions(self, contexts: list[str]) -> np.ndarray:
        """``(R, V)`` float64: ``P(w | contexts[r])`` for every ``w``, one row per context.

        Built from the compact form (a scaled unigram level plus the few characters seen
        after each context), for all rows at once.
        """
        vocab = self._check_fitted()
        added, scale = self._additions(self._window_contexts(contexts))
        mass = np.zeros((len(contexts), len(vocab)))
        for rows, chars, values in added:
            mass[rows, chars] += values
        return scale[:, None] * self.base_distribution() + mass

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
        ids = np.zeros((stop - start, top), dtype=np.int64)
        values = np.zeros((stop - start, top))
        width = self.order - 1
        step = max(1, SPARSE_CELLS // len(vocab))
        for low in range(start, stop, step):
            high = min(stop, low + step)
            first = max(0, low - width)
            chars = self._encode(text[first:high])
            added, _ = self._additions(
                self._context_ids(chars, np.arange(low - first, high - first))
            )
            rows = slice(low - start, high - start)
            self._keep_top(added, top, ids[rows], values[rows])
        return 1.0 - values.sum(axis=1), ids, values

    def _keep_top(self, added: list, top: int, ids: np.ndarray, values: np.ndarray) -> None:
        """Sum the levels' additions into a dense (R, V) work array and write each row's
        characters (those any level added to, in vocabulary order, or the ``top`` largest
        when there are more) into ``ids`` (R, top) and ``values`` (R, top)."""
        mass = np.zeros((len(ids), len(self.vocab)))  # type: ignore[arg-type]
        touched = np.zeros(mass.shape, dtype=bool)
        for rows, chars, extra in added:  # from the top level down, as the definition adds
            mass[rows, chars] += extra
            touched[rows, chars] = True
        per_row = touched.sum(axis=1)
        crowded = per_row > top
        fits = np.where(crowded, 0, per_row)
        rows, chars = np.nonzero(touched & ~crowded[:, None])  # row by row, in vocabulary order
        rank = np.arange(len(rows)) - np.repeat(np.cumsum(fits) - fits, fits)
        ids[rows, rank], values[rows, rank] = chars, mass[rows, chars]
        many = np.flatnonzero(crowded)
        if len(many):
            candidates = np.where(touched[many], mass[many], -1.0)
            keep = np.argpartition(candidates, -top, axis=1)[:, -top:]
            ids[many], values[many] = keep, np.take_along_axis(mass[many], keep, axis=1)

    # ------------------------------------------------------------------ scoring

    def score(self, text: str, history: str = "") -> tuple[float, int]:
        """Return ``(total negative log-likelihood in nats, number of characters scored)``.

        Character ``text[i]`` is predicted from the ``order - 1`` characters before it,
        which may reach back into ``history`` (e.g. the training text just before a
        held-out part). Near the start, with fewer characters available, the context is
        shorter. Mean loss in nats/char is ``nll / count``; perplexity is ``exp`` of it.
        """
        return -math.fsum(self.log_probs(text, history)), len(text)

    def log_probs(self, text: str, history: str = "") -> np.ndarray:
        """``log P(text[i] | the order - 1 characters before it)`` (len(text),) float64 in
        nats; the context of the first characters reaches back into ``history``."""
        vocab = self._check_fitted()
        chars = self._encode(text)
        if np.any(chars < 0):
            raise CharLSTMError(
                f"characters not in the vocabulary: {show_chars(vocab.missing(text))}"
            )
        before = self._encode(self._context(history))
        return np.log(self._text_probs(np.concatenate([before, chars]), len(before)))


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
    LSTM uses); the split is :func:`charlstm.data.corpus.split_point`; the held-out part is
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

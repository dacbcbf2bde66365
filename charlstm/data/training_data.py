"""What a run trains on: one type, whether the corpus is in memory or memory-mapped.

:class:`TrainingData` holds the vocabulary, the training and held-out indices (``(n,)``
int64 tensors of a :class:`~charlstm.data.corpus.Corpus` read into memory, or the
``np.memmap`` arrays of a :class:`~charlstm.data.prepared.PreparedCorpus`; the batchers of
:mod:`charlstm.data.batching` read both), the text's SHA-256, the settings that read it and
its split, and the way back to the training text (the n-gram features fit on it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from charlstm.config import DataConfig
from charlstm.data.batching import Indices
from charlstm.data.corpus import Corpus, Vocab, split_point
from charlstm.data.prepared import PreparedCorpus

#: Characters counted at a time (a memmap's counts never need the whole text in memory).
COUNT_CHUNK = 1 << 24


@dataclass(frozen=True)
class TrainingData:
    """A corpus split for training: ``train`` then ``val``, the last ``val_fraction``."""

    vocab: Vocab
    train: Indices  # (n_train,)
    val: Indices  # (n_val,)
    fingerprint: str  # SHA-256 of the whole text (Corpus.fingerprint)
    config: DataConfig  # how the text was read and normalised
    val_fraction: float
    source: Corpus | PreparedCorpus

    @classmethod
    def in_memory(cls, corpus: Corpus, config: DataConfig, val_fraction: float) -> TrainingData:
        cut = split_point(len(corpus), val_fraction)
        return cls(
            corpus.vocab,
            corpus.indices[:cut],
            corpus.indices[cut:],
            corpus.fingerprint(),
            config,
            val_fraction,
            corpus,
        )

    @classmethod
    def prepared(cls, prepared: PreparedCorpus, path: str) -> TrainingData:
        """A prepared corpus; its normalisation and split are its own (``path``: the one the
        run names it by)."""
        return cls(
            prepared.vocab,
            prepared.train,
            prepared.val,
            prepared.sha256,
            replace(prepared.data, path=path),
            prepared.val_fraction,
            prepared,
        )

    def __len__(self) -> int:
        return len(self.train) + len(self.val)

    def train_text(self, limit: int | None = None) -> str:
        """The training part as text, or its first ``limit`` characters."""
        stop = len(self.train) if limit is None else min(limit, len(self.train))
        if isinstance(self.source, PreparedCorpus):
            return self.source.text(0, stop)
        return self.source.text[:stop]

    def counts(self) -> np.ndarray:
        """``(V,)`` int64: how often each character occurs in the training part."""
        if isinstance(self.source, PreparedCorpus):  # counted by prepare: nothing to read
            return self.source.train_counts
        total = np.zeros(len(self.vocab), dtype=np.int64)
        for start in range(0, len(self.train), COUNT_CHUNK):
            chunk = np.asarray(self.train[start : start + COUNT_CHUNK])
            total += np.bincount(chunk, minlength=len(self.vocab))
        return total

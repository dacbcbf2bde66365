"""Text in, indices out: the corpus, prepared corpora, and the batches a run trains on.

- :mod:`~charlstm.data.corpus`: file -> text -> indices, and the :class:`Vocab`.
- :mod:`~charlstm.data.prepared`: a corpus streamed once into ``np.memmap`` files
  (``charlstm prepare``).
- :mod:`~charlstm.data.batching`: the corpus as ``(N, -1)`` columns and its consecutive windows.

May import: the core modules (:mod:`charlstm.errors`, :mod:`charlstm.config`). Nothing else in
charlstm: every other folder may import this one.
"""

"""Text in, indices out: the corpus, prepared corpora, and the batches a run trains on.

- :mod:`~charlstm.data.reader`: the one reader: a corpus file decoded and normalised, streamed.
- :mod:`~charlstm.data.corpus`: text -> indices in memory, and the :class:`Vocab`.
- :mod:`~charlstm.data.prepared`: a corpus streamed once into ``np.memmap`` files
  (``charlstm prepare``).
- :mod:`~charlstm.data.batching`: the corpus as ``(N, -1)`` columns and its consecutive windows.
- :mod:`~charlstm.data.training_data`: what a run trains on, in memory or memory-mapped.
- :mod:`~charlstm.data.demo`: the demo corpus, package data (``demo_lyrics.zip`` beside it).

May import: the core modules (:mod:`charlstm.errors`, :mod:`charlstm.config`). Nothing else in
charlstm: every other folder may import this one.
"""

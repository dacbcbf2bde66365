"""Using a trained model: one generation engine under ``generate``, verse and ``serve``.

- :mod:`~charlstm.generation.settings`: what ``charlstm generate`` and ``eval`` take (no
  torch: the CLI builds its options from it).
- :mod:`~charlstm.generation.engine`: the frozen ``Request``, the groups of rows that write
  it (running text here, poems in :mod:`~charlstm.generation.verse.decoder`), and the
  ``Engine`` that steps every group's rows as one batch.
- :mod:`~charlstm.generation.rules`: the one ``select`` interface of everything held per row,
  and the one list of logits rules (penalties, temperature, a form's rules, top-k, top-p).
- :mod:`~charlstm.generation.decoding`: the draw (uniform numbers, inverse CDF), seeds.
- :mod:`~charlstm.generation.streams`: N sequences read side by side: the model's own, a
  copy per row that learns (dynamic evaluation), and either mixed with the n-gram or cache.
- :mod:`~charlstm.generation.sample`: ``generate()`` by keywords, and every check of a
  request that needs the model, made once.
- :mod:`~charlstm.generation.adaptation`: the continuous cache and dynamic evaluation.

Scoring a text (per-character loss and perplexity) is :mod:`charlstm.eval`, which imports
this package; this package does not import it.

May import: the core modules, :mod:`charlstm.data`, :mod:`charlstm.ngram` and
:mod:`charlstm.storage`. Never :mod:`charlstm.eval`, :mod:`charlstm.training` or
:mod:`charlstm.cli`: generating text does not load the training stack.
"""

"""Using a trained model: its settings, decoding rules, streams, sampling, adaptation.

- :mod:`~charlstm.generation.settings`: what ``charlstm generate`` and ``eval`` take (no
  torch: the CLI builds its options from it).
- :mod:`~charlstm.generation.decoding`: the rules that turn logits into a draw, in order.
- :mod:`~charlstm.generation.streams`: N sequences read side by side: the model's own, a
  copy per row that learns (dynamic evaluation), and either mixed with the n-gram or cache.
- :mod:`~charlstm.generation.sample`: warm the state on the prefixes, then write one
  character at a time.
- :mod:`~charlstm.generation.adaptation`: the continuous cache and dynamic evaluation.

Scoring a text (per-character loss and perplexity) is :mod:`charlstm.eval`, which imports
this package; this package does not import it.

May import: the core modules, :mod:`charlstm.data`, :mod:`charlstm.ngram` and
:mod:`charlstm.storage`. Never :mod:`charlstm.eval`, :mod:`charlstm.training` or
:mod:`charlstm.cli`: generating text does not load the training stack.
"""

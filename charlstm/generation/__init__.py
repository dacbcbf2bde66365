"""Using a trained model: decoding rules, sampling, evaluation-time adaptation, scoring.

- :mod:`~charlstm.generation.decoding`: the rules that turn logits into a draw, in order.
- :mod:`~charlstm.generation.sample`: warm the state on the prefixes, then write one
  character at a time.
- :mod:`~charlstm.generation.adaptation`: the cache and dynamic evaluation, as streams of state.
- :mod:`~charlstm.generation.scoring`: per-character loss and perplexity of a text.

May import: the core modules, :mod:`charlstm.data`, :mod:`charlstm.ngram` and
:mod:`charlstm.storage`. Never :mod:`charlstm.training` or :mod:`charlstm.cli`: generating text
does not load the training stack.
"""

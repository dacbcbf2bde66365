"""Evaluation: how well a trained model predicts a text.

- :mod:`~charlstm.eval.scoring`: per-character loss, bits per character and perplexity of a
  text (held-out, in bounded memory, across torchrun processes), adaptive scoring with the
  continuous cache and dynamic evaluation, and the log-probabilities of a prompt.

May import: the core modules but :mod:`charlstm.api` (which imports this one),
:mod:`charlstm.data`, :mod:`charlstm.ngram` and :mod:`charlstm.generation` (the adaptation
it scores with, and its settings). Never :mod:`charlstm.training`, :mod:`charlstm.serve` or
:mod:`charlstm.cli`: scoring across torchrun processes takes the training side's world as a
protocol, :class:`~charlstm.eval.scoring.Ranks`. :mod:`charlstm.api`,
:mod:`charlstm.training` and :mod:`charlstm.serve` import it; :mod:`charlstm.generation`
does not.
"""

"""Kneser-Ney character n-grams: the baseline, the mixture with the LSTM, and the teacher.

- :mod:`~charlstm.ngram.kneser_ney`: the interpolated Kneser-Ney model (NumPy counts).
- :mod:`~charlstm.ngram.mixture`: the LSTM's distribution interpolated with an n-gram's.
- :mod:`~charlstm.ngram.teacher`: a cross-fitted n-gram as a distillation teacher in training.

May import: the core modules and :mod:`charlstm.data`.
"""

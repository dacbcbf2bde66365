"""Training: set a run up, then run the loop.

- :mod:`~charlstm.training.start`: the run modes (new, resume, fine-tune) and their set-up.
- :mod:`~charlstm.training.loop`: the training loop.
- :mod:`~charlstm.training.distributed`: the torchrun world (gloo or NCCL), one process or many.
- :mod:`~charlstm.training.progress`: the progress bar, or a plain line when not on a terminal.

May import every folder but :mod:`charlstm.cli`.
"""

"""Training: set a run up, then run the loop.

- :mod:`~charlstm.training.start`: the run modes (new, resume, fine-tune) and their settings.
- :mod:`~charlstm.training.setup`: what the loop needs, built before it: the device, the data
  (one way in for every mode), the batches, model, DDP, optimizer, weight average, a resume.
- :mod:`~charlstm.training.loop`: the :class:`~charlstm.training.loop.Trainer` and its loop.
- :mod:`~charlstm.training.parts`: the loop's small parts (progress, schedule, stop rules,
  weight average, loss).
- :mod:`~charlstm.training.distributed`: the torchrun world (gloo or NCCL), one process or many.
- :mod:`~charlstm.training.progress`: the progress bar, or a plain line when not on a terminal.

May import every folder but :mod:`charlstm.cli`.
"""

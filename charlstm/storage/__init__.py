"""What a run leaves on disk: checkpoints, run directories, locks, and writes that cannot tear.

- :mod:`~charlstm.storage.checkpoint`: ``save``/``load`` of one versioned checkpoint file
  (``load_with_model``: the model built once, its weights checked against it).
- :mod:`~charlstm.storage.runs`: run directories (``runs/NAME``), their config, vocabulary
  and metrics.
- :mod:`~charlstm.storage.board`: ``RUN/tensorboard/``, the run's curves for TensorBoard
  (``--tensorboard``), rewound with the logs on resume.
- :mod:`~charlstm.storage.locking`: one trainer per run directory.
- :mod:`~charlstm.storage.safe_io`: atomic writes, and a full disk as a one-line error.
- :mod:`~charlstm.storage.convert`: rewrite a checkpoint for the other backend.

May import: the core modules and :mod:`charlstm.data`. Never ``training``,
``generation`` or ``cli``.
"""

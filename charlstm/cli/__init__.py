"""The ``charlstm`` command line: the only place that speaks in options and exit codes.

- :mod:`~charlstm.cli.app`: the entry point; imports every command module.
- :mod:`~charlstm.cli.common`: the one typer ``app``, errors as one line, shared options.
- :mod:`~charlstm.cli.train`: ``train`` and ``prepare``.
- :mod:`~charlstm.cli.generate`: ``generate`` and ``eval``.
- :mod:`~charlstm.cli.checkpoints`: ``convert``, ``info`` and ``plot``.
- :mod:`~charlstm.cli.options`: typer options built from the settings dataclasses' fields.
- :mod:`~charlstm.cli.display`: how samples and tables look on a terminal.
- :mod:`~charlstm.cli.report`: what ``charlstm info`` and ``charlstm plot`` show.

May import everything; nothing imports it. A command module imports torch-using code only
inside its commands, so that every ``--help`` prints without importing torch.
"""

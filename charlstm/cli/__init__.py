"""The ``charlstm`` command line: the only place that speaks in options and exit codes.

- :mod:`~charlstm.cli.app`: the commands.
- :mod:`~charlstm.cli.options`: typer options built from the config dataclasses' fields.
- :mod:`~charlstm.cli.display`: how samples and tables look on a terminal.
- :mod:`~charlstm.cli.report`: ``charlstm info`` and ``charlstm plot``.

May import everything; nothing imports it.
"""

"""``charlstm serve``: trained models behind HTTP, many streams stepped as one batch.

- :mod:`~charlstm.serve.scheduler`: continuous batching, plain Python and torch, one worker
  thread; testable without HTTP.
- :mod:`~charlstm.serve.jobs`: a request as the scheduler sees it, its events, and the
  batch its rows step in.
- :mod:`~charlstm.serve.metrics`: the counts behind ``/metrics``, in Prometheus's format.
- :mod:`~charlstm.serve.settings`: the server's options, as config dataclasses.
- :mod:`~charlstm.serve.app`: the FastAPI app: ``/v1/completions`` (OpenAI-compatible),
  ``/health``, ``/v1/models``, ``/metrics`` and the page (``page.html``) at ``/``.

May import: the core modules, :mod:`charlstm.api`, :mod:`charlstm.generation` and
:mod:`charlstm.data`. Never :mod:`charlstm.training` (models load through
:func:`charlstm.api.load_model`) or :mod:`charlstm.cli`.
"""

"""``charlstm serve``: trained models behind HTTP, many streams stepped as one batch.

- :mod:`~charlstm.serve.scheduler`: continuous batching, plain Python and torch, one worker
  thread; testable without HTTP.
- :mod:`~charlstm.serve.jobs`: a request as the scheduler sees it, its events, and the
  batch its rows step in.
- :mod:`~charlstm.serve.metrics`: the counts behind ``/metrics``, in Prometheus's format.
- :mod:`~charlstm.serve.settings`: the server's options, as config dataclasses.
- :mod:`~charlstm.serve.app`: the FastAPI app (its routers, its error handlers, the body
  limit) and :func:`~charlstm.serve.app.run_server`;
- :mod:`~charlstm.serve.routes`: one router per group: ``/v1/completions``,
  ``/v1/chat/completions`` (OpenAI-compatible), ``/tokenize`` and ``/detokenize``,
  ``/health`` / ``/v1/models`` / ``/metrics``, and the page (``page.html``) at ``/``;
- :mod:`~charlstm.serve.bodies`, :mod:`~charlstm.serve.runs`: the request bodies, and from
  a body to a job and its events back; :mod:`~charlstm.serve.state`: what the routes
  share (the API key check included); :mod:`~charlstm.serve.errors`: OpenAI's error
  shape and the handlers.

May import: the core modules, :mod:`charlstm.api`, :mod:`charlstm.generation`,
:mod:`charlstm.eval` (a prompt's log-probabilities) and :mod:`charlstm.data`. Never
:mod:`charlstm.training` (models load through :func:`charlstm.api.load_model`) or
:mod:`charlstm.cli`.
"""

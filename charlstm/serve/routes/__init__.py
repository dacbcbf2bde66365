"""The routes of ``charlstm serve``, one :class:`fastapi.APIRouter` per group:

- :mod:`.completions`: ``POST /v1/completions`` (OpenAI's completions);
- :mod:`.chat`: ``POST /v1/chat/completions`` (OpenAI's chat; the last user message is the prefix);
- :mod:`.tokenize`: ``POST /tokenize`` and ``/detokenize`` (llama.cpp's shapes);
- :mod:`.info`: ``GET /health``, ``/v1/models``, ``/metrics``;
- :mod:`.page`: ``GET /``, the page.
"""

from charlstm.serve.routes import chat, completions, info, page, tokenize

ROUTERS = [completions.router, chat.router, tokenize.router, info.router, page.router]

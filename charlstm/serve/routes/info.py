"""What the server says about itself: ``GET /health`` (503 while the models load and
while shutting down; always open), ``GET /v1/models`` (with the API key when there is
one) and ``GET /metrics`` (Prometheus's text format)."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse

from charlstm.api import LanguageModel
from charlstm.serve.bodies import OPTIONS
from charlstm.serve.errors import APIError, error_response
from charlstm.serve.metrics import Metrics, prometheus
from charlstm.serve.state import ServerState, require_key, server_state

router = APIRouter()


@router.get("/health")
async def health(state: ServerState = Depends(server_state)) -> Any:
    if state.load_error is not None:
        return error_response(503, f"the models did not load: {state.load_error}", "unavailable")
    if state.scheduler is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    if state.scheduler.error is not None:
        return error_response(503, "the scheduler stopped", "unavailable")
    if state.draining:
        return JSONResponse({"status": "shutting down"}, status_code=503)
    return {"status": "ok"}


@router.get("/v1/models", dependencies=[Depends(require_key)])
async def models(state: ServerState = Depends(server_state)) -> Any:
    if state.scheduler is None:
        raise APIError(503, "the models are loading", "unavailable")
    return {
        "object": "list",
        "data": [describe(name, model) for name, model in state.models.items()],
    }


@router.get("/metrics")
async def metrics(state: ServerState = Depends(server_state)) -> Any:
    scheduler = state.scheduler
    counts = scheduler.counts() if scheduler is not None else (0, 0, 0)
    return PlainTextResponse(
        prometheus(scheduler.metrics if scheduler else Metrics(), counts),
        media_type="text/plain; version=0.0.4",
    )


def describe(name: str, model: LanguageModel) -> dict[str, Any]:
    """A model as ``/v1/models`` lists it: OpenAI's fields, then what it is."""
    checkpoint = model.checkpoint
    config = checkpoint.model_config
    loss = checkpoint.best_val_loss
    return {
        "id": name,
        "object": "model",
        "created": int(checkpoint.path.stat().st_mtime) if checkpoint.path else 0,
        "owned_by": "charlstm",
        "checkpoint": str(checkpoint.path),
        "vocab_size": len(model.vocab),
        "corpus": checkpoint.data_config.path,
        "heldout_perplexity": math.exp(loss) if math.isfinite(loss) else None,
        "backend": config.backend,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_layers,
        "softmax": config.softmax,
        "predicts_with": model.describe(),
        "device": str(model.device),
        "options": OPTIONS,
    }

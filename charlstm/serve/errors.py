"""Errors over HTTP, in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``
(``code``: the HTTP status, as vLLM sends it; ``param``: the body field at fault, or null).

Routes raise; :func:`install` registers one handler per kind of error, once, for the whole
app: :class:`APIError` (what a route refuses itself), pydantic's validation errors, and
the library's own (:class:`~charlstm.fields.SettingError` speaks body names here, through
:func:`body_name`; the scheduler's :class:`~charlstm.serve.jobs.QueueFull`,
:class:`~charlstm.serve.jobs.Draining`, :class:`~charlstm.serve.jobs.UnknownModel`; any
other :class:`~charlstm.errors.CharLSTMError` is a bad request, with the CLI's message).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError
from charlstm.serve.bodies import body_name
from charlstm.serve.jobs import Draining, QueueFull, UnknownModel


def error_body(
    status: int, message: str, kind: str = "invalid_request_error", param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def error_response(
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(status, message, kind, param), status, headers=headers)


class APIError(Exception):
    """A request refused by a route: ``status``, one ``message`` line, OpenAI's ``kind``
    (``invalid_request_error``, ``not_found``, ``server_error``...), the body field at
    fault, headers (``Retry-After``)."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.param, self.headers = param, headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.kind, self.param, self.headers)


RETRY = {"Retry-After": "1"}


def install(app: FastAPI) -> None:
    """Register the handlers of every error a route may raise."""

    @app.exception_handler(APIError)
    async def refused(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        message, param = one_message(err.errors())
        return error_response(400, message, param=param)

    @app.exception_handler(QueueFull)
    async def overloaded(request: Request, err: QueueFull) -> JSONResponse:
        return error_response(503, str(err), "overloaded", headers=RETRY)

    @app.exception_handler(Draining)
    async def draining(request: Request, err: Draining) -> JSONResponse:
        return error_response(503, str(err), "unavailable", headers=RETRY)

    @app.exception_handler(UnknownModel)
    async def unknown_model(request: Request, err: UnknownModel) -> JSONResponse:
        return error_response(404, str(err), "not_found", param="model")

    @app.exception_handler(SettingError)
    async def bad_setting(request: Request, err: SettingError) -> JSONResponse:
        first = re.search(r"\{([a-z_.]+)\}", err.template)
        param = body_name(first.group(1)) if first else None
        return error_response(400, err.render(body_name), param=param)

    @app.exception_handler(CharLSTMError)
    async def bad_request(request: Request, err: CharLSTMError) -> JSONResponse:
        return error_response(400, str(err))


def one_message(errors: Any) -> tuple[str, str | None]:
    """Pydantic's first complaint as one line (``max_tokens: Input should be ...``), and
    the field it is about."""
    first = errors[0] if errors else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    param = where.split(".")[0] or None
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if first.get("type") == "model_attributes_type" and where == "":
        return "the request body must be a JSON object (Content-Type: application/json)", None
    if first.get("type") == "missing":
        return f"{where} is required", param
    message = first.get("msg", "invalid request")
    return (f"{where}: {message}" if where else message), param

"""Every failure as OpenAI's error body, ``{"error": {"message", "type", "param", "code"}}``, never a traceback.

OpenAI clients read that body to raise their own typed errors (``openai.BadRequestError`` ...), so
a client of this server sees our message where it would see OpenAI's.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ContextWindowError, EmphasisError, HeadSetError, PastaError, SteeringError

log = logging.getLogger("pasta_rag.server")


class APIError(Exception):
    """A request the server refuses, with the status and OpenAI error fields to answer with."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def from_core(error: PastaError) -> APIError:
    """The 400 for a core error: the core's message already says what was wrong and what to do."""
    if isinstance(error, ContextWindowError):
        return APIError(400, str(error), param="messages", code="context_length_exceeded")
    if isinstance(error, EmphasisError):
        return APIError(400, str(error), param="emphasis", code="emphasis_not_found")
    if isinstance(error, HeadSetError):
        return APIError(400, f"{error} Over this API: send pasta.heads ({{\"layer\": [heads]}} or a list of "
                        "layers), or start the server with --heads.", param="pasta.heads", code="invalid_head_set")
    if isinstance(error, SteeringError):
        return APIError(400, str(error), param="pasta", code="invalid_steering")
    return APIError(400, str(error))


def internal_error() -> APIError:
    return APIError(500, "The server failed to generate an answer; its log has the details.", type="server_error")


def _validation_error(errors: list[dict[str, Any]]) -> APIError:
    """Pydantic's first complaint, with the field it is about (``messages.0.role``) as ``param``."""
    first = errors[0]
    location = []
    for part in first.get("loc", ())[1:]:  # after "body"
        if _is_type_tag(str(part)):  # pydantic names the member of a union it tried: the field ends before it
            break
        location.append(str(part))
    param = ".".join(location) or None
    if first.get("type") == "json_invalid":
        return APIError(400, f"The request body is not valid JSON: {first.get('msg')}. Send a JSON object.",
                        code="invalid_json")
    if first.get("type") == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {param}. Remove it; this server does not "
                        "know that field.", param=param, code="unknown_parameter")
    if first.get("type") == "missing":
        return APIError(400, f"Missing required parameter: {param}.", param=param, code="missing_required_parameter")
    if param is None:
        return APIError(400, f"The request body must be a JSON object (Content-Type: application/json): "
                        f"{first.get('msg')}.", code="invalid_json")
    return APIError(400, f"Invalid value for {param}: {first.get('msg')}.", param=param, code="invalid_value")


def _is_type_tag(part: str) -> bool:
    return "[" in part or part in {"str", "int", "float", "bool"} or part.startswith("function-")


def install_handlers(app: FastAPI) -> None:
    """Answer every error, ours, FastAPI's and unexpected ones, in the OpenAI shape."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(PastaError)
    async def core_error(request: Request, error: PastaError) -> JSONResponse:
        return from_core(error).response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return _validation_error(list(error.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return APIError(error.status_code, f"{request.method} {request.url.path}: {error.detail}.", type=kind).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("Unexpected error on %s %s", request.method, request.url.path)
        return internal_error().response()

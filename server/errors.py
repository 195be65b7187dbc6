"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

Every failure path of the HTTP layer ends here: request validation (FastAPI's 422 becomes
400, as vLLM and SGLang do), our own `APIError`s, Starlette's HTTP errors (404 route,
405 method) and unexpected exceptions (500). Every error object also carries the request
id (`server/logs.py`), the key to the server's log lines about that request.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from latent_ops.choices import REWARD_TYPES
from server.logs import request_id

log = logging.getLogger("latentserve.http")

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowed",
    408: "RequestTimeout",
    413: "RequestTooLarge",
    415: "UnsupportedMediaType",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


# Union members that pydantic puts into error locations ("prompt.str"): not fields.
# Also the tags of discriminated unions ("latent.reward.webhook.url").
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "literal", *REWARD_TYPES}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}


def error_body(status: int, message: str, param: str | None = None) -> dict:
    """OpenAI's error object, plus the request id (matches the logs and `x-request-id`)."""
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "Error"),
            "param": param,
            "code": status,
            "request_id": request_id.get(),
        }
    }


class _ASCIIJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: an error message may quote client
    text, and escaped, no character (not even a lone surrogate) can fail to encode."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_response(status: int, message: str, param=None, headers=None) -> JSONResponse:
    body = error_body(status, message, param)
    return _ASCIIJSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    # A union field reports one error per member; our own checks (value_error, e.g. a
    # lone surrogate in prompt[1]) say more than "not a string" from the other member.
    err = next((e for e in errors if e.get("type") == "value_error"), errors[0])
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    # pydantic adds the union member's type name to the path ("str", "list[str]"); drop it
    loc = [p for p in loc if not any(c in p for c in "[]-") and p not in _TYPE_TAGS]
    param = ".".join(loc) or None
    if err.get("type") == "json_invalid":
        return f"malformed JSON body: {err.get('ctx', {}).get('error', err['msg'])}", None
    if err.get("type") == "missing" and not loc:
        return "request body is required", None
    where = f"{param}: " if param else ""
    return f"{where}{err['msg']}", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(400, message, param)

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        rid = request_id.get() or "-"
        log.exception("unhandled error")
        return error_response(500, f"internal error (request id {rid})")

"""Errors as JSON: every error response is ``{"error": {"type": ..., "message": ...}}`` (:class:`ErrorBody`,
built by :func:`error_body`; the auth gate and the body size limit answer with it too).

Our error tree maps onto statuses (InvalidInput 422, NotFound 404, BackendUnavailable 503 with
``Retry-After``, ConfigurationError 500 with a safe message: the details go to the log, not to the client).
FastAPI's own validation errors and HTTP errors (401, 403, 404 of an unknown route, 405 ...) get the same
shape (a 422 of request validation lists each problem in ``details``); anything else is a 500 that says only
that it happened.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from fabric.errors import (
    AppError,
    BackendUnavailable,
    ConfigurationError,
    InvalidInput,
    NotFound,
    PermanentError,
    TransientError,
)

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5

#: HTTP status -> error type for HTTP errors raised by FastAPI, Starlette or our routes.
HTTP_TYPES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "InvalidInput",
    429: "TooManyRequests",
}


class Problem(BaseModel):
    """One thing wrong with a request (422 of request validation)."""

    location: str = Field(description="where: body.priority, query.limit, path.workflow_id ...")
    message: str


class ErrorDetail(BaseModel):
    """What went wrong."""

    type: str = Field(
        description="the kind of error: Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge, "
        "InvalidInput, BackendUnavailable (or another transient error's name) ..."
    )
    message: str = Field(description="what is wrong, for a person")
    details: list[Problem] | None = Field(
        None, description="each problem of a request that failed validation (422 only; left out otherwise)"
    )


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


def error_body(error_type: str, message: str, details: list[Problem] | None = None) -> dict[str, Any]:
    """The JSON body of every error response, as :class:`ErrorBody` declares it (``details`` left out
    when None)."""
    body = ErrorBody(error=ErrorDetail(type=error_type, message=message, details=details))
    return body.model_dump(mode="json", exclude_none=True)


def error_response(
    status: int,
    error_type: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    details: list[Problem] | None = None,
) -> JSONResponse:
    """A response with :func:`error_body` and ``status``."""
    return JSONResponse(
        error_body(error_type, message, details), status_code=status, headers=dict(headers or {})
    )


def status_of(exc: AppError) -> int:
    """The HTTP status an error of our tree answers."""
    if isinstance(exc, InvalidInput):
        return 422
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, TransientError):
        return 503
    if isinstance(exc, PermanentError) and not isinstance(exc, ConfigurationError):
        return 422
    return 500


async def app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    status = status_of(exc)
    if isinstance(exc, ConfigurationError) or status == 500:
        # The message may name settings, hosts or paths: it belongs in the operator's log only.
        log.error("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return error_response(500, "ConfigurationError", "the server is misconfigured; see its log")
    if isinstance(exc, BackendUnavailable | TransientError):
        log.warning("%s %s: backend unavailable: %s", request.method, request.url.path, exc)
        return error_response(
            503, type(exc).__name__, str(exc), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        )
    return error_response(status, type(exc).__name__, str(exc))


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        Problem(location=_location(e.get("loc", ())), message=str(e.get("msg", "invalid")))
        for e in exc.errors()
    ]
    message = "; ".join(f"{p.location}: {p.message}" for p in problems) or "invalid request"
    return error_response(422, "InvalidInput", message, details=problems)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error_type = HTTP_TYPES.get(exc.status_code, "HTTPError")
    return error_response(exc.status_code, error_type, str(exc.detail), headers=exc.headers)


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path)
    return error_response(500, "InternalError", "the server failed to handle this request; see its log")


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(AppError, app_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)

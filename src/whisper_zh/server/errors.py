"""Errors answered in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, and the app's handlers
that turn every failure (validation, HTTP, audio, unexpected) into that shape."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from whisper_zh.errors import AudioError, AudioTooLongError, TruncatedAudioError
from whisper_zh.server.queue import QueueClosedError, QueueFullError

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class BodyError(StarletteHTTPException):
    """Raised from inside the request body's reader (too large, too slow): FastAPI re-raises HTTP exceptions
    from body parsing, and the handler below answers with the ApiError this carries."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.status, error.message)
        self.error = error


def too_large(limit: int) -> ApiError:
    return ApiError(
        413, f"upload too large: the limit is {limit / (1 << 20):.0f} MB", param="file", code="file_too_large"
    )


def queue_refused(exc: QueueFullError | QueueClosedError) -> ApiError:
    """The answer when the model queue admits nothing: full (429, with its Retry-After) or closing (503)."""
    if isinstance(exc, QueueFullError):
        return ApiError(429, str(exc), type_="requests", code="rate_limit_exceeded",
                        headers={"Retry-After": str(exc.retry_after)})
    return ApiError(503, str(exc), type_="server_error", code="shutting_down", headers={"Retry-After": "5"})


def audio_error(exc: AudioError) -> ApiError:
    """The answer to audio that cannot be used as sent."""
    if isinstance(exc, AudioTooLongError):
        return ApiError(413, str(exc), param="file", code="audio_too_long")
    if isinstance(exc, TruncatedAudioError):
        message = f"{exc}; send allow_truncated=true to transcribe the part that decoded"
        return ApiError(400, message, param="file", code="truncated_audio")
    return ApiError(400, str(exc), param="file", code="invalid_audio")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query")]
    param = loc[-1] if loc else None
    message = first.get("msg", "invalid request")
    if first.get("type") == "missing" and param:
        message = f"missing required parameter '{param}'"
    elif param:
        message = f"invalid '{param}': {message}"
    return ApiError(400, message, param=param).response()


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, BodyError):
        return exc.error.response()
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return ApiError(exc.status_code, str(exc.detail), code=code).response()


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error", exc_info=exc)
    return ApiError(500, f"internal error: {type(exc).__name__}", type_="server_error").response()

"""The API's front door: a pure-ASGI guard that decides before the body is read, and watches it while it is.

Every HTTP request must name this server in its ``Host`` (403 otherwise: DNS rebinding, see
:mod:`~whisper_zh.server.security`). For every request to ``/v1/`` it checks, in order, and answers at once without reading the body (so a refused
upload costs neither memory nor disk): ambiguous framing (``Content-Length`` with ``Transfer-Encoding``, a
request-smuggling risk behind a proxy: 400, for every path), the browser origin (403), the API key (401), the
declared size (413) (an address that sent too many wrong keys gets 429 first: :mod:`~whisper_zh.server.keys`), and for uploads whether the model queue is full (429) or closing (503) and whether another
upload may be read now (:class:`UploadGate`, 429).

An admitted upload is read through :class:`_BodyReader`: past the size limit it is 413; slower than the
configured minimum rate, or not complete by the deadline, it is 408 and its upload place is freed. The place is
also freed as soon as the whole body has arrived, so uploading and decoding are limited separately: slow
uploads cannot take the model queue's places, and queued work cannot block uploads. Every answer is counted in
the metrics.

WebSocket handshakes (``/v1/realtime``) pass through untouched: this guard only sees HTTP scopes. The live
endpoint applies the same origin and key rule, :func:`access_refusal`, before it accepts a connection.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterable
from typing import Any

from whisper_zh.server.config import ServerConfig
from whisper_zh.server.errors import ApiError, BodyError, queue_refused, too_large
from whisper_zh.server.keys import KeyFailures
from whisper_zh.server.metrics import ServerMetrics
from whisper_zh.server.queue import BatchingQueue
from whisper_zh.server.security import PROXIED, host_allowed, origin_allowed
from whisper_zh.server.uploads import UploadGate, UploadPermit

UPLOAD_PATHS = ("/v1/audio/transcriptions", "/v1/audio/translations")
FORM_SLACK = 16 << 10  # bytes allowed beyond the file limit for multipart framing and the other fields
_DRAIN_SECONDS = 2.0  # how long a refused request's body is read (so its client sees the answer)


class Guard:
    """Pure-ASGI middleware in front of the app (see the module docstring)."""

    def __init__(self, app: Any, *, config: ServerConfig, queue: BatchingQueue, uploads: UploadGate,
                 metrics: ServerMetrics, key_failures: KeyFailures | None = None) -> None:
        self.app, self.config, self.queue, self.uploads, self.metrics = app, config, queue, uploads, metrics
        self.key_failures = key_failures

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if "content-length" in headers and "transfer-encoding" in headers:
            error = ApiError(400, "a request must not send both Content-Length and Transfer-Encoding",
                             code="ambiguous_length", headers={"Connection": "close"})
            await error.response()(scope, receive, send)
            return
        error = host_refusal(headers, self.config)
        if error is not None:
            await error.response()(scope, receive, send)
            return
        if not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        endpoint = _endpoint_label(scope["path"])
        started = time.monotonic()
        status: list[int] = []

        async def send_counted(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self._admit(scope, headers, receive, send_counted)
        finally:
            self.metrics.observe_request(endpoint, status[0] if status else 500, time.monotonic() - started)

    async def _admit(self, scope: dict, headers: dict[str, str], receive: Any, send: Any) -> None:
        error = self._refusal(scope, headers)
        upload = scope["path"] in UPLOAD_PATHS and scope["method"] == "POST"
        permit = None
        if error is None and upload:
            error = self._model_queue_refusal()
            permit = self.uploads.try_enter() if error is None else None
            if error is None and permit is None:
                retry = self.uploads.retry_after()
                error = ApiError(429, f"server busy: {self.uploads.limit} uploads are being read; retry after "
                                 f"{retry} s", type_="requests", code="rate_limit_exceeded",
                                 headers={"Retry-After": str(retry)})
        if error is not None:
            if not await _drain(receive, limit=self.config.max_upload_bytes + FORM_SLACK):
                error.headers.setdefault("Connection", "close")
            await error.response()(scope, receive, send)
            return
        reader = _BodyReader(receive, self.config, permit) if upload else receive
        try:
            await self.app(scope, reader, send)
        finally:
            if permit is not None:
                permit.release()

    def _refusal(self, scope: dict, headers: dict[str, str]) -> ApiError | None:
        error = access_refusal(headers, self.config, proxied=bool(scope.get(PROXIED)),
                               client=client_address(scope), key_failures=self.key_failures)
        if error is not None:
            return error
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.config.max_upload_bytes + FORM_SLACK:
            return too_large(self.config.max_upload_bytes)
        return None

    def _model_queue_refusal(self) -> ApiError | None:
        """The model queue is full or closing: say so before the client sends its upload."""
        refusal = self.queue.refusal()
        return None if refusal is None else queue_refused(refusal)


def host_refusal(headers: dict[str, str], config: ServerConfig) -> ApiError | None:
    """403 unless the request's ``Host`` names this server (DNS rebinding; see server/security.py)."""
    if host_allowed(headers.get("host", ""), config.bind_host, config.allowed_hosts):
        return None
    host = headers.get("host", "")[:100]
    return ApiError(403, f"this server does not answer to the host name '{host}' (start it with --allowed-hosts "
                    "to add a name)", code="host_not_allowed")


def client_address(scope: dict) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def access_refusal(headers: dict[str, str], config: ServerConfig, *, other_keys: Iterable[str] = (),
                   proxied: bool = False, client: str | None = None,
                   key_failures: KeyFailures | None = None) -> ApiError | None:
    """Who may use ``/v1``, the one rule for HTTP requests (the guard) and WebSocket handshakes (which the guard
    does not see; :mod:`~whisper_zh.server.realtime` calls this): the browser origin (403), then the API key (401)
    as ``Authorization: Bearer KEY``, or in ``other_keys`` where a client cannot set headers (a browser's
    WebSocket sends it as a subprotocol). Keys are compared in constant time; ``key_failures`` counts the wrong
    ones per ``client`` address and answers 429 once there were too many. ``headers``: lower-cased names;
    ``proxied``: the peer is a trusted proxy (its X-Forwarded-Host counts as this server's name)."""
    if not origin_allowed(headers, config.cors_origins, proxied=proxied):
        return ApiError(403, f"requests from the web page at {headers.get('origin', 'another site')} are not "
                        "allowed (start the server with --cors-origin to allow it)", code="origin_not_allowed")
    if config.api_key:
        auth = headers.get("authorization", "")
        tokens = [auth[7:].strip() if auth.lower().startswith("bearer ") else "", *other_keys]
        tokens = [token for token in tokens if token]
        if not tokens:
            return ApiError(401, "missing API key: send 'Authorization: Bearer KEY'", code="invalid_api_key")
        wait = key_failures.retry_after(client) if key_failures is not None else None
        if wait is not None:
            return ApiError(429, f"too many wrong API keys from this address; retry after {wait} s",
                            type_="requests", code="rate_limit_exceeded", headers={"Retry-After": str(wait)})
        expected = config.api_key.encode()
        matches = [secrets.compare_digest(token.encode(), expected) for token in tokens]  # every one compared
        if not any(matches):
            if key_failures is not None:
                key_failures.failed(client)
            return ApiError(401, "incorrect API key provided", code="invalid_api_key")
        if key_failures is not None:
            key_failures.succeeded(client)
    return None


class _BodyReader:
    """``receive`` for an admitted upload: enforces the size limit, the deadline and the minimum rate, and
    releases the upload's place once the body is complete."""

    def __init__(self, receive: Any, config: ServerConfig, permit: UploadPermit | None) -> None:
        self.receive, self.config, self.permit = receive, config, permit
        self.started = time.monotonic()
        self.received = 0
        self.complete = False

    async def __call__(self) -> dict:
        if self.complete:  # after the body: only http.disconnect is left to wait for, for as long as it takes
            return await self.receive()
        try:
            message = await asyncio.wait_for(self.receive(), timeout=max(0.0, self._time_left()))
        except asyncio.TimeoutError:
            self._finish()
            raise BodyError(self._too_slow()) from None
        if message["type"] != "http.request":
            self._finish()
            return message
        self.received += len(message.get("body", b""))
        if self.received > self.config.max_upload_bytes + FORM_SLACK:
            self._finish()
            if message.get("more_body"):
                await _drain(self.receive, limit=4 * self.config.max_upload_bytes)
            raise BodyError(too_large(self.config.max_upload_bytes))
        if not message.get("more_body"):
            self._finish()
        return message

    def _time_left(self) -> float:
        """Seconds until the next bytes must have arrived: the overall deadline, or the point where the bytes
        received so far fall below the minimum average rate (counted after the grace period)."""
        c = self.config
        rate_deadline = c.upload_grace_s + self.received / max(c.min_upload_bytes_per_s, 1)
        return min(c.upload_timeout_s, rate_deadline) - (time.monotonic() - self.started)

    def _too_slow(self) -> ApiError:
        c = self.config
        elapsed = time.monotonic() - self.started
        message = (f"upload too slow: {self.received} bytes in {elapsed:.0f} s; this server needs the body at "
                   f"{c.min_upload_bytes_per_s // 1024} kB/s or faster after the first {c.upload_grace_s:g} s, "
                   f"and all of it within {c.upload_timeout_s:g} s")
        return ApiError(408, message, code="upload_timeout", headers={"Connection": "close"})

    def _finish(self) -> None:
        self.complete = True
        if self.permit is not None:
            self.permit.release()


async def _drain(receive: Any, *, limit: int) -> bool:
    """Read and discard a refused request's body (up to ``limit`` bytes and a few seconds), so its client sees
    the answer; returns whether the body was read to its end."""
    seen = 0
    deadline = time.monotonic() + _DRAIN_SECONDS
    while seen <= limit:
        try:
            message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            return False
        if message["type"] != "http.request":
            return True
        seen += len(message.get("body", b""))
        if not message.get("more_body"):
            return True
    return False


def _endpoint_label(path: str) -> str:
    """Bounded metric label values, whatever paths clients try."""
    if path in UPLOAD_PATHS or path == "/v1/models":
        return path
    return "/v1/models/{id}" if path.startswith("/v1/models/") else "other"

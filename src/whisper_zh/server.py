"""The HTTP server: OpenAI's audio API (transcriptions, translations, models), health, metrics and the web page.

``create_app(config)`` builds a FastAPI app around ONE shared :class:`~whisper_zh.Transcriber`. A pure-ASGI
guard in front of the routes checks the API key, the upload size and queue admission *before* the body is
read (so a rejected upload costs no memory), and records Prometheus metrics. Admitted requests decode their
upload, then wait on the :class:`~whisper_zh.serving_queue.BatchingQueue`, whose worker thread batches
several clients' audio into one ``transcribe_batch`` call. Errors use OpenAI's JSON shape
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from whisper_zh.audio import SAMPLE_RATE, load_audio
from whisper_zh.decoding import DecodeOptions
from whisper_zh.errors import AudioError
from whisper_zh.live_server import LiveLimits, live_router
from whisper_zh.results import Segment, Transcription
from whisper_zh.serving_queue import BatchingQueue, BatchStats, QueueClosedError, QueueFullError, Slot
from whisper_zh.writers import format_transcription

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
OPENAI_DEFAULT_MODEL = "whisper-1"  # what OpenAI's clients send; an alias of the served model
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
_UPLOAD_PATHS = ("/v1/audio/transcriptions", "/v1/audio/translations")
_FORM_SLACK = 16 << 10  # bytes allowed beyond the file limit for multipart framing and the other fields
_LANGUAGE_NAMES = {"zh": "chinese", "en": "english", "yue": "cantonese", "ja": "japanese", "ko": "korean"}


@dataclass
class ServerConfig:
    """Everything the server needs; the CLI fills it from flags, tests build it directly."""

    model: str = "base"
    engine: str = "ctranslate2"
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = 0
    # Decoding defaults; a request's language/prompt/temperature/granularities override them.
    # Segment timestamps are on for every request, so json and srt requests still share a batch.
    # No packing: clips of different clients must never share one 30 s decoder window (a word split back
    # to the wrong clip would leak one client's speech into another's transcript); they share a batch
    # as separate rows instead.
    decode: DecodeOptions = field(
        default_factory=lambda: DecodeOptions(pack=False)
    )
    api_key: str | None = None
    max_upload_bytes: int = 25 * 1024 * 1024  # OpenAI's limit
    max_audio_seconds: float = 1800.0  # bounds decoded samples held per request (~115 MB float32)
    max_pending: int = 16  # admitted requests (decoding, waiting or in the model) before 429
    max_batch: int = 8  # requests passed to one transcribe_batch call
    batch_window_s: float = 0.05  # how long the worker waits to gather a batch once a job arrives
    shutdown_timeout_s: float = 600.0
    # The web page's streamed requests decode long audio in pieces of about this length, cut at pauses,
    # so the first segments show while the rest is decoded.
    stream_piece_seconds: float = 60.0
    # Live transcription over WebSocket (/v1/realtime): streams at once, buffer cap, idle timeout.
    live: LiveLimits = field(default_factory=LiveLimits)


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


class _Metrics:
    """Prometheus metrics in a registry of this app's own (no process-global state)."""

    def __init__(self, queue: BatchingQueue) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "whisper_zh_requests", "API requests answered", ["endpoint", "status"], registry=r
        )
        self.errors = Counter(
            "whisper_zh_request_errors", "API requests answered with status >= 400", ["endpoint", "status"],
            registry=r,
        )
        self.audio_seconds = Counter(
            "whisper_zh_audio_seconds", "seconds of audio transcribed or translated", registry=r
        )
        self.latency = Histogram(
            "whisper_zh_request_latency_seconds", "API request latency (received to answered)", ["endpoint"],
            buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, math.inf), registry=r,
        )
        self.batch_size = Histogram(
            "whisper_zh_batch_size", "requests decoded together in one model call",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, math.inf), registry=r,
        )
        self.batch_seconds = Histogram(
            "whisper_zh_batch_seconds", "time of one batched model call",
            buckets=(0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, math.inf), registry=r,
        )
        depth = Gauge("whisper_zh_queue_depth", "requests waiting for the model", registry=r)
        depth.set_function(lambda: queue.depth)
        in_flight = Gauge(
            "whisper_zh_requests_in_flight", "admitted requests not yet answered", registry=r
        )
        in_flight.set_function(lambda: queue.in_flight)
        capacity = Gauge("whisper_zh_queue_capacity", "admitted requests allowed at once", registry=r)
        capacity.set(queue.max_pending)

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.size)
        self.batch_seconds.observe(stats.seconds)


class _Guard:
    """Pure-ASGI front door for the API: auth, upload size, queue admission, metrics.

    Runs before the multipart body is read, so 401/413/429 cost neither memory nor disk.
    """

    def __init__(self, app: Any, *, config: ServerConfig, queue: BatchingQueue, metrics: _Metrics) -> None:
        self.app, self.config, self.queue, self.metrics = app, config, queue, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path in _UPLOAD_PATHS or path == "/v1/models":
            endpoint = path
        else:  # bounded label values, whatever paths clients try
            endpoint = "/v1/models/{id}" if path.startswith("/v1/models/") else "other"
        started = time.perf_counter()
        status_seen: list[int] = []

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_seen.append(message["status"])
            await send(message)

        slot: Slot | None = None
        try:
            error = self._check(scope)
            if error is None and path in _UPLOAD_PATHS and scope["method"] == "POST":
                try:
                    slot = self.queue.acquire()
                except QueueFullError as exc:
                    error = ApiError(
                        429, str(exc), type_="requests", code="rate_limit_exceeded",
                        headers={"Retry-After": str(exc.retry_after)},
                    )
                except QueueClosedError as exc:
                    error = ApiError(503, str(exc), type_="server_error", code="shutting_down",
                                     headers={"Retry-After": "5"})
            if error is not None:
                await _drain(receive, limit=self.config.max_upload_bytes + (1 << 20))
                await error.response()(scope, receive, send_wrapper)
                return
            scope.setdefault("state", {})["slot"] = slot
            await self.app(scope, _limited(receive, self.config.max_upload_bytes), send_wrapper)
        finally:
            if slot is not None:
                slot.__exit__(None, None, None)  # releases it unless its job was submitted
            status = status_seen[0] if status_seen else 500
            self.metrics.requests.labels(endpoint, str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    def _check(self, scope: dict) -> ApiError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.config.api_key:
            auth = headers.get("authorization", "")
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            if not token:
                return ApiError(
                    401, "missing API key: send 'Authorization: Bearer KEY'", code="invalid_api_key"
                )
            if not secrets.compare_digest(token.encode(), self.config.api_key.encode()):
                return ApiError(401, "incorrect API key provided", code="invalid_api_key")
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.config.max_upload_bytes + _FORM_SLACK:
            return _too_large(self.config.max_upload_bytes)
        return None


class _BodyTooLargeError(StarletteHTTPException):
    def __init__(self) -> None:
        super().__init__(413, "upload too large")


def _limited(receive: Any, max_bytes: int) -> Any:
    """Wrap ``receive`` so a body (e.g. chunked, without Content-Length) past the limit stops being read."""
    allowance = max_bytes + _FORM_SLACK
    seen = 0

    async def wrapped() -> dict:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > allowance:
                if message.get("more_body"):
                    await _drain(receive, limit=4 * allowance)
                raise _BodyTooLargeError()
        return message

    return wrapped


async def _drain(receive: Any, *, limit: int) -> None:
    """Read and discard the rest of a request body (up to ``limit``), so the client sees our answer."""
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body"):
            return


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, f"upload too large: the limit is {limit / (1 << 20):.0f} MB", param="file", code="file_too_large"
    )


def create_app(config: ServerConfig, *, transcriber: Any = None) -> FastAPI:
    """Build the app. Loads the model now (so a bad ``--model`` fails before the port opens) unless a
    ready :class:`~whisper_zh.Transcriber` is passed in (tests share one between apps)."""
    if transcriber is None:
        from whisper_zh.transcriber import Transcriber

        transcriber = Transcriber(config.model, engine=config.engine, device=config.device,
                                  compute_type=config.compute_type, cpu_threads=config.cpu_threads)
    served_name = Path(config.model).name if Path(config.model).exists() else config.model
    model_names = (served_name, OPENAI_DEFAULT_MODEL)
    multilingual = bool(getattr(transcriber, "is_multilingual", True))
    created = int(time.time())

    def batch_fn(audios: list[Any], options: DecodeOptions, on_progress: Any) -> list[Any]:
        return transcriber.transcribe_batch(audios, options, on_progress=on_progress)

    metrics_holder: dict[str, _Metrics] = {}
    queue = BatchingQueue(
        batch_fn,
        max_pending=config.max_pending,
        max_batch=config.max_batch,
        batch_window_s=config.batch_window_s,
        on_batch=lambda stats: metrics_holder["m"].observe_batch(stats),
    )
    metrics = metrics_holder["m"] = _Metrics(queue)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # noqa: ANN202
        queue.start()
        try:
            yield
        finally:
            # uvicorn has already waited for in-flight requests; this finishes anything still queued.
            await run_in_threadpool(queue.close, config.shutdown_timeout_s)

    app = FastAPI(title="whisper-zh", version=_version(), lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.config = config
    app.state.queue = queue
    app.state.transcriber = transcriber
    app.state.metrics_registry = metrics.registry
    app.add_middleware(_Guard, config=config, queue=queue, metrics=metrics)

    # -- errors ------------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query")]
        param = loc[-1] if loc else None
        message = first.get("msg", "invalid request")
        if first.get("type") == "missing" and param:
            message = f"missing required parameter '{param}'"
        elif param:
            message = f"invalid '{param}': {message}"
        return ApiError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 413:
            return _too_large(config.max_upload_bytes).response()
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return ApiError(exc.status_code, str(exc.detail), code=code).response()

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return ApiError(500, f"internal error: {type(exc).__name__}", type_="server_error").response()

    # -- API ---------------------------------------------------------------------------------------
    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "whisper-zh"}

    def check_model(name: str) -> None:
        if name not in model_names:
            raise ApiError(
                404,
                f"model '{name}' does not exist here; this server serves '{served_name}' "
                f"(alias '{OPENAI_DEFAULT_MODEL}')",
                param="model",
                code="model_not_found",
            )

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(name) for name in model_names]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict[str, Any]:
        check_model(name)
        return model_card(name)

    async def handle(
        request: Request,
        *,
        task: str,
        file: UploadFile,
        model: str,
        language: str | None,
        prompt: str | None,
        response_format: str,
        temperature: float | None,
        granularities: list[str],
        stream: bool,
        script: str | None,
    ) -> Response:
        check_model(model)
        if response_format not in RESPONSE_FORMATS:
            raise ApiError(
                400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}", param="response_format"
            )
        bad = [g for g in granularities if g not in GRANULARITIES]
        if bad:
            raise ApiError(400, f"timestamp_granularities[] must be segment or word, not {bad[0]!r}",
                           param="timestamp_granularities[]")
        if granularities and response_format != "verbose_json":
            raise ApiError(400, "timestamp_granularities[] needs response_format=verbose_json",
                           param="timestamp_granularities[]")
        if task == "translate" and not multilingual:
            raise ApiError(400, f"model '{served_name}' is English-only and cannot translate", param="model")
        if script not in (None, "", "simplified", "traditional", "as-is"):
            raise ApiError(400, "script must be simplified, traditional or as-is", param="script")
        if temperature is not None and not 0.0 <= temperature <= 1.0:
            raise ApiError(400, "temperature must be between 0 and 1", param="temperature")
        options = _request_options(
            config.decode, task=task, language=language, prompt=prompt, temperature=temperature,
            words="word" in granularities, script=script or None,
        )
        slot: Slot | None = request.scope.get("state", {}).get("slot")
        if slot is None:  # only reachable if the guard is bypassed; admit here then
            try:
                slot = queue.acquire()
            except QueueFullError as exc:
                raise ApiError(429, str(exc), type_="requests", code="rate_limit_exceeded",
                               headers={"Retry-After": str(exc.retry_after)}) from exc
            request.scope.setdefault("state", {})["slot"] = slot

        audio = await run_in_threadpool(_decode_upload, file, config.max_audio_seconds)
        seconds = len(audio) / SAMPLE_RATE
        if stream:
            return _stream_response(slot, audio, seconds, options, metrics, config.stream_piece_seconds)
        future = slot.submit(audio, options, seconds=seconds)
        del audio
        result = await asyncio.wrap_future(future)
        if isinstance(result, AudioError):
            raise ApiError(400, str(result), param="file", code="invalid_audio")
        metrics.audio_seconds.inc(seconds)
        return _format_response(result, response_format, task, words="word" in granularities)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(
        request: Request,
        file: Annotated[UploadFile, File(description="audio (wav, flac, mp3, m4a, ogg, webm, ...)")],
        model: Annotated[str, Form()],
        language: Annotated[str | None, Form()] = None,
        prompt: Annotated[str | None, Form()] = None,
        response_format: Annotated[str, Form()] = "json",
        temperature: Annotated[float | None, Form()] = None,
        timestamp_granularities: Annotated[list[str] | None, Form(alias="timestamp_granularities[]")] = None,
        stream: Annotated[bool, Form(description="server-sent events (whisper-zh's web page uses them)")] = False,
        script: Annotated[str | None, Form(description="whisper-zh: simplified, traditional or as-is")] = None,
    ) -> Response:
        return await handle(
            request, task="transcribe", file=file, model=model, language=language, prompt=prompt,
            response_format=response_format, temperature=temperature,
            granularities=timestamp_granularities or [], stream=stream, script=script,
        )

    @app.post("/v1/audio/translations")
    async def translations(
        request: Request,
        file: Annotated[UploadFile, File()],
        model: Annotated[str, Form()],
        prompt: Annotated[str | None, Form()] = None,
        response_format: Annotated[str, Form()] = "json",
        temperature: Annotated[float | None, Form()] = None,
        language: Annotated[str | None, Form(description="whisper-zh: source language (default zh)")] = None,
    ) -> Response:
        return await handle(
            request, task="translate", file=file, model=model, language=language, prompt=prompt,
            response_format=response_format, temperature=temperature, granularities=[], stream=False,
            script="as-is",
        )

    # -- operations --------------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": served_name,
            "aliases": [OPENAI_DEFAULT_MODEL],
            "translation": multilingual,
            "auth_required": bool(config.api_key),
            "max_upload_bytes": config.max_upload_bytes,
            "queue": {"waiting": queue.depth, "in_flight": queue.in_flight, "capacity": queue.max_pending},
        }

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # -- web page ----------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")

    app.include_router(live_router(queue, transcriber, decode=config.decode, api_key=config.api_key, limits=config.live))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _version() -> str:
    from whisper_zh import __version__

    return __version__


def _request_options(
    base: DecodeOptions,
    *,
    task: str,
    language: str | None,
    prompt: str | None,
    temperature: float | None,
    words: bool,
    script: str | None,
) -> DecodeOptions:
    language = (language or "").strip().lower() or base.language
    if language == "auto":
        language = None
    changes: dict[str, Any] = {"task": task, "language": language, "word_timestamps": words or base.word_timestamps}
    if prompt is not None and prompt.strip():
        changes["initial_prompt"] = prompt  # DecodeOptions.prompt_for decides where the default prompt applies
    if temperature:  # OpenAI: 0 (or unset) means "start greedy, raise the temperature when decoding fails"
        changes["temperature"] = tuple(sorted({temperature} | {t for t in base.temperature if t > temperature}))
    if script:
        changes["script"] = script
    return base.with_(**changes)


def _decode_upload(upload: UploadFile, max_seconds: float) -> Any:
    """Read the upload (spooled by Starlette; its temporary file is closed and removed with the request)."""
    upload.file.seek(0)
    data = upload.file.read()
    if not data:
        raise ApiError(400, f"{upload.filename or 'file'}: file is empty (0 bytes)", param="file",
                       code="invalid_audio")
    source = io.BytesIO(data)
    source.name = upload.filename or "upload"
    del data
    try:
        audio = load_audio(source)
    except AudioError as exc:
        raise ApiError(400, str(exc), param="file", code="invalid_audio") from exc
    seconds = len(audio) / SAMPLE_RATE
    if seconds > max_seconds:
        raise ApiError(
            413, f"audio is {seconds / 60:.1f} min long; this server's limit is {max_seconds / 60:.0f} min",
            param="file", code="audio_too_long",
        )
    return audio


def _language_name(code: str | None) -> str:
    return _LANGUAGE_NAMES.get(code or "", code or "")


def _segment_json(s: Segment) -> dict[str, Any]:
    return {
        "id": s.id,
        "seek": 0,
        "start": s.start,
        "end": s.end,
        "text": s.text,
        "tokens": list(s.tokens),
        "temperature": 0.0,
        "avg_logprob": s.avg_logprob,
        "compression_ratio": s.compression_ratio,
        "no_speech_prob": s.no_speech_prob,
    }


def _segments_json(t: Transcription) -> list[dict[str, Any]]:
    return [_segment_json(s) for s in t.segments]


def _words_json(t: Transcription) -> list[dict[str, Any]]:
    return [
        {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)}
        for s in t.segments
        for w in (s.words or [])
    ]


def _format_response(t: Transcription, fmt: str, task: str, *, words: bool) -> Response:
    if fmt == "json":
        return JSONResponse(
            {"text": t.text, "usage": {"type": "duration", "seconds": math.ceil(t.duration)}}
        )
    if fmt == "text":
        return PlainTextResponse(format_transcription(t, "txt"))
    if fmt == "srt":
        return PlainTextResponse(format_transcription(t, "srt"))
    if fmt == "vtt":
        return PlainTextResponse(format_transcription(t, "vtt"), media_type="text/vtt")
    body: dict[str, Any] = {
        "task": task,
        "language": _language_name(t.language),
        "duration": round(t.duration, 3),
        "text": t.text,
        "segments": _segments_json(t),
        "usage": {"type": "duration", "seconds": math.ceil(t.duration)},
    }
    if words:
        body["words"] = _words_json(t)
    return JSONResponse(body)


def _stream_response(
    slot: Slot, audio: Any, seconds: float, options: DecodeOptions, metrics: _Metrics, piece_seconds: float
) -> StreamingResponse:
    """Server-sent events for the web page: queued → progress → segments as each piece is done → done.

    Audio longer than ``piece_seconds`` is cut at pauses (Silero VAD, as the Transcriber uses)
    into pieces decoded one after another, so the first segments arrive while the rest is still being
    decoded; other clients' requests interleave with the pieces. Event types follow OpenAI's streaming
    transcription (``transcript.text.delta`` / ``.done``); ``transcript.queued``, ``.progress`` and
    ``.segment`` are whisper-zh's additions.
    """
    loop = asyncio.get_running_loop()
    updates: asyncio.Queue[float] = asyncio.Queue()

    def event(payload: dict[str, Any]) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    async def events():  # noqa: ANN202
        current: Future | None = None
        try:
            yield event({"type": "transcript.queued", "duration": round(seconds, 3)})
            cuts = await run_in_threadpool(_piece_bounds, audio, piece_seconds)
            segments: list[Segment] = []
            language = options.language or "zh"
            for index, (start, end) in enumerate(cuts):
                done_before = start / SAMPLE_RATE

                def on_progress(fraction: float, done_before: float = done_before, size: float = end - start) -> None:
                    overall = (done_before + fraction * size / SAMPLE_RATE) / seconds
                    loop.call_soon_threadsafe(updates.put_nowait, overall)

                current = slot.submit(
                    audio[start:end], options, seconds=(end - start) / SAMPLE_RATE, progress=on_progress, keep=True
                )
                waiting = asyncio.wrap_future(current)
                while not waiting.done():
                    getter = asyncio.ensure_future(updates.get())
                    finished, _ = await asyncio.wait({getter, waiting}, return_when=asyncio.FIRST_COMPLETED)
                    if getter in finished:
                        yield event({"type": "transcript.progress", "fraction": round(min(getter.result(), 1.0), 3)})
                    else:
                        getter.cancel()
                while not updates.empty():  # progress reported just before the piece finished
                    yield event({"type": "transcript.progress", "fraction": round(min(updates.get_nowait(), 1.0), 3)})
                try:
                    piece = waiting.result()
                except AudioError as exc:
                    if index and "silent" in str(exc):  # a piece of pure silence between pauses: no text
                        continue
                    yield event({"type": "error", "error": ApiError(400, str(exc), code="invalid_audio").body()["error"]})
                    return
                except Exception as exc:  # noqa: BLE001
                    logger.exception("streamed transcription failed")
                    yield event({"type": "error", "error": {"message": f"internal error: {type(exc).__name__}"}})
                    return
                language = piece.language
                for segment in piece.segments:
                    segment = _shifted(segment, start / SAMPLE_RATE, len(segments))
                    segments.append(segment)
                    yield event({"type": "transcript.text.delta", "delta": segment.text})
                    yield event({"type": "transcript.segment", "segment": _segment_json(segment)})
            result = Transcription("upload", segments, language, seconds)
            metrics.audio_seconds.inc(seconds)
            yield event(
                {
                    "type": "transcript.text.done",
                    "text": result.text,
                    "language": result.language,
                    "duration": round(result.duration, 3),
                    "formats": {fmt: format_transcription(result, fmt) for fmt in ("txt", "srt", "vtt")},
                }
            )
        finally:
            # Release the slot now, or (a piece still in the model) when that piece is done.
            if current is not None and not current.done() and not current.cancel():
                current.add_done_callback(lambda _f: slot.release())
            else:
                slot.release()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _piece_bounds(audio: Any, piece_seconds: float) -> list[tuple[int, int]]:
    """Sample ranges covering ``audio``, each at most ~``piece_seconds`` long, cut in the middle of pauses."""
    limit = int(piece_seconds * SAMPLE_RATE)
    if len(audio) <= limit:
        return [(0, len(audio))]
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    speech = get_speech_timestamps(audio, VadOptions(max_speech_duration_s=30, min_silence_duration_ms=160))
    gaps = [(a["end"] + b["start"]) // 2 for a, b in zip(speech, speech[1:], strict=False)]
    bounds, start = [], 0
    while len(audio) - start > limit:
        inside = [g for g in gaps if start < g <= start + limit]
        cut = inside[-1] if inside else start + limit
        bounds.append((start, cut))
        start = cut
    bounds.append((start, len(audio)))
    return bounds


def _shifted(segment: Segment, offset: float, new_id: int) -> Segment:
    words = None
    if segment.words:
        words = [replace(w, start=round(w.start + offset, 3), end=round(w.end + offset, 3)) for w in segment.words]
    return replace(
        segment, id=new_id, start=round(segment.start + offset, 3), end=round(segment.end + offset, 3), words=words
    )


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread (port 0: a free one); yields the base URL.

    For tests, notebooks and benchmarks; on exit the server shuts down gracefully (requests in flight finish).
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=120))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(150)
        sock.close()

"""Wiring: one model, its batching queue, the upload gate and metrics, the routers, the guard and the
browser-facing middleware, and a lifespan that starts and drains the queue.

Middleware, outermost first: forwarding headers believed from trusted proxies only; security headers on every answer; CORS headers for ``--cors-origin`` origins (only
when some are configured); the :class:`~whisper_zh.server.guard.Guard`; then the routers of
:data:`~whisper_zh.server.routes.ROUTERS` (among them :mod:`~whisper_zh.server.realtime`'s WebSocket route, which the
guard does not see: it applies the guard's :func:`~whisper_zh.server.guard.access_refusal` itself). Another feature
adds its router to :func:`create_app`'s ``routers`` and reads :class:`~whisper_zh.server.state.ServerState` like the
others.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from whisper_zh.decoding import DecodeOptions
from whisper_zh.errors import UsageError
from whisper_zh.server.config import ServerConfig
from whisper_zh.server.errors import install_error_handlers
from whisper_zh.server.forms import ServedModel
from whisper_zh.server.guard import Guard
from whisper_zh.server.keys import KeyFailures
from whisper_zh.server.metrics import ServerMetrics
from whisper_zh.server.queue import BatchingQueue
from whisper_zh.server.routes import ROUTERS, STATIC_DIR
from whisper_zh.server.security import ForwardedHeaders, SecurityHeaders
from whisper_zh.server.state import ServerState, StreamGate
from whisper_zh.server.uploads import UploadGate


def create_app(config: ServerConfig, *, transcriber: Any = None, routers: Iterable[APIRouter] = ROUTERS) -> FastAPI:
    """Build the app. Loads the model now (so a bad ``--model`` fails before the port opens) unless a
    ready :class:`~whisper_zh.Transcriber` is passed in (tests share one between apps)."""
    state = build_state(config, transcriber)
    # No /docs or /redoc: FastAPI's pages load Swagger UI and ReDoc from a CDN. The schema is at /openapi.json.
    app = FastAPI(title="whisper-zh", version=_version(), lifespan=_lifespan(state), docs_url=None, redoc_url=None)
    app.state.server = state
    install_error_handlers(app)
    for router in routers:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(Guard, config=config, queue=state.queue, uploads=state.uploads, metrics=state.metrics,
                       key_failures=state.key_failures)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(ForwardedHeaders, trusted=config.forwarded_allow_ips)
    return app


def build_state(config: ServerConfig, transcriber: Any = None) -> ServerState:
    """The model (loaded unless given), its queue, the upload gate, the live-stream gate and the metrics."""
    if transcriber is None:
        from whisper_zh.transcriber import Transcriber

        transcriber = Transcriber(config.model, engine=config.engine, device=config.device,
                                  compute_type=config.compute_type, cpu_threads=config.cpu_threads,
                                  workers=config.workers)
    metrics = ServerMetrics()
    queue = BatchingQueue(_batch_fn(transcriber), max_pending=config.max_pending, max_batch=config.max_batch,
                          batch_window_s=config.batch_window_s, on_batch=metrics.observe_batch,
                          workers=config.workers)
    uploads = UploadGate(config.max_uploading)
    streams = StreamGate(config.live.max_streams)
    metrics.watch(queue, uploads, streams)
    served = ServedModel(
        name=Path(config.model).name if Path(config.model).exists() else config.model,
        languages=frozenset(getattr(transcriber, "languages", ())),
        multilingual=bool(getattr(transcriber, "is_multilingual", True)),
        engine=str(getattr(transcriber, "engine", config.engine)),  # the engine that runs, not the one asked for
        created=int(time.time()),
        aligns_words=bool(getattr(getattr(transcriber, "decoder", None), "aligns_words", False)),
    )
    default = config.decode.language
    if default is not None and served.languages and default not in served.languages:
        raise UsageError(f"--language {default}: not a language model '{served.name}' knows (use a code such as "
                         "zh, en or yue, or auto)")
    key_failures = KeyFailures(config.max_key_failures, config.key_failure_window_s)
    return ServerState(config, transcriber, queue, uploads, metrics, served, streams, key_failures)


def _batch_fn(transcriber: Any) -> Callable[[list[Any], DecodeOptions, Any], list[Any]]:
    def batch_fn(audios: list[Any], options: DecodeOptions, on_progress: Any) -> list[Any]:
        return transcriber.transcribe_batch(audios, options, on_progress=on_progress)

    return batch_fn


def _lifespan(state: ServerState) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.queue.start()
        try:
            yield
        finally:
            # uvicorn has already waited for in-flight requests; this finishes anything still queued.
            await run_in_threadpool(state.queue.close, state.config.shutdown_timeout_s)

    return lifespan


def _version() -> str:
    from whisper_zh import __version__

    return __version__

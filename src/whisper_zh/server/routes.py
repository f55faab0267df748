"""The routes: OpenAI's audio API (``api``), health and metrics (``operations``), and the web page (``page``);
:data:`ROUTERS` adds live transcription over WebSocket (:mod:`~whisper_zh.server.realtime`).

Each route takes the shared :class:`~whisper_zh.server.state.ServerState` as a dependency and, for uploads,
a checked :class:`~whisper_zh.server.forms.TranscriptionRequest`. An upload is admitted to the model queue only
after its body has been read and its fields checked (the guard limits the uploading itself).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.errors import AudioError
from whisper_zh.server import realtime
from whisper_zh.server.errors import audio_error, queue_refused
from whisper_zh.server.formats import format_response
from whisper_zh.server.forms import TranscriptionRequest
from whisper_zh.server.queue import QueueClosedError, QueueFullError, Slot
from whisper_zh.server.state import ServerState, server_state
from whisper_zh.server.streaming import stream_response
from whisper_zh.server.uploads import decode_upload

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

api = APIRouter()
operations = APIRouter()
page = APIRouter()
State = Annotated[ServerState, Depends(server_state)]


# -- OpenAI's API ------------------------------------------------------------------------------------------


@api.get("/v1/models")
async def list_models(state: State) -> dict[str, Any]:
    return {"object": "list", "data": [_model_card(state, name) for name in state.model.names]}


@api.get("/v1/models/{name:path}")
async def get_model(name: str, state: State) -> dict[str, Any]:
    state.model.check_name(name)
    return _model_card(state, name)


@api.post("/v1/audio/transcriptions")
async def transcriptions(
    state: State,
    file: Annotated[UploadFile, File(description="audio (wav, flac, mp3, m4a, ogg, webm, ...)")],
    model: Annotated[str, Form()],
    language: Annotated[str | None, Form(description="ISO 639-1 code (default zh), or auto")] = None,
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[str, Form()] = "json",
    temperature: Annotated[float | None, Form()] = None,
    timestamp_granularities: Annotated[list[str] | None, Form(alias="timestamp_granularities[]")] = None,
    stream: Annotated[bool, Form(description="server-sent events (whisper-zh's web page uses them)")] = False,
    script: Annotated[str | None, Form(description="whisper-zh: simplified, traditional or as-is")] = None,
    allow_truncated: Annotated[bool, Form(description="whisper-zh: transcribe what decodes of a cut file")] = False,
    numbers: Annotated[bool, Form(description="whisper-zh: dates, amounts, percentages in Arabic digits")] = False,
    diarize: Annotated[bool, Form(description="whisper-zh: label speakers (SPEAKER_1, ...) in any format")] = False,
    speakers: Annotated[int | None, Form(description="whisper-zh: exactly this many speakers")] = None,
    min_speakers: Annotated[int | None, Form(description="whisper-zh: at least this many speakers")] = None,
    max_speakers: Annotated[int | None, Form(description="whisper-zh: at most this many speakers")] = None,
) -> Response:
    request = TranscriptionRequest.parse(
        state.model, model=model, task="transcribe", language=language, prompt=prompt,
        response_format=response_format, temperature=temperature, granularities=timestamp_granularities,
        stream=stream, script=script, allow_truncated=allow_truncated, numbers=numbers, diarize=diarize,
        speakers=speakers, min_speakers=min_speakers, max_speakers=max_speakers,
    )
    return await _answer(state, file, request)


@api.post("/v1/audio/translations")
async def translations(
    state: State,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form()],
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[str, Form()] = "json",
    temperature: Annotated[float | None, Form()] = None,
    language: Annotated[str | None, Form(description="whisper-zh: source language (default zh)")] = None,
    allow_truncated: Annotated[bool, Form(description="whisper-zh: translate what decodes of a cut file")] = False,
) -> Response:
    request = TranscriptionRequest.parse(
        state.model, model=model, task="translate", language=language, prompt=prompt,
        response_format=response_format, temperature=temperature, script="as-is", allow_truncated=allow_truncated,
    )
    return await _answer(state, file, request)


async def _answer(state: ServerState, upload: UploadFile, request: TranscriptionRequest) -> Response:
    """Admit the request to the model queue, decode its upload, and answer when the model is done."""
    options = request.options(state.config.decode, aligns_words=state.model.aligns_words)
    slot = _admit(state)
    try:
        audio = await run_in_threadpool(decode_upload, upload, state.config.max_audio_seconds,
                                        allow_truncated=request.allow_truncated)
    except BaseException:  # the audio was refused, or the client left while it was decoded
        slot.release()
        raise
    if request.stream:
        return stream_response(slot, audio, options, state.metrics, state.config.stream_piece_seconds,
                               labeller=state.transcriber.label_speakers if options.diarize else None)
    seconds = len(audio) / SAMPLE_RATE
    future = slot.submit(audio, options, seconds=seconds)  # the slot is released when the job is done
    del audio
    try:
        result = await asyncio.wrap_future(future)
    except QueueClosedError as exc:  # the server began shutting down between admission and submission
        raise queue_refused(exc) from exc
    if isinstance(result, AudioError):
        raise audio_error(result)
    state.metrics.audio_seconds.inc(seconds)
    return format_response(result, request.response_format, request.task, words=request.words)


def _admit(state: ServerState) -> Slot:
    try:
        return state.queue.acquire()
    except (QueueFullError, QueueClosedError) as exc:
        raise queue_refused(exc) from exc


def _model_card(state: ServerState, name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": state.model.created, "owned_by": "whisper-zh"}


# -- operations --------------------------------------------------------------------------------------------


@operations.get("/health")
async def health(state: State) -> dict[str, Any]:
    queue, uploads = state.queue, state.uploads
    return {
        "status": "ok",
        "model": state.model.name,
        "aliases": list(state.model.aliases),
        "engine": state.model.engine,
        "translation": state.model.multilingual,
        "auth_required": bool(state.config.api_key),
        "max_upload_bytes": state.config.max_upload_bytes,
        "max_audio_seconds": state.config.max_audio_seconds,
        "queue": {"waiting": queue.depth, "in_flight": queue.in_flight, "capacity": queue.max_pending},
        "uploads": {"in_progress": uploads.active, "capacity": uploads.limit},
        "live_streams": {"open": state.streams.open, "capacity": state.streams.limit},
    }


@operations.get("/metrics")
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=state.metrics.content_type)


# -- the web page -------------------------------------------------------------------------------------------


@page.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")


# The app mounts these; realtime.router is live transcription over WebSocket (/v1/realtime).
ROUTERS = (api, operations, page, realtime.router)

"""The live-transcription WebSocket endpoint, ``/v1/realtime``: OpenAI's realtime transcription events over a
:class:`~whisper_zh.live.LiveSession` per connection.

:data:`router` is one of the app's :data:`~whisper_zh.server.routes.ROUTERS`; the route reads the app's
:class:`~whisper_zh.server.state.ServerState`. Every stream decodes through the server's
:class:`~whisper_zh.server.queue.BatchingQueue` (one slot per stream, held while it is open), so N streams share the
one model and their decodes are batched together. Limits (:class:`~whisper_zh.server.config.LiveLimits`): at most
``max_streams`` streams (one more is refused with an ``error`` event and close code 1013), ``max_buffer_seconds`` of
audio held in memory per stream (what a client sends faster than real time beyond it waits on disk,
:mod:`~whisper_zh.server.spool`, up to ``max_spool_seconds``; the socket is always read, so keep-alive pings are
answered), an idle timeout and a speech timeout (a byte now and then does not hold a stream open), and a size limit
per message. On shutdown every stream is drained (:meth:`_Connection.drain`): told, no more audio taken, finished
with its final text. What a client may choose (format, rate, language, prompt, script) and the session shapes of
OpenAI's clients are read by :mod:`~whisper_zh.server.live_settings`.

Who may connect is decided by the HTTP guard's own rule, :func:`~whisper_zh.server.guard.access_refusal` (the guard
middleware sees only HTTP scopes, so this route applies it to the handshake): the browser origin (a cross-site page
must not open a stream to a local server; 403) and the server's API key (401), as an ``Authorization: Bearer``
header or, from a browser, which cannot set headers, in OpenAI's subprotocol ``openai-insecure-api-key.KEY``.
A stream keeps up to ``ServerConfig.workers`` decodes in the queue at once (overlapped decodes: see
:mod:`whisper_zh.live`); a client that goes away frees its slot at once, or as soon as the decodes already running
finish. The protocol is
documented in the README ("Live transcription") and docs/server.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import logging
import secrets
from collections import deque
from concurrent.futures import Future
from typing import Any

import numpy as np
import soxr
from fastapi import APIRouter, WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect, WebSocketState

from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.live import (
    Committed,
    Completed,
    DecodeRequest,
    LiveEvent,
    LiveOptions,
    LiveSession,
    NothingToCommit,
    Partial,
    SpeechStarted,
    SpeechStopped,
)
from whisper_zh.server.config import LiveLimits
from whisper_zh.server.errors import ApiError
from whisper_zh.server.guard import access_refusal, client_address, host_refusal
from whisper_zh.server.live_settings import SessionSettings, is_current_shape
from whisper_zh.server.queue import QueueClosedError, QueueFullError, Slot
from whisper_zh.server.security import PROXIED
from whisper_zh.server.spool import AudioSpool
from whisper_zh.server.state import ServerState, StreamGate
from whisper_zh.server.values import BadValue
from whisper_zh.writers import format_transcription

logger = logging.getLogger(__name__)

PATH = "/v1/realtime"
SUBPROTOCOL = "realtime"
KEY_SUBPROTOCOL = "openai-insecure-api-key."
BUFFER_SLACK_SECONDS = 5.0  # the buffer must hold the longest utterance and this much audio behind it

router = APIRouter()


def session_options(limits: LiveLimits) -> LiveOptions:
    """The sessions' options under ``limits``; ValueError if the buffer cap cannot hold the longest utterance."""
    options = limits.options if limits.options is not None else LiveOptions()
    if limits.max_buffer_seconds < options.max_item_seconds + BUFFER_SLACK_SECONDS:
        raise ValueError(f"max_buffer_seconds must be at least {options.max_item_seconds + BUFFER_SLACK_SECONDS:.0f}")
    return options


class _Refused(Exception):
    """A request the endpoint answers with an error event (code, message, param)."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


@router.websocket(PATH)
async def realtime(ws: WebSocket) -> None:
    state: ServerState = ws.app.state.server
    limits = state.config.live
    error = _access_refusal(ws, state)
    if error is not None:
        await _deny(ws, error)
        return
    await ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in ws.scope.get("subprotocols", ()) else None)
    try:
        settings = SessionSettings.from_query(ws.query_params, _headers(ws), state.config.decode, state.model.name,
                                              state.model.languages)
    except BadValue as exc:
        await _refuse(ws, exc.code, exc.message, 1008, exc.param)
        return
    refusal = _unavailable(state)
    if refusal is not None:
        await _refuse(ws, "unsupported", refusal, 1003)
        return
    if state.streams.closing:
        await _refuse(ws, "server_shutting_down", "the server is shutting down", 1012)
        return
    if not state.streams.try_enter():
        await _refuse(ws, "max_streams_reached", f"this server takes at most {limits.max_streams} live streams "
                      "at once; try again later", 1013)
        return
    try:
        slot = state.queue.acquire()
    except (QueueFullError, QueueClosedError) as exc:
        state.streams.leave()
        await _refuse(ws, "server_busy", str(exc), 1013)
        return
    try:
        connection = _Connection(ws, slot, state.streams, settings, limits, parallel=state.config.workers)
    except BaseException:
        slot.release()
        state.streams.leave()
        raise
    await connection.run()  # frees the stream and the slot, whatever happens


def _headers(ws: WebSocket) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in ws.scope["headers"]}


def _access_refusal(ws: WebSocket, state: ServerState) -> ApiError | None:
    """The guard's origin and key rule, applied to the handshake (a browser's key comes as a subprotocol)."""
    headers = _headers(ws)
    refusal = host_refusal(headers, state.config)
    if refusal is not None:
        return refusal
    keys = [p[len(KEY_SUBPROTOCOL):] for p in ws.scope.get("subprotocols", ()) if p.startswith(KEY_SUBPROTOCOL)]
    return access_refusal(headers, state.config, other_keys=keys, proxied=bool(ws.scope.get(PROXIED)),
                          client=client_address(ws.scope), key_failures=state.key_failures)


def _unavailable(state: ServerState) -> str | None:
    """Why this server cannot stream at all, or None."""
    decoder = getattr(state.transcriber, "decoder", None)
    if not getattr(decoder, "aligns_words", True):
        return f"live transcription needs the ctranslate2 engine, not {decoder.name}"
    if not state.config.live.max_streams:
        return "live transcription is off on this server (--max-streams 0)"
    return None


async def _deny(ws: WebSocket, error: ApiError) -> None:
    """Refuse the handshake with the HTTP status and OpenAI-shaped body the HTTP routes would answer (close code
    1008 where the server cannot send an HTTP answer to a WebSocket handshake)."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(error.response())
    else:
        await ws.close(code=1008, reason=error.code or "refused")


async def _refuse(ws: WebSocket, code: str, message: str, close_code: int, param: str | None = None) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await ws.send_text(json.dumps(_error_event("event_0", code, message, param), ensure_ascii=False))
        await ws.close(code=close_code, reason=code)


def _error_event(event_id: str, code: str, message: str, param: str | None = None,
                 type_: str = "invalid_request_error") -> dict[str, Any]:
    return {"type": "error", "event_id": event_id,
            "error": {"type": type_, "code": code, "message": message, "param": param, "event_id": None}}


class _Samples:
    """Client frames to 16 kHz float32 samples (soxr streams the resampling across frames)."""

    def __init__(self, settings: SessionSettings) -> None:
        self.format, self.rate = settings.input_format, settings.sample_rate
        self._resampler = soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32") \
            if self.rate != SAMPLE_RATE else None

    def convert(self, data: bytes) -> np.ndarray:
        width = 2 if self.format == "pcm16" else 4
        if not data or len(data) % width:
            raise _Refused("invalid_audio", f"audio must be whole {self.format} samples ({width} bytes each); got "
                           f"{len(data)} bytes")
        if self.format == "pcm16":
            samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        else:
            samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
            if not np.all(np.isfinite(samples)) or float(np.max(np.abs(samples))) > 64.0:
                raise _Refused("invalid_audio", "float32 audio holds NaN, infinite or out-of-range (|x| > 64) samples")
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        return samples


class _Connection:
    """One open stream: a reader (client frames into the session) and a decoder (the session's requests through
    the batching queue, up to ``parallel`` at once, events back), both stopped and everything freed when either
    ends."""

    def __init__(self, ws: WebSocket, slot: Slot, streams: StreamGate, settings: SessionSettings,
                 limits: LiveLimits, *, parallel: int = 1) -> None:
        self.ws, self.slot, self.streams, self.settings, self.limits = ws, slot, streams, settings, limits
        self.parallel = parallel
        self.released = False
        self.id = "sess_" + secrets.token_hex(8)
        self.session = LiveSession(settings.decode, session_options(limits), name="item_" + self.id[5:])
        self.samples = _Samples(settings)
        self.event_ids = itertools.count(1)
        self.send_lock = asyncio.Lock()
        self.wake = asyncio.Event()  # audio or a command arrived, or a decode finished
        self.spool = AudioSpool()  # audio received beyond max_buffer_seconds, waiting for room in the session
        self.flying: deque[tuple[DecodeRequest, Future]] = deque()  # requests in the queue, oldest first
        self.previous_item: str | None = None
        self.loop = asyncio.get_running_loop()
        self.finishing = False  # no more audio taken; the session finishes once the spool is empty
        self.last_message = self.last_speech = self.loop.time()
        self.told_finishing = False

    async def run(self) -> None:
        reader = decoder = None
        self.streams.connections.add(self)
        try:
            await self._send({"type": "transcription_session.created",
                              "session": self._describe()})
            reader = asyncio.ensure_future(self._read())
            decoder = asyncio.ensure_future(self._decode())
            await asyncio.wait({reader, decoder}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            tasks = [task for task in (reader, decoder) if task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.spool.close()
            # Before the close frame: a client that reconnects as soon as it sees the close finds the stream free.
            self._release()
            if self.ws.application_state != WebSocketState.DISCONNECTED:
                with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                    await self.ws.close(code=1000)

    def _release(self) -> None:
        """Free the stream now, and the slot now or when the decodes already inside the model finish."""
        if self.released:
            return
        self.released = True
        self.streams.leave()
        self.streams.connections.discard(self)
        running = [future for _, future in self.flying if not future.done() and not future.cancel()]
        self.flying.clear()
        if not running:
            self.slot.release()
            return

        def _one_done(_future: Future) -> None:  # called in the queue's worker threads
            if all(future.done() for future in running):  # Slot.release is idempotent: two last ones are fine
                self.slot.release()

        for future in running:
            future.add_done_callback(_one_done)

    # -- reading -------------------------------------------------------------------------------------------
    async def _read(self) -> None:
        """Client messages into the session, as fast as they come (never paused: see server/spool.py)."""
        limits = self.limits
        while True:
            if self._speechless():
                await self._error("speech_timeout", f"no speech heard for {limits.speech_timeout_s:.0f} s; closing")
                return
            now = self.loop.time()
            # a finishing stream waits for its last decodes, not for the client
            timeout = None if self.finishing else max(0.5, min(self.last_message + limits.idle_timeout_s,
                                                               self.last_speech + limits.speech_timeout_s) - now)
            try:
                message = await asyncio.wait_for(self.ws.receive(), timeout)
            except asyncio.TimeoutError:
                # the client may be waiting for the audio it sent ahead: not idle while the server is behind
                if self.loop.time() - self.last_message >= limits.idle_timeout_s and not self._behind():
                    await self._error("idle_timeout", f"no message for {limits.idle_timeout_s:.0f} s; closing")
                    return
                continue
            self.last_message = self.loop.time()
            if message["type"] == "websocket.disconnect":
                return
            try:
                await self._handle(message.get("bytes"), message.get("text"))
            except _Refused as exc:
                await self._error(exc.code, exc.message, exc.param)
            self.wake.set()

    async def _handle(self, data: bytes | None, text: str | None) -> None:
        size = len(data) if data is not None else len((text or "").encode())
        if size > self.limits.max_message_bytes:
            raise _Refused("message_too_large", f"a message may hold at most {self.limits.max_message_bytes} bytes")
        if data is not None:
            self._append(data)
            return
        try:
            event = json.loads(text or "")
        except json.JSONDecodeError as exc:
            raise _Refused("invalid_json", f"not a JSON event: {exc.msg}") from exc
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise _Refused("invalid_event", "an event is a JSON object with a 'type'", "type")
        await self._command(event)

    async def _command(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "input_audio_buffer.append":
            self._append(_base64(event.get("audio")))
        elif kind == "input_audio_buffer.commit":
            self.session.commit()
        elif kind == "input_audio_buffer.clear":
            self.session.clear()
            await self._send({"type": "input_audio_buffer.cleared"})
        elif kind in ("transcription_session.update", "session.update"):
            await self._update(event.get("session"))
        elif kind == "transcription_session.finish":
            self.finishing = True  # the decoder finishes the session once the spooled audio is in
        else:
            raise _Refused("unknown_event", f"unknown event type '{kind}'", "type")

    async def drain(self) -> None:
        """The server is shutting down: take no more audio, and finish with the text of what was received."""
        if self.finishing:
            return
        self.finishing = self.told_finishing = True
        self.wake.set()
        await self._error("server_shutting_down", "the server is shutting down: no more audio is taken; this "
                          "session finishes with the text of what it received", type_="server_error")

    def _speechless(self) -> bool:
        """No speech heard (nor audio left to look at) for the speech timeout: bytes alone do not hold a stream."""
        return (not self.finishing and self.loop.time() - self.last_speech > self.limits.speech_timeout_s
                and not self._behind())

    def _behind(self) -> bool:
        """Whether the server still has audio of this stream to transcribe."""
        return bool(len(self.spool) or self.flying or self.session.due())

    def _append(self, data: bytes) -> None:
        if self.finishing:
            if self.told_finishing:  # said once; a sender that goes on is not answered message by message
                return
            self.told_finishing = True
            raise _Refused("session_finishing", "the session is finishing; no more audio is taken")
        samples = self.samples.convert(data)
        if not len(samples):
            return
        seconds = len(samples) / SAMPLE_RATE
        if not len(self.spool) and self.session.held_seconds + seconds <= self.limits.max_buffer_seconds:
            self.session.append(samples)
            return
        if self.spool.seconds + seconds > self.limits.max_spool_seconds:
            self.finishing = self.told_finishing = True
            raise _Refused("buffer_full", f"this stream is {self.spool.seconds + self.session.held_seconds:.0f} s "
                           f"of audio ahead of its transcription, the most this server holds "
                           f"({self.limits.max_buffer_seconds + self.limits.max_spool_seconds:.0f} s); no more audio "
                           "is taken: what was received is transcribed and the session finishes")
        self.spool.write(samples)

    def _refill(self) -> None:
        """Move spooled audio into the session as far as its buffer has room; finish the session once the spool
        is empty, if the client asked for it (or a limit did)."""
        room = int((self.limits.max_buffer_seconds - self.session.held_seconds) * SAMPLE_RATE)
        if len(self.spool) and room > 0:
            self.session.append(self.spool.read(room))
        if self.finishing and not len(self.spool):
            self.session.finish()

    async def _update(self, session: Any) -> None:
        """Apply a session update whole or not at all (see :mod:`~whisper_zh.server.live_settings`); answered in
        the shape it came in."""
        try:
            settings = self.settings.updated(session)
        except BadValue as exc:
            raise _Refused(exc.code, exc.message, exc.param) from exc
        self.settings = settings
        if (settings.input_format, settings.sample_rate) != (self.samples.format, self.samples.rate):
            self.samples = _Samples(settings)
        self.session.set_options(settings.decode)
        current = is_current_shape(session)
        await self._send({"type": "session.updated" if current else "transcription_session.updated",
                          "session": self._describe(current=current)})

    def _describe(self, *, current: bool = False) -> dict[str, Any]:
        limits = self.limits
        return self.settings.describe(
            self.id, pause_ms=round(session_options(limits).pause_seconds * 1000), current=current,
            limits={"max_buffer_seconds": limits.max_buffer_seconds, "max_spool_seconds": limits.max_spool_seconds,
                    "idle_timeout_seconds": limits.idle_timeout_s, "max_message_bytes": limits.max_message_bytes})

    # -- decoding ------------------------------------------------------------------------------------------
    async def _decode(self) -> None:
        """Up to ``parallel`` of the session's requests in the queue at once; results accepted oldest first."""
        session = self.session
        while not session.done or self.flying:
            self._refill()
            if self.flying and (len(self.flying) >= self.parallel or self.flying[0][1].done()):
                if not await self._accept_oldest():
                    return
                continue
            # Over the cap, the spool waits for this loop: keep cutting the buffer down even without new audio.
            if not session.due() and (session.held_seconds <= self.limits.max_buffer_seconds or self.flying):
                await self._idle()
                continue
            step = await run_in_threadpool(session.prepare)
            await self._events(step.events)
            if step.request is not None:
                request = step.request
                future = self.slot.submit(request.audio, request.options, seconds=request.seconds, keep=True,
                                          gather=False)
                future.add_done_callback(self._wake_from_worker)
                self.flying.append((request, future))
        await self._finished()

    async def _idle(self) -> None:
        """Wait for audio or a command, or for a decode in flight to finish."""
        self.wake.clear()
        if self.session.due() or (self.flying and self.flying[0][1].done()):
            return
        await self.wake.wait()

    def _wake_from_worker(self, _future: Future) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self.loop.call_soon_threadsafe(self.wake.set)

    async def _accept_oldest(self) -> bool:
        """Hand the oldest request's result to the session and send its events; False when the server closes."""
        request, future = self.flying[0]
        try:
            result = await asyncio.wrap_future(future)
        except QueueClosedError:
            await self._error("server_shutting_down", "the server is shutting down", type_="server_error")
            return False
        except Exception as exc:  # noqa: BLE001 - a failed decode is reported, the stream goes on
            logger.exception("live decode failed")
            result = exc
        self.flying.popleft()
        await self._events(self.session.accept(request, result))
        return True

    async def _finished(self) -> None:
        result = self.session.transcription()
        await self._send({"type": "transcription_session.finished", "text": result.text,
                          "duration": round(result.duration, 3),
                          "segments": [{"id": s.id, "start": s.start, "end": s.end, "text": s.text}
                                       for s in result.segments],
                          "formats": {fmt: format_transcription(result, fmt) for fmt in ("txt", "srt", "vtt")}})
        # run() closes the socket once the stream and its slot are free

    async def _events(self, events: list[LiveEvent]) -> None:
        if any(not isinstance(event, NothingToCommit) for event in events):  # speech started, went on or ended
            self.last_speech = self.loop.time()
        for event in events:
            for message in self._wire(event):
                await self._send(message)

    def _wire(self, event: LiveEvent) -> list[dict[str, Any]]:
        """A session event as OpenAI's realtime transcription events (``partial`` is whisper-zh's own)."""
        if isinstance(event, SpeechStarted):
            return [{"type": "input_audio_buffer.speech_started", "item_id": event.item_id,
                     "audio_start_ms": round(event.start * 1000)}]
        if isinstance(event, SpeechStopped):
            return [{"type": "input_audio_buffer.speech_stopped", "item_id": event.item_id,
                     "audio_end_ms": round(event.end * 1000)}]
        if isinstance(event, Partial):
            return [{"type": "conversation.item.input_audio_transcription.partial", "item_id": event.item_id,
                     "content_index": 0, "text": event.text}]
        if isinstance(event, Committed):
            words = [{"word": u.text, "start": round(u.start, 3), "end": round(u.end, 3)} for u in event.units]
            return [{"type": "conversation.item.input_audio_transcription.delta", "item_id": event.item_id,
                     "content_index": 0, "delta": event.text, "words": words}]
        if isinstance(event, Completed):
            previous, self.previous_item = self.previous_item, event.item_id
            return [{"type": "input_audio_buffer.committed", "item_id": event.item_id, "previous_item_id": previous},
                    {"type": "conversation.item.input_audio_transcription.completed", "item_id": event.item_id,
                     "content_index": 0, "transcript": event.text, "start": event.start, "end": event.end}]
        if isinstance(event, NothingToCommit):
            return [_error_event("", "input_audio_buffer_commit_empty",
                                 "nothing to commit: no speech since the last item")]
        raise TypeError(f"unknown live event {event!r}")

    async def _error(self, code: str, message: str, param: str | None = None,
                     type_: str = "invalid_request_error") -> None:
        await self._send(_error_event("", code, message, param, type_))

    async def _send(self, message: dict[str, Any]) -> None:
        message = {**message, "event_id": f"event_{next(self.event_ids)}"}
        async with self.send_lock:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await self.ws.send_text(json.dumps(message, ensure_ascii=False))


def _base64(value: Any) -> bytes:
    if not isinstance(value, str) or not value:
        raise _Refused("invalid_audio", "input_audio_buffer.append needs 'audio': base64 samples", "audio")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _Refused("invalid_audio", "'audio' is not valid base64", "audio") from exc

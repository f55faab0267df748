"""Server-sent events for the web page: queued -> progress -> segments as each piece is done -> done.

Audio longer than ``piece_seconds`` is cut at pauses (the project's one VAD setting, :mod:`whisper_zh.vad`) into
pieces decoded one after another, so the first segments arrive while the rest is still being decoded; other
clients' requests interleave with the pieces. Event types follow OpenAI's streaming transcription
(``transcript.text.delta`` / ``.done``); ``transcript.queued``, ``.progress`` and ``.segment`` are whisper-zh's
additions. With diarization the pieces are decoded without it, and once the last one is done the whole recording
is diarized (speakers must be told apart across pieces): ``transcript.speakers`` then carries every segment again,
with its speaker, before ``.done``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

import numpy as np
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from whisper_zh.audio import SAMPLE_RATE, Spooled
from whisper_zh.decoding import DecodeOptions
from whisper_zh.diarize import DiarizeOptions
from whisper_zh.errors import AudioError
from whisper_zh.results import Segment, Transcription
from whisper_zh.server.errors import audio_error
from whisper_zh.server.formats import segment_json
from whisper_zh.server.metrics import ServerMetrics
from whisper_zh.server.queue import Slot
from whisper_zh.vad import cut_at_pauses, speech_regions
from whisper_zh.writers import format_transcription

logger = logging.getLogger(__name__)


Labeller = Callable[[Transcription, np.ndarray, DiarizeOptions], Transcription]


def stream_response(slot: Slot, audio: np.ndarray | Spooled, options: DecodeOptions, metrics: ServerMetrics,
                    piece_seconds: float, *, labeller: Labeller | None = None) -> StreamingResponse:
    """The SSE answer; it owns ``slot`` from here on and releases it however the stream ends. ``labeller``
    (Transcriber.label_speakers) diarizes the whole recording at the end where ``options`` ask for it."""
    stream = _PieceStream(slot, audio, options, metrics, piece_seconds)
    stream.labeller = labeller
    return _SlotStreamingResponse(slot, stream.events())


class _SlotStreamingResponse(StreamingResponse):
    """A streaming response that releases its slot even if the client leaves before the stream starts."""

    def __init__(self, slot: Slot, events: AsyncIterator[str]) -> None:
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.slot = slot

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.__exit__(None, None, None)  # releases it unless a piece was submitted (that one releases it)


class _PieceStream:
    def __init__(self, slot: Slot, audio: np.ndarray | Spooled, options: DecodeOptions, metrics: ServerMetrics,
                 piece_seconds: float) -> None:
        self.slot, self.audio, self.metrics = slot, audio, metrics
        self.diarize = options.diarize
        self.options = options.with_(diarize=None)  # pieces alone cannot tell speakers apart across pieces
        self.labeller: Labeller | None = None
        self.piece_seconds = piece_seconds
        self.seconds = len(audio) / SAMPLE_RATE
        self.updates: asyncio.Queue[float] = asyncio.Queue()
        self.segments: list[Segment] = []
        self.current: Future | None = None

    async def events(self) -> AsyncIterator[str]:
        try:
            yield _event({"type": "transcript.queued", "duration": round(self.seconds, 3)})
            bounds = await run_in_threadpool(piece_bounds, self.audio, self.piece_seconds)
            language = self.options.language or "zh"
            for index, (start, end) in enumerate(bounds):
                result: Any = None
                async for item in self._decode_piece(start, end):
                    if isinstance(item, str):
                        yield item
                    else:
                        result = item
                if isinstance(result, AudioError) and index and "silent" in str(result):
                    continue  # a piece of pure silence between pauses: no text
                if isinstance(result, BaseException):
                    yield _error_event(result)
                    return
                language = result.language
                for segment in result.segments:
                    for event in self._segment_events(segment, start / SAMPLE_RATE):
                        yield event
            result = Transcription("upload", self.segments, language, self.seconds)
            if self.diarize is not None and self.labeller is not None:
                result = await run_in_threadpool(self.labeller, result, self.audio, self.diarize)
                yield _event({"type": "transcript.speakers", "speakers": result.speakers,
                              "segments": [segment_json(s) for s in result.segments]})
            yield self._done_event(result)
        finally:
            self._release()

    async def _decode_piece(self, start: int, end: int) -> AsyncIterator[Any]:
        """Submit one piece; yields progress events while it decodes, then its result (or its exception)."""
        loop = asyncio.get_running_loop()
        size = (end - start) / SAMPLE_RATE

        def on_progress(fraction: float) -> None:
            loop.call_soon_threadsafe(self.updates.put_nowait, (start / SAMPLE_RATE + fraction * size) / self.seconds)

        self.current = self.slot.submit(self.audio[start:end], self.options, seconds=size, progress=on_progress,
                                        keep=True)
        waiting = asyncio.wrap_future(self.current)
        while not waiting.done():
            getter = asyncio.ensure_future(self.updates.get())
            finished, _ = await asyncio.wait({getter, waiting}, return_when=asyncio.FIRST_COMPLETED)
            if getter in finished:
                yield _progress_event(getter.result())
            else:
                getter.cancel()
        while not self.updates.empty():  # progress reported just before the piece finished
            yield _progress_event(self.updates.get_nowait())
        try:
            yield waiting.result()
        except Exception as exc:  # noqa: BLE001 - reported to the client as an error event
            yield exc

    def _segment_events(self, segment: Segment, offset: float) -> list[str]:
        segment = _shifted(segment, offset, len(self.segments))
        self.segments.append(segment)
        return [_event({"type": "transcript.text.delta", "delta": segment.text}),
                _event({"type": "transcript.segment", "segment": segment_json(segment)})]

    def _done_event(self, result: Transcription) -> str:
        self.metrics.audio_seconds.inc(self.seconds)
        return _event({
            "type": "transcript.text.done",
            "text": result.text,
            "language": result.language,
            "duration": round(result.duration, 3),
            "formats": {fmt: format_transcription(result, fmt) for fmt in ("txt", "srt", "vtt")},
        })

    def _release(self) -> None:
        """Release the slot now, or (a piece still in the model) when that piece is done."""
        current = self.current
        if current is not None and not current.done() and not current.cancel():
            current.add_done_callback(lambda _f: self.slot.release())
        else:
            self.slot.release()


def piece_bounds(audio: np.ndarray | Spooled, piece_seconds: float) -> list[tuple[int, int]]:
    """Sample ranges covering ``audio`` end to end, each about ``piece_seconds`` of it at most, cut in the
    middle of pauses between the spans :func:`whisper_zh.vad.cut_at_pauses` groups speech into."""
    if len(audio) <= piece_seconds * SAMPLE_RATE:
        return [(0, len(audio))]
    duration = len(audio) / SAMPLE_RATE
    spans = cut_at_pauses(speech_regions(audio), duration, piece_seconds, max_gap=float("inf"))
    cuts = [int((a.end + b.start) / 2 * SAMPLE_RATE) for a, b in zip(spans, spans[1:], strict=False)]
    edges = [0, *cuts, len(audio)]
    return [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]


def _shifted(segment: Segment, offset: float, new_id: int) -> Segment:
    words = None
    if segment.words:
        words = [replace(w, start=round(w.start + offset, 3), end=round(w.end + offset, 3)) for w in segment.words]
    return replace(
        segment, id=new_id, start=round(segment.start + offset, 3), end=round(segment.end + offset, 3), words=words
    )


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _progress_event(fraction: float) -> str:
    return _event({"type": "transcript.progress", "fraction": round(min(fraction, 1.0), 3)})


def _error_event(exc: BaseException) -> str:
    if isinstance(exc, AudioError):
        return _event({"type": "error", "error": audio_error(exc).body()["error"]})
    logger.error("streamed transcription failed", exc_info=exc)
    return _event({"type": "error", "error": {"message": f"internal error: {type(exc).__name__}"}})

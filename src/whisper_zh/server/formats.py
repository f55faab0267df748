"""A finished transcription in the response format a request asked for (OpenAI's json, text, srt, vtt,
verbose_json and diarized_json shapes; speakers, where diarization ran, in each)."""

from __future__ import annotations

import math
from typing import Any

from fastapi.responses import JSONResponse, PlainTextResponse, Response

from whisper_zh.results import Segment, Transcription
from whisper_zh.writers import format_transcription

_LANGUAGE_NAMES = {"zh": "chinese", "en": "english", "yue": "cantonese", "ja": "japanese", "ko": "korean"}


def format_response(t: Transcription, fmt: str, task: str, *, words: bool) -> Response:
    if fmt == "json":
        return JSONResponse({"text": t.text, "usage": _usage(t)})
    if fmt in ("text", "srt"):
        return PlainTextResponse(format_transcription(t, "txt" if fmt == "text" else "srt"))
    if fmt == "vtt":
        return PlainTextResponse(format_transcription(t, "vtt"), media_type="text/vtt")
    if fmt == "diarized_json":
        return JSONResponse(diarized_json(t, task))
    body: dict[str, Any] = {
        "task": task,
        "language": _LANGUAGE_NAMES.get(t.language or "", t.language or ""),
        "duration": round(t.duration, 3),
        "text": t.text,
        "segments": [segment_json(s) for s in t.segments],
        "usage": _usage(t),
    }
    if words:
        body["words"] = [
            {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} | ({"speaker": w.speaker} if w.speaker else {})
            for s in t.segments
            for w in (s.words or [])
        ]
    return JSONResponse(body)


def diarized_json(t: Transcription, task: str) -> dict[str, Any]:
    """OpenAI's diarized_json shape: segments of type transcript.text.segment, each with its speaker (whisper-zh
    names speakers SPEAKER_1, SPEAKER_2, ... in order of first appearance, as in its other formats)."""
    return {
        "task": task,
        "duration": round(t.duration, 3),
        "text": t.text,
        "segments": [{"type": "transcript.text.segment", "id": f"seg_{s.id}", "start": s.start, "end": s.end,
                      "text": s.text, "speaker": s.speaker} for s in t.segments],
        "speakers": t.speakers,
        "usage": _usage(t),
    }


def segment_json(s: Segment) -> dict[str, Any]:
    out = _segment_fields(s)
    if s.speaker:
        out["speaker"] = s.speaker
    return out


def _segment_fields(s: Segment) -> dict[str, Any]:
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


def _usage(t: Transcription) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(t.duration)}

"""Output formats for transcriptions: txt, srt, vtt, json, tsv."""

from __future__ import annotations

import json
from typing import Literal

from whisper_zh.results import Transcription

OutputFormat = Literal["txt", "srt", "vtt", "json", "tsv"]
FORMATS: tuple[str, ...] = ("txt", "srt", "vtt", "json", "tsv")


def format_timestamp(seconds: float, *, decimal: str = ".", always_hours: bool = True) -> str:
    """Seconds as HH:MM:SS.mmm (SRT uses ',' as the decimal mark)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    head = f"{hours:02d}:" if always_hours or hours else ""
    return f"{head}{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def format_transcription(transcription: Transcription, fmt: OutputFormat) -> str:
    """Render ``transcription`` in ``fmt``; the text ends with a newline."""
    segments = transcription.segments
    if fmt == "txt":
        return transcription.text + "\n"
    if fmt == "srt":
        blocks = [
            f"{i}\n{format_timestamp(s.start, decimal=',')} --> {format_timestamp(s.end, decimal=',')}\n{s.text}\n"
            for i, s in enumerate(segments, start=1)
        ]
        return "\n".join(blocks)
    if fmt == "vtt":
        blocks = [f"{format_timestamp(s.start)} --> {format_timestamp(s.end)}\n{s.text}\n" for s in segments]
        return "WEBVTT\n\n" + "\n".join(blocks)
    if fmt == "tsv":
        rows = ["start\tend\ttext"] + [
            f"{round(s.start * 1000)}\t{round(s.end * 1000)}\t{s.text.replace(chr(9), ' ')}" for s in segments
        ]
        return "\n".join(rows) + "\n"
    if fmt == "json":
        return json.dumps(transcription.to_dict(), ensure_ascii=False, indent=2) + "\n"
    raise ValueError(f"unknown output format '{fmt}': use one of {', '.join(FORMATS)}")

"""Output formats for transcriptions: txt, srt, vtt, json, tsv.

Plain text, JSON and TSV keep whole segments (sentences); SRT and WebVTT show cues cut for reading
(:mod:`whisper_zh.subtitles`). Times are valid by construction (:mod:`whisper_zh.segments`).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from whisper_zh.results import Transcription
from whisper_zh.subtitles import Cue, CueOptions, make_cues

OutputFormat = Literal["txt", "srt", "vtt", "json", "tsv"]
FORMATS: tuple[str, ...] = ("txt", "srt", "vtt", "json", "tsv")
CUE_FORMATS = ("srt", "vtt")


def format_timestamp(seconds: float, *, decimal: str = ".", always_hours: bool = True) -> str:
    """Seconds as HH:MM:SS.mmm (SRT uses ',' as the decimal mark)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    head = f"{hours:02d}:" if always_hours or hours else ""
    return f"{head}{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def format_transcription(transcription: Transcription, fmt: OutputFormat, cues: CueOptions | None = None) -> str:
    """Render ``transcription`` in ``fmt``; the text ends with a newline. ``cues`` sizes SRT/WebVTT cues."""
    if fmt == "txt":
        return transcription.text + "\n"
    if fmt in CUE_FORMATS:
        return _subtitles(make_cues(transcription, cues), fmt)
    if fmt == "tsv":
        rows = ["start\tend\ttext"] + [
            f"{round(s.start * 1000)}\t{round(s.end * 1000)}\t{s.text.replace(chr(9), ' ')}"
            for s in transcription.segments
        ]
        return "\n".join(rows) + "\n"
    if fmt == "json":
        return json.dumps(json_content(transcription), ensure_ascii=False, indent=2) + "\n"
    raise ValueError(f"unknown output format '{fmt}': use one of {', '.join(FORMATS)}")


def _subtitles(cues: list[Cue], fmt: str) -> str:
    if fmt == "srt":
        return "\n".join(
            f"{i}\n{format_timestamp(c.start, decimal=',')} --> {format_timestamp(c.end, decimal=',')}\n"
            + "\n".join(c.lines) + "\n"
            for i, c in enumerate(cues, start=1)
        )
    blocks = [f"{format_timestamp(c.start)} --> {format_timestamp(c.end)}\n" + "\n".join(c.lines) + "\n" for c in cues]
    return "WEBVTT\n\n" + "\n".join(blocks)


def json_content(transcription: Transcription) -> dict[str, Any]:
    """The transcription as JSON: segments without empty fields (no "tokens": [] or "words": null)."""
    out = transcription.to_dict()
    for segment in out["segments"]:
        for key in ("tokens", "words"):
            if not segment.get(key):
                segment.pop(key, None)
    return out

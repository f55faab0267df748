"""Output formats for transcriptions: txt, srt, vtt, json, tsv.

Plain text, JSON and TSV keep whole segments (sentences); SRT and WebVTT show cues cut for reading
(:mod:`whisper_zh.subtitles`). Times are valid by construction (:mod:`whisper_zh.segments`).

Where diarization labelled the speakers: txt starts a paragraph with ``[SPEAKER_1]`` at each change of speaker,
SRT cues start with ``[SPEAKER_1]``, WebVTT cues carry the voice tag ``<v Speaker 1>``, TSV has a speaker column
and JSON a ``speaker`` on each segment and word. Without diarization every format is as it was.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from whisper_zh.results import Transcription, join_texts
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
        return (_speaker_paragraphs(transcription) if transcription.speakers else transcription.text) + "\n"
    if fmt in CUE_FORMATS:
        return _subtitles(make_cues(transcription, cues), fmt)
    if fmt == "tsv":
        speakers = bool(transcription.speakers)
        rows = ["start\tend\t" + ("speaker\t" if speakers else "") + "text"] + [
            f"{round(s.start * 1000)}\t{round(s.end * 1000)}\t" + (f"{s.speaker or ''}\t" if speakers else "")
            + s.text.replace(chr(9), " ")
            for s in transcription.segments
        ]
        return "\n".join(rows) + "\n"
    if fmt == "json":
        return json.dumps(json_content(transcription), ensure_ascii=False, indent=2) + "\n"
    raise ValueError(f"unknown output format '{fmt}': use one of {', '.join(FORMATS)}")


def _speaker_paragraphs(transcription: Transcription) -> str:
    """One paragraph per change of speaker, opened by its label: ``[SPEAKER_1] ...``."""
    paragraphs: list[tuple[str | None, list[str]]] = []
    for segment in transcription.segments:
        if not paragraphs or paragraphs[-1][0] != segment.speaker:
            paragraphs.append((segment.speaker, []))
        paragraphs[-1][1].append(segment.text)
    return "\n\n".join(f"[{speaker}] {join_texts(texts)}" if speaker else join_texts(texts)
                        for speaker, texts in paragraphs)


def _subtitles(cues: list[Cue], fmt: str) -> str:
    if fmt == "srt":
        return "\n".join(
            f"{i}\n{format_timestamp(c.start, decimal=',')} --> {format_timestamp(c.end, decimal=',')}\n"
            + "\n".join(_labelled(c.lines, f"[{c.speaker}] " if c.speaker else "")) + "\n"
            for i, c in enumerate(cues, start=1)
        )
    blocks = [f"{format_timestamp(c.start)} --> {format_timestamp(c.end)}\n"
              + "\n".join(_labelled(c.lines, f"<v {voice_name(c.speaker)}>" if c.speaker else "")) + "\n"
              for c in cues]
    return "WEBVTT\n\n" + "\n".join(blocks)


def _labelled(lines: tuple[str, ...], label: str) -> list[str]:
    return [label + lines[0], *lines[1:]] if lines and label else list(lines)


def voice_name(speaker: str) -> str:
    """The WebVTT voice name of a speaker label: SPEAKER_1 -> Speaker 1."""
    return speaker.replace("SPEAKER_", "Speaker ") if speaker.startswith("SPEAKER_") else speaker


def json_content(transcription: Transcription) -> dict[str, Any]:
    """The transcription as JSON: segments without empty fields (no "tokens": [] or "words": null)."""
    out = transcription.to_dict()
    for segment in out["segments"]:
        for key in ("tokens", "words", "speaker"):
            if not segment.get(key):
                segment.pop(key, None)
        for word in segment.get("words") or []:
            if word.get("speaker") is None:
                word.pop("speaker", None)
    if transcription.speakers:
        out["speakers"] = transcription.speakers
    return out

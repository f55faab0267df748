"""Chunking: how audio is cut into (or packed into) Whisper's 30-second windows, and how text comes back out.

- A clip of up to 30 s is one chunk; longer audio is split by Silero VAD (faster-whisper's), as its batched
  pipeline does.
- Short clips are packed several to a window (Whisper's encoder always pays for 30 s), and their words are
  split back by time (:func:`make_packs`, :func:`unpack`).
- A VAD-split file's segments are rebuilt at pauses from word times, on the original timeline
  (:func:`regroup_by_pause`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from faster_whisper.transcribe import get_compression_ratio
from faster_whisper.vad import SpeechTimestampsMap, VadOptions, collect_chunks, get_speech_timestamps

from whisper_zh.audio import SAMPLE_RATE

logger = logging.getLogger(__name__)

CHUNK_SECONDS = 30.0
# Packing: clips up to PACK_MAX_CLIP seconds share one 30 s window, separated by PACK_GAP seconds of silence.
# Whisper's encoder always pays for 30 s, so a 5 s clip alone wastes five sixths of it.
PACK_MAX_CLIP = 20.0
PACK_GAP = 0.8
PACK_WINDOW = 29.0
# In VAD-split audio, a silence at least this long starts a new segment.
PAUSE_SECONDS = 0.5


@dataclass(eq=False)  # identity semantics: used as a dict key
class AudioFile:
    """One decoded input and what the pipeline learns about it."""

    index: int
    source: str
    audio: np.ndarray
    speech_map: SpeechTimestampsMap | None = None
    speech: list[dict[str, int]] | None = None  # VAD speech regions (samples), when VAD split the file
    language: str | None = None
    credited: float = 0.0  # seconds already reported to the progress callback


@dataclass
class Chunk:
    """Up to 30 s of audio to decode: part of one file, or a pack of several short files."""

    file: AudioFile
    audio: np.ndarray
    offset: float  # seconds, on the file's (speech-only, when VAD ran) timeline
    duration: float
    # For a pack of short clips: (file, start, end) of each clip on the pack's timeline.
    members: list[tuple[AudioFile, float, float]] | None = None


def split_file(file: AudioFile, *, use_vad: bool) -> list[Chunk]:
    """A clip of up to 30 s is one chunk; longer audio is cut by Silero VAD (or every 30 s without VAD)."""
    duration = len(file.audio) / SAMPLE_RATE
    if duration <= CHUNK_SECONDS:
        return [Chunk(file, file.audio, 0.0, duration)]
    if not use_vad:
        step = int(CHUNK_SECONDS * SAMPLE_RATE)
        return [
            Chunk(
                file,
                file.audio[i : i + step],
                i / SAMPLE_RATE,
                min(step, len(file.audio) - i) / SAMPLE_RATE,
            )
            for i in range(0, len(file.audio), step)
        ]
    speech = get_speech_timestamps(
        file.audio, VadOptions(max_speech_duration_s=CHUNK_SECONDS, min_silence_duration_ms=160)
    )
    if not speech:
        logger.info("%s: no speech found by VAD", file.source)
        return []
    file.speech_map = SpeechTimestampsMap(speech, SAMPLE_RATE)
    file.speech = speech
    audio_chunks, metadata = collect_chunks(file.audio, speech, max_duration=CHUNK_SECONDS)
    return [
        Chunk(file, audio, meta["offset"], meta["duration"])
        for audio, meta in zip(audio_chunks, metadata, strict=True)
        if len(audio)
    ]


def regroup_by_pause(
    raw: list[dict[str, Any]],
    speech: list[dict[str, int]],
    speech_map: SpeechTimestampsMap,
    *,
    keep_words: bool,
) -> list[dict[str, Any]]:
    """Rebuild a VAD-split file's segments from its words: one segment per stretch of speech between pauses of
    at least PAUSE_SECONDS, with times on the original timeline.

    A VAD chunk glues up to 30 s of speech together, so its decoded text spans many sentences and the silences
    between them; the words, mapped back through the speech map, say where each sentence really is.
    """
    regions: list[list[float]] = []
    for part in speech:
        begin, finish = part["start"] / SAMPLE_RATE, part["end"] / SAMPLE_RATE
        if regions and begin - regions[-1][1] < PAUSE_SECONDS and finish - regions[-1][0] <= CHUNK_SECONDS:
            regions[-1][1] = finish
        else:
            regions.append([begin, finish])
    buckets: list[list[tuple[dict[str, Any], dict[str, Any]]]] = [[] for _ in regions]
    for item in raw:
        for word in item.get("words") or []:
            index = speech_map.get_chunk_index(word["end"], is_end=True)
            end = speech_map.get_original_time(word["end"], index)
            start = speech_map.get_original_time(word["start"], index)
            # The end decides (see unpack); the start is clamped to the region, since the alignment stretches the
            # first word of a region back over the preceding pause.
            k = next((k for k, (_, finish) in enumerate(regions) if end <= finish + 0.15), len(regions) - 1)
            begin = regions[k][0]
            buckets[k].append(({**word, "start": min(max(start, begin), end), "end": end}, item))
    out = []
    for bucket in buckets:
        if not bucket:
            continue
        words = [word for word, _ in bucket]
        items = {id(item): item for _, item in bucket}.values()
        text = "".join(w["word"] for w in words)
        out.append(
            {
                "text": text,
                "start": words[0]["start"],
                "end": words[-1]["end"],
                "avg_logprob": float(np.mean([i["avg_logprob"] for i in items])),
                "no_speech_prob": float(np.mean([i["no_speech_prob"] for i in items])),
                "compression_ratio": get_compression_ratio(text) if text else 0.0,
                "tokens": [],
                "words": words if keep_words else None,
            }
        )
    return out


def make_packs(files: list[AudioFile]) -> list[Chunk]:
    """Greedily fill <= PACK_WINDOW-second windows with whole clips in input order, PACK_GAP of silence between."""
    packs: list[Chunk] = []
    gap = np.zeros(int(PACK_GAP * SAMPLE_RATE), np.float32)
    pieces: list[np.ndarray] = []
    members: list[tuple[AudioFile, float, float]] = []
    cursor = 0.0

    def close() -> None:
        audio = np.concatenate(pieces[:-1])  # drop the trailing gap
        packs.append(Chunk(members[0][0], audio, 0.0, len(audio) / SAMPLE_RATE, list(members)))

    for file in files:
        seconds = len(file.audio) / SAMPLE_RATE
        if members and (cursor + seconds > PACK_WINDOW or file.language != members[0][0].language):
            close()
            pieces, members, cursor = [], [], 0.0
        members.append((file, cursor, cursor + seconds))
        pieces += [file.audio, gap]
        cursor += seconds + PACK_GAP
    if members:
        close()
    return packs


def unpack(
    pack: Chunk, subsegments: list[dict[str, Any]], *, keep_words: bool
) -> dict[AudioFile, list[dict[str, Any]] | None]:
    """Split a pack's words back into its clips; None marks a clip to decode again on its own.

    A word goes to the clip in whose span its *end* falls: the alignment stretches the first word after a gap
    back over the silence, so start times and midpoints land in the previous clip while end times do not.
    """
    members = pack.members or []
    words: list[list[dict[str, Any]]] = [[] for _ in members]
    for segment in subsegments:
        for word in segment.get("words") or []:
            for k, (_, _begin, finish) in enumerate(members):
                if word["end"] <= finish + 0.15 or k == len(members) - 1:
                    words[k].append(word)
                    break
    out: dict[AudioFile, list[dict[str, Any]] | None] = {}
    template = subsegments[0] if subsegments else {"avg_logprob": 0.0, "no_speech_prob": 0.0}
    for (file, begin, finish), assigned in zip(members, words, strict=True):
        text = "".join(w["word"] for w in assigned).strip()
        seconds = finish - begin
        rate = len(text) / seconds
        if not text or (seconds > 2.0 and rate < 0.7) or rate > 12.0:
            out[file] = None  # nothing or implausibly little/much text: the split cannot be trusted
            continue
        shifted = [
            {
                **w,
                "start": min(max(w["start"] - begin, 0.0), seconds),
                "end": min(max(w["end"] - begin, 0.0), seconds),
            }
            for w in assigned
        ]
        out[file] = [
            {
                "text": text,
                "start": shifted[0]["start"],
                "end": shifted[-1]["end"],
                "avg_logprob": template["avg_logprob"],
                "no_speech_prob": template["no_speech_prob"],
                "compression_ratio": get_compression_ratio(text),
                "tokens": [],
                "words": shifted if keep_words else None,
            }
        ]
    return out

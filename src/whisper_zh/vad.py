"""Voice activity: where the speech is in a recording, and where it can be cut.

The detector is faster-whisper's Silero VAD (its public ``faster_whisper.vad`` module); this module owns the
one set of VAD settings the project uses, so the transcriber's windows and the server's streamed pieces cut
audio the same way. Everything here works in seconds on the recording's own timeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps, get_vad_model

from whisper_zh.audio import SAMPLE_RATE

# The project's VAD settings. A silence of 160 ms ends a speech region (Mandarin read speech pauses briefly
# between clauses); regions are padded by 400 ms each side (Silero's default) so that soft onsets and final
# syllables stay inside.
VAD_OPTIONS = VadOptions(min_silence_duration_ms=160, speech_pad_ms=400, max_speech_duration_s=30.0)
SPEECH_PAD = VAD_OPTIONS.speech_pad_ms / 1000  # seconds of padding on each side of a region
# Speaker diarization wants speech, not the pauses around it: a window that reaches into the next turn's first
# syllables would mix two voices. Pauses between turns are often 0.2 s or less, so regions are barely padded.
DIARIZE_VAD_OPTIONS = VadOptions(min_silence_duration_ms=100, speech_pad_ms=30, max_speech_duration_s=30.0)


@dataclass(frozen=True)
class Span:
    """A stretch of a recording, in seconds."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


def load_detector() -> None:
    """Load the detector now (it is cached), so a broken install fails at start-up, not at the first request."""
    get_vad_model()


def speech_regions(audio: np.ndarray, options: VadOptions = VAD_OPTIONS) -> list[Span]:
    """The stretches of ``audio`` (16 kHz mono) that hold speech, in time order, none longer than 30 s."""
    found = get_speech_timestamps(audio, options, sampling_rate=SAMPLE_RATE)
    return [Span(part["start"] / SAMPLE_RATE, part["end"] / SAMPLE_RATE) for part in found]


def cut_at_pauses(regions: list[Span], duration: float, max_seconds: float, *, max_gap: float) -> list[Span]:
    """Group speech regions into spans of at most ``max_seconds`` of the original recording.

    A span runs from the start of its first region to the end of its last one, silences inside it kept (the
    model hears the pauses, which is where it puts punctuation). A new span starts when the next region would
    make it too long, or after a silence longer than ``max_gap`` (long silence invites hallucination). Spans
    are cut only in silence; a region longer than ``max_seconds`` (the VAD caps them at 30 s) is a span alone.
    """
    spans: list[Span] = []
    for region in regions:
        start, end = max(0.0, region.start), min(duration, region.end)
        if end <= start:
            continue
        if spans and end - spans[-1].start <= max_seconds and start - spans[-1].end <= max_gap:
            spans[-1] = Span(spans[-1].start, end)
        else:
            spans.append(Span(start, end))
    return spans

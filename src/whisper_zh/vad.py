"""Voice activity: where the speech is in a recording, and where it can be cut.

The detector is faster-whisper's Silero VAD (its public ``faster_whisper.vad`` module); this module owns the
one set of VAD settings the project uses, so the transcriber's windows and the server's streamed pieces cut
audio the same way. Everything here works in seconds on the recording's own timeline.

A long recording (or a :class:`~whisper_zh.audio.Spooled` one) is read in blocks: faster-whisper's
``get_speech_timestamps`` takes the whole signal and makes two padded copies of it (2.2 times its size: 1 GB more
for two hours of audio), so for those the detector's model is run block by block with its state carried over, which
gives the same speech probabilities, and Silero's rule that turns them into regions is applied here
(:func:`_regions`, the same rule as faster-whisper 1.2's).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps, get_vad_model

from whisper_zh.audio import SAMPLE_RATE, Spooled

# The project's VAD settings. A silence of 160 ms ends a speech region (Mandarin read speech pauses briefly
# between clauses); regions are padded by 400 ms each side (Silero's default) so that soft onsets and final
# syllables stay inside.
VAD_OPTIONS = VadOptions(min_silence_duration_ms=160, speech_pad_ms=400, max_speech_duration_s=30.0)
SPEECH_PAD = VAD_OPTIONS.speech_pad_ms / 1000  # seconds of padding on each side of a region
# Speaker diarization wants speech, not the pauses around it: a window that reaches into the next turn's first
# syllables would mix two voices. Pauses between turns are often 0.2 s or less, so regions are barely padded.
DIARIZE_VAD_OPTIONS = VadOptions(min_silence_duration_ms=100, speech_pad_ms=30, max_speech_duration_s=30.0)
# An array longer than this (seconds) is read in blocks, as a spooled recording always is.
WHOLE_SECONDS = 600.0
_FRAME = 512  # samples the detector judges at once
_CONTEXT = 64  # samples of the frame before that it hears with each frame
# Frames per model call (32 s of audio: 2 MB of samples and their context). faster-whisper's SileroVADModel runs
# 10,000 at a time; with the state carried over, any size gives the same probabilities (tests/test_long_audio.py).
_BATCH = 1000


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


def speech_regions(audio: np.ndarray | Spooled, options: VadOptions = VAD_OPTIONS) -> list[Span]:
    """The stretches of ``audio`` (16 kHz mono) that hold speech, in time order, none longer than 30 s."""
    if isinstance(audio, np.ndarray) and len(audio) <= WHOLE_SECONDS * SAMPLE_RATE:
        found = get_speech_timestamps(audio, options, sampling_rate=SAMPLE_RATE)
    else:
        found = _regions(_probabilities(_blocks(audio)), len(audio), options)
    return [Span(part["start"] / SAMPLE_RATE, part["end"] / SAMPLE_RATE) for part in found]


def _blocks(audio: np.ndarray | Spooled) -> Iterator[np.ndarray]:
    """``audio`` in blocks of _BATCH frames, the last one padded with zeros to a whole frame (one more frame
    where it is whole already, as faster-whisper pads)."""
    size = _BATCH * _FRAME
    total = len(audio)
    for start in range(0, total, size):
        block = np.asarray(audio[start : start + size], dtype=np.float32)
        if start + size >= total:
            block = np.pad(block, (0, _FRAME - len(block) % _FRAME))
        yield block


def _probabilities(blocks: Iterator[np.ndarray]) -> np.ndarray:
    """Speech probability of each 512-sample frame: SileroVADModel.__call__ (faster-whisper 1.2) run a block of
    frames at a time, with the model's state and each frame's 64 samples of context carried across blocks."""
    session = get_vad_model().session
    h = np.zeros((1, 1, 128), dtype=np.float32)
    c = np.zeros((1, 1, 128), dtype=np.float32)
    tail = np.zeros(_CONTEXT, dtype=np.float32)
    out = []
    for block in blocks:
        frames = block.reshape(-1, _FRAME)
        context = np.concatenate([tail[None, :], frames[:-1, -_CONTEXT:]])
        tail = frames[-1, -_CONTEXT:].copy()
        output, h, c = session.run(None, {"input": np.concatenate([context, frames], 1), "h": h, "c": c})
        out.append(np.asarray(output, dtype=np.float32).reshape(-1))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _regions(probabilities: np.ndarray, length: int, options: VadOptions = VAD_OPTIONS) -> list[dict[str, int]]:
    """Speech regions (in samples) from frame probabilities under ``options``: Silero VAD's rule, as
    ``faster_whisper.vad.get_speech_timestamps`` applies it (that function also runs the model on the whole signal
    at once, which is what this module avoids for long audio)."""
    frame, rate = _FRAME, SAMPLE_RATE
    threshold = options.threshold
    negative = options.neg_threshold if options.neg_threshold is not None else max(threshold - 0.15, 0.01)
    min_speech = rate * options.min_speech_duration_ms / 1000
    pad = rate * options.speech_pad_ms / 1000
    max_speech = rate * options.max_speech_duration_s - frame - 2 * pad
    min_silence = rate * options.min_silence_duration_ms / 1000
    min_silence_at_max = rate * 98 / 1000
    triggered, speeches, current = False, [], {}
    temp_end = prev_end = next_start = 0
    for i, p in enumerate(probabilities.tolist()):
        at = frame * i
        if p >= threshold and temp_end:
            temp_end = 0
            if next_start < prev_end:
                next_start = at
        if p >= threshold and not triggered:
            triggered, current["start"] = True, at
            continue
        if triggered and at - current["start"] > max_speech:
            if prev_end:
                current["end"] = prev_end
                speeches.append(current)
                current = {}
                if next_start < prev_end:
                    triggered = False
                else:
                    current["start"] = next_start
                prev_end = next_start = temp_end = 0
            else:
                current["end"] = at
                speeches.append(current)
                current, triggered = {}, False
                prev_end = next_start = temp_end = 0
                continue
        if p < negative and triggered:
            temp_end = temp_end or at
            if at - temp_end > min_silence_at_max:
                prev_end = temp_end
            if at - temp_end < min_silence:
                continue
            current["end"] = temp_end
            if current["end"] - current["start"] > min_speech:
                speeches.append(current)
            current, triggered = {}, False
            prev_end = next_start = temp_end = 0
    if current and length - current["start"] > min_speech:
        current["end"] = length
        speeches.append(current)
    return _padded(speeches, pad, length)


def _padded(speeches: list[dict[str, int]], pad: float, length: int) -> list[dict[str, int]]:
    """Regions widened by ``pad`` samples each side, or by half the silence to the next where that is shorter."""
    for i, speech in enumerate(speeches):
        if i == 0:
            speech["start"] = int(max(0, speech["start"] - pad))
        if i != len(speeches) - 1:
            silence = speeches[i + 1]["start"] - speech["end"]
            if silence < 2 * pad:
                speech["end"] += int(silence // 2)
                speeches[i + 1]["start"] = int(max(0, speeches[i + 1]["start"] - silence // 2))
            else:
                speech["end"] = int(min(length, speech["end"] + pad))
                speeches[i + 1]["start"] = int(max(0, speeches[i + 1]["start"] - pad))
        else:
            speech["end"] = int(min(length, speech["end"] + pad))
    return speeches


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

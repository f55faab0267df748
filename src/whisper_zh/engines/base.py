"""What every decoding engine promises: the :class:`Decoder` protocol and the typed results it returns.

An engine turns windows of at most 30 s of 16 kHz audio into text with times. Times in a
:class:`RawSegment` are seconds from the start of the window it was decoded from; the transcriber places them
on the recording's timeline. Nothing outside ``engines/`` knows which library does the decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import numpy as np

from whisper_zh.decoding import DecodeOptions


@dataclass(frozen=True)
class RawWord:
    """One aligned word (for Chinese, usually one or two characters) as the engine returned it."""

    start: float
    end: float
    text: str
    probability: float

    def shifted(self, offset: float) -> RawWord:
        return replace(self, start=self.start + offset, end=self.end + offset)


@dataclass(frozen=True)
class RawSegment:
    """Decoded text for a stretch of a window, with the decoder's confidence measures."""

    text: str
    start: float
    end: float
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float = 0.0
    tokens: tuple[int, ...] = ()
    words: tuple[RawWord, ...] | None = None
    temperature: float = 0.0

    def shifted(self, offset: float) -> RawSegment:
        """The same segment on a timeline that starts ``offset`` seconds earlier."""
        words = None if self.words is None else tuple(w.shifted(offset) for w in self.words)
        return replace(self, start=self.start + offset, end=self.end + offset, words=words)


@dataclass(frozen=True)
class Decoded:
    """What one window decoded to: its segments, and how far into the window they are final.

    With timestamps, Whisper may stop inside the window with an unfinished segment; that text is dropped and
    ``complete`` says where it started, so the caller decodes the rest again from there (as Whisper's own
    long-form loop seeks to the last timestamp). Otherwise ``complete`` is the window's duration."""

    segments: tuple[RawSegment, ...]
    complete: float


TIME_PRECISION = 0.02  # seconds per Whisper timestamp token


def split_at_timestamps(
    tokens: Sequence[int], timestamp_begin: int, duration: float
) -> tuple[list[tuple[float, float, list[int]]], float]:
    """Whisper's reading of timestamp tokens: (start, end, text tokens) per segment, and how far the text is final.

    A segment is the text between two timestamps; consecutive timestamps close one segment and open the next.
    Text after the last pair is an unfinished segment and is left out, unless a single timestamp closes the
    output (then nothing follows). With no timestamp pair the whole output is one segment over the window."""
    closed = len(tokens) >= 2 and tokens[-2] < timestamp_begin <= tokens[-1]
    pairs = [i for i in range(1, len(tokens)) if tokens[i] >= timestamp_begin and tokens[i - 1] >= timestamp_begin]
    text = [t for t in tokens if t < timestamp_begin]
    if not pairs:
        stamps = [t for t in tokens if t >= timestamp_begin]
        end = (stamps[-1] - timestamp_begin) * TIME_PRECISION if stamps and stamps[-1] > timestamp_begin else duration
        return ([(0.0, min(end, duration), text)] if text else []), duration
    cuts = pairs + ([len(tokens)] if closed else [])
    segments, last = [], 0
    for cut in cuts:
        part = tokens[last:cut]
        start = (part[0] - timestamp_begin) * TIME_PRECISION if part[0] >= timestamp_begin else 0.0
        end = (part[-1] - timestamp_begin) * TIME_PRECISION if part[-1] >= timestamp_begin else duration
        words = [t for t in part if t < timestamp_begin]
        if words:
            segments.append((min(start, duration), min(end, duration), words))
        last = cut
    complete = duration if closed else min(duration, (tokens[pairs[-1] - 1] - timestamp_begin) * TIME_PRECISION)
    return segments, complete


@runtime_checkable
class Decoder(Protocol):
    """A loaded Whisper model that decodes windows of audio. Implemented in :mod:`whisper_zh.engines`."""

    name: str  # "ctranslate2" or "transformers": what reports record as the engine that ran
    model_path: str  # where the weights it runs were loaded from
    storage_type: str  # how the weights are stored on disk (float16, float32, int8, ...)
    compute_type: str  # the type the engine computes in
    device: str  # where it runs: "cpu" or "cuda" ("auto" resolved)
    aligns_words: bool  # whether decode(..., words=True) works (packing and word times need it)

    @property
    def is_multilingual(self) -> bool: ...

    @property
    def languages(self) -> frozenset[str]:
        """Language codes this model's tokenizer knows ({"en"} for an English-only model)."""
        ...

    def detect_language(self, audio: np.ndarray) -> str:
        """The most likely language code of the first 30 s of ``audio``."""
        ...

    def decode(
        self, windows: Sequence[np.ndarray], options: DecodeOptions, *, language: str, words: bool,
        timestamps: bool = False, contexts: Sequence[str | None] | None = None,
    ) -> list[Decoded]:
        """Decode a batch of windows (each at most 30 s) at ``options.temperature[0]``; one result per window.
        With ``words``, every segment carries aligned word times; with ``timestamps``, Whisper's timestamp tokens
        split the window into segments (engines without them return one segment per window).
        ``contexts[i]``, when given, is the text that came before window i: it follows the initial prompt in
        that window's previous-text prompt."""
        ...

    def decode_with_fallback(
        self, window: np.ndarray, options: DecodeOptions, *, language: str, words: bool, timestamps: bool = False,
        context: str | None = None,
    ) -> Decoded:
        """Decode one window again, raising the temperature through ``options.temperature`` while the output
        is too repetitive or too unsure (the engine's own library does the fallback); the whole window."""
        ...

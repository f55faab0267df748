"""From decoded pieces to a recording's segments: sentences in time order, clean text, times that are always valid.

The transcriber hands over, for one recording, every :class:`~whisper_zh.engines.RawSegment` decoded from it,
already placed on the recording's timeline. Here they become :class:`~whisper_zh.results.Segment` objects:

1. Pieces are put in time order, and so are the words inside them (windows are decoded in batches sorted by
   length, so arrival order says nothing about time).
2. Where words were aligned, segments are rebuilt from them: a segment ends at sentence-final punctuation, at a
   pause of at least :data:`PAUSE_SECONDS`, or at the edge of a decoding window. A word's start is never
   earlier than the speech region holding its end (the aligner stretches the first word after a pause back
   over the silence).
3. Text is cleaned: repetition loops cut, script converted (OpenCC), half-width marks in Chinese text made
   full-width.
4. Times are made valid here, once, for every output format: 0 <= start < end <= duration, each segment
   starting no earlier than the previous one ends, each word inside its segment.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

from whisper_zh.decoding import DecodeOptions, compression_ratio, cut_repetition_loop
from whisper_zh.engines.base import RawSegment, RawWord
from whisper_zh.normalize import SENTENCE_MARKS, arabic_numbers, chinese_punctuation, convert_script
from whisper_zh.results import Segment, Word, join_texts
from whisper_zh.vad import Span

logger = logging.getLogger(__name__)

# A silence between two words at least this long ends a segment (a sentence the model left unpunctuated);
# shorter pauses are clause pauses, where subtitle cues may still be cut (see whisper_zh.subtitles).
PAUSE_SECONDS = 0.8
SENTENCE_END = tuple(SENTENCE_MARKS)
# Shortest time span a segment or word is given when the aligner returns none (seconds; also the rounding step).
MIN_SPAN = 0.01


@dataclass(frozen=True)
class Piece:
    """A decoded segment on the recording's timeline, with the decoding window it came from."""

    segment: RawSegment
    window: float  # where the window it was decoded from starts; a segment never spans two windows


def build_segments(
    pieces: Iterable[Piece], *, duration: float, options: DecodeOptions, language: str | None,
    regions: list[Span] | None = None, source: str = "",
) -> list[Segment]:
    """The recording's segments (see the module docstring); ``regions`` are its speech regions when VAD ran."""
    ordered = sorted(pieces, key=lambda p: (p.window, p.segment.start, p.segment.end))
    if ordered and all(p.segment.words is not None for p in ordered):
        groups = _sentences(_timed_words(ordered, regions))
    else:
        groups = [(p.segment, None) for p in ordered]
    segments: list[Segment] = []
    floor = 0.0
    for raw, words in groups:
        segment = _clean(raw, words, options, language, source)
        if segment is None:
            continue
        if segments and floor >= duration - MIN_SPAN:  # no time left after the previous segment: join it
            segments[-1].text = join_texts([segments[-1].text, segment.text])
            continue
        segment = _valid(segment, floor, duration, len(segments))
        segments.append(segment)
        floor = segment.end
    return segments


def _timed_words(pieces: list[Piece], regions: list[Span] | None) -> list[tuple[RawWord, Piece]]:
    """Every word in time order with the piece it came from, starts clamped to their speech region."""
    starts = [r.start for r in regions or []]
    out = []
    for piece in pieces:
        for word in sorted(piece.segment.words or (), key=lambda w: (w.start, w.end)):
            if regions:
                k = max(0, bisect.bisect_right(starts, word.end) - 1)
                word = RawWord(min(max(word.start, regions[k].start), word.end), word.end, word.text, word.probability)
            out.append((word, piece))
    return out


def _sentences(words: list[tuple[RawWord, Piece]]) -> list[tuple[RawSegment, list[RawWord]]]:
    """Group words into segments at sentence ends, pauses and window edges."""
    groups: list[list[tuple[RawWord, Piece]]] = []
    for word, piece in words:
        if groups:
            last_word, last_piece = groups[-1][-1]
            ends = last_word.text.strip().endswith(SENTENCE_END)
            pause = word.start - last_word.end >= PAUSE_SECONDS and not _inside_number(last_word.text, word.text)
            if not (ends or pause or piece.window != last_piece.window):
                groups[-1].append((word, piece))
                continue
        groups.append([(word, piece)])
    out = []
    for group in groups:
        first = group[0][1].segment
        text = "".join(w.text for w, _ in group)
        raw = RawSegment(text, group[0][0].start, group[-1][0].end, first.avg_logprob, first.no_speech_prob,
                         compression_ratio(text), temperature=first.temperature)
        out.append((raw, [w for w, _ in group]))
    return out


def _inside_number(before: str, after: str) -> bool:
    """Whether a pause falls inside a written number (3. | 5, 1, | 000), where no segment may end."""
    before, after = before.strip(), after.strip()
    return bool(before and after and after[0].isdigit() and (before[-1].isdigit() or before[-1] in ".,"))


def _clean(
    raw: RawSegment, words: list[RawWord] | None, options: DecodeOptions, language: str | None, source: str
) -> Segment | None:
    text = raw.text.strip()
    if options.repetition_guard:
        text, was_cut = cut_repetition_loop(text)
        if was_cut:
            logger.warning("%s: cut a repetition loop at %.1f s", source, raw.start)
    script = options.script_for(language)
    text = _tidy(text, script)
    if options.numbers and script != "as-is":
        text = arabic_numbers(text)
    if not text:
        return None
    kept = None
    if options.word_timestamps and words is None and raw.words is not None:
        words = list(raw.words)
    if options.word_timestamps and words:
        kept = [Word(w.start, w.end, _tidy(w.text, script, strip=False), w.probability) for w in words]
    return Segment(
        id=0, start=raw.start, end=raw.end, text=text, avg_logprob=float(raw.avg_logprob),
        no_speech_prob=float(raw.no_speech_prob), compression_ratio=compression_ratio(text),
        tokens=list(raw.tokens), words=kept, temperature=raw.temperature,
    )


def _tidy(text: str, script: str, *, strip: bool = True) -> str:
    text = convert_script(text.strip() if strip else text, script)  # type: ignore[arg-type]
    return chinese_punctuation(text) if script != "as-is" else text


def _valid(segment: Segment, floor: float, duration: float, index: int) -> Segment:
    """Clamp ``segment`` (and its words) into [floor, duration] with start < end, rounded to milliseconds."""
    start, end = _span(segment.start, segment.end, floor, duration)
    words = None
    if segment.words is not None:
        words, word_floor = [], start
        for w in segment.words:
            w_start, w_end = _span(w.start, w.end, word_floor, end)
            words.append(Word(w_start, w_end, w.word, w.probability))
            word_floor = w_start
    segment.id, segment.start, segment.end, segment.words = index, start, end, words
    return segment


def _span(start: float, end: float, lo: float, hi: float) -> tuple[float, float]:
    """(start, end) inside [lo, hi], rounded to ms, with start < end whenever hi - lo allows it."""
    lo, hi = round(float(lo), 3), math.floor(float(max(hi, lo)) * 1000) / 1000  # never past the audio's end
    start = min(max(round(float(start), 3), lo), hi)
    end = min(max(round(float(end), 3), start), hi)
    if end - start < MIN_SPAN / 10:  # empty: give it the smallest span the room allows
        end = min(start + MIN_SPAN, hi)
        start = min(start, max(lo, end - MIN_SPAN))
    return start, end

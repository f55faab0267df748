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

It also finds speech that no segment covers (:func:`uncovered_speech`), which the transcriber decodes again on its
own (the safety net), and keeps only what that second pass heard there (:func:`pieces_within`).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from whisper_zh.decoding import DecodeOptions, compression_ratio, cut_repetition_loop, loop_start
from whisper_zh.engines.base import RawSegment, RawWord
from whisper_zh.normalize import SENTENCE_MARKS, arabic_numbers, chinese_punctuation, convert_script
from whisper_zh.results import Segment, Word, join_texts
from whisper_zh.vad import SPEECH_PAD, Span

logger = logging.getLogger(__name__)

# A silence between two words at least this long ends a segment (a sentence the model left unpunctuated);
# shorter pauses are clause pauses, where subtitle cues may still be cut (see whisper_zh.subtitles).
PAUSE_SECONDS = 0.8
SENTENCE_END = tuple(SENTENCE_MARKS)
# Shortest time span a segment or word is given when the aligner returns none (seconds; also the rounding step).
MIN_SPAN = 0.01
# Speech that voice activity detection hears for at least this long (seconds), with no segment over it, was
# skipped by the decoder: the transcriber decodes it again on its own. Shorter stretches are a word's edge or a
# breath, which VAD's regions take in.
UNCOVERED_SECONDS = 1.0
# A word decoded again next to the first pass's words repeats one of them when the two lie this close (seconds).
WORD_SLACK = 0.5


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
    # in time order inside each window: speech decoded again by the transcriber's safety net joins the window
    # that skipped it (pieces_within), between that window's words (a no-op otherwise: a window's words come
    # back in time order)
    out.sort(key=lambda wp: (wp[1].window, wp[0].start))
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


def segment_spans(pieces: Iterable[Piece], regions: list[Span] | None) -> list[tuple[float, float]]:
    """(start, end) of the segments :func:`build_segments` would make of ``pieces``, before their text is cleaned.

    A repetition loop covers nothing past its first occurrence (the cleaning cuts the rest, and the speech under
    it was not transcribed)."""
    ordered = sorted(pieces, key=lambda p: (p.window, p.segment.start, p.segment.end))
    if not (ordered and all(p.segment.words is not None for p in ordered)):
        return sorted((p.segment.start, p.segment.end) for p in ordered if p.segment.text.strip())
    spans = []
    for raw, words in _sentences(_timed_words(ordered, regions)):
        if not raw.text.strip():
            continue
        cut, end, written = loop_start(raw.text), raw.end, 0
        if cut is not None:
            for word in words:
                written += len(word.text)
                if written >= cut:
                    end = word.end
                    break
        spans.append((raw.start, end))
    return sorted(spans)


def uncovered_speech(regions: list[Span], spans: list[tuple[float, float]], duration: float, *,
                     least: float = UNCOVERED_SECONDS) -> list[Span]:
    """Stretches of speech at least ``least`` seconds long that no span (of a segment) covers, in time order.
    Speech is a VAD region without the padding VAD adds each side (SPEECH_PAD, where the recording goes on);
    uncovered parts of neighbouring regions less than ``least`` apart, with no span between them, are one stretch
    (VAD splits speech at a pause of 160 ms)."""
    spans = sorted(spans)
    parts: list[Span] = []
    k = 0
    for region in regions:
        start = region.start + SPEECH_PAD if region.start > 0 else region.start
        end = region.end - SPEECH_PAD if region.end < duration else region.end
        while k < len(spans) and spans[k][1] <= start:
            k += 1
        cursor, j = start, k
        while j < len(spans) and spans[j][0] < end:
            if spans[j][0] > cursor:
                parts.append(Span(cursor, spans[j][0]))
            cursor = max(cursor, spans[j][1])
            j += 1
        if end > cursor:
            parts.append(Span(cursor, end))
    starts, reach = [a for a, _ in spans], list(itertools.accumulate((b for _, b in spans), max))
    joined: list[tuple[Span, float]] = []  # (stretch, seconds of speech in it)
    for part in parts:
        before = bisect.bisect_left(starts, part.start)  # spans starting before this part; do any reach back?
        between = bool(joined) and before > 0 and reach[before - 1] > joined[-1][0].end
        if joined and part.start - joined[-1][0].end < least and not between:
            joined[-1] = (Span(joined[-1][0].start, part.end), joined[-1][1] + part.duration)
        else:
            joined.append((part, part.duration))
    return [span for span, speech in joined if speech >= least]


def pieces_within(pieces: Iterable[Piece], spans: list[Span], first_pass: list[Piece]) -> list[Piece]:
    """What ``pieces`` (decoded again over ``spans`` and a little around them) heard inside ``spans``: words whose
    middle falls inside one, or, without words, segments whose middle does. A word at either end of a span that
    repeats the first pass's word just outside it is left out (the second pass hears the edges again).

    Each is given to the window of ``first_pass`` (where the recording was decoded first) that holds its start,
    so that build_segments puts it among that window's words, in time order."""
    windows = sorted({p.window for p in first_pass})
    heard = sorted((w for p in first_pass for w in p.segment.words or ()), key=lambda w: w.start)

    def window(start: float, own: float) -> float:
        k = bisect.bisect_right(windows, start)
        return windows[k - 1] if k else own

    out = []
    for piece in pieces:
        segment = piece.segment
        if segment.words is None:
            if any(s.start <= (segment.start + segment.end) / 2 <= s.end for s in spans):
                out.append(Piece(segment, window(segment.start, piece.window)))
            continue
        words: list[RawWord] = []
        for span in spans:
            mine = [w for w in segment.words if span.start <= (w.start + w.end) / 2 <= span.end]
            words += _without_repeated_edges(mine, span, heard)
        if words:
            text = "".join(w.text for w in words)
            out.append(Piece(replace(segment, text=text, start=words[0].start, end=words[-1].end, words=tuple(words),
                                     tokens=(), compression_ratio=compression_ratio(text)),
                             window(words[0].start, piece.window)))
    return out


def without_words_within(pieces: Iterable[Piece], spans: list[Span]) -> list[Piece]:
    """``pieces`` less their words whose middle falls inside one of ``spans`` (what a repetition loop wrote over
    speech that was decoded again); pieces without words are kept as they are."""
    out = []
    for piece in pieces:
        segment = piece.segment
        if segment.words is None:
            out.append(piece)
            continue
        words = tuple(w for w in segment.words if not any(s.start <= (w.start + w.end) / 2 <= s.end for s in spans))
        if len(words) == len(segment.words):
            out.append(piece)
        elif words:
            text = "".join(w.text for w in words)
            out.append(Piece(replace(segment, text=text, start=words[0].start, end=words[-1].end, words=words,
                                     tokens=(), compression_ratio=compression_ratio(text)), piece.window))
    return out


def _without_repeated_edges(words: list[RawWord], span: Span, heard: list[RawWord]) -> list[RawWord]:
    """``words`` less a first word that repeats the word heard just before ``span``, and a last word that repeats
    the word heard just after it (within WORD_SLACK)."""
    before = [w for w in heard if w.end <= span.start + WORD_SLACK]
    after = [w for w in heard if w.start >= span.end - WORD_SLACK]
    if words and before and _letters(words[0].text) == _letters(before[-1].text):
        words = words[1:]
    if words and after and _letters(words[-1].text) == _letters(after[0].text):
        words = words[:-1]
    return words


def _letters(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum())


def redo_spans(uncovered: list[Span], duration: float, *, join: float = UNCOVERED_SECONDS) -> list[Span]:
    """The stretches to decode again for ``uncovered`` speech: each widened by VAD's padding, those less than
    ``join`` seconds apart decoded together."""
    out: list[Span] = []
    for span in uncovered:
        start, end = max(0.0, span.start - SPEECH_PAD), min(duration, span.end + SPEECH_PAD)
        if out and start - out[-1].end < join:
            out[-1] = Span(out[-1].start, end)
        else:
            out.append(Span(start, end))
    return out

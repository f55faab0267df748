"""Subtitle cues sized for reading: how segments become SRT/WebVTT cues.

Segments are sentences (see :mod:`whisper_zh.segments`); a subtitle cue must be short enough to read while it
is on screen. Defaults follow common Simplified Chinese timed-text conventions: at most 16 characters a line and
2 lines a cue, at most 7 s and at least about 0.8 s on screen, and no more than about 9 characters a second
where the audio leaves room. A segment that does not fit is cut at punctuation first, then at pauses (word
times), never inside a word (jieba says where words are), and as evenly as those allow.

Hand-rolled: no maintained Python library cuts CJK subtitles by these rules from word times (srt/pysubs2 format
cues but do not cut them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from whisper_zh.normalize import SENTENCE_MARKS
from whisper_zh.results import Segment, Transcription
from whisper_zh.wordseg import word_boundaries

STRONG_BREAK = SENTENCE_MARKS  # sentence ends: the best places to cut
WEAK_BREAK = "，、：,:—"  # clause marks: good places to cut
# Marks that close what comes before them: a cue or a line never starts with one (Chinese line-breaking rules,
# 避头点); the mark stays with the text before it.
NO_LINE_START = frozenset("，。、；：？！…,.;:?!)）」』》〉”’】")
# Score of a cut: a sentence end or a clause mark counts as this many seconds of pause.
STRONG_BONUS, WEAK_BONUS = 1.0, 0.5
# A cue comes on up to this long before its speech, and stays up to this long after it (seconds).
EDGE_PAD = 0.5


@dataclass(frozen=True)
class CueOptions:
    """Limits a subtitle cue keeps (a single word longer than a line is the only exception)."""

    max_line_chars: int = 16
    max_lines: int = 2
    max_cue_seconds: float = 7.0
    min_cue_seconds: float = 0.8
    max_chars_per_second: float = 9.0

    def __post_init__(self) -> None:
        if self.max_line_chars < 1 or self.max_lines < 1:
            raise ValueError("max_line_chars and max_lines must be at least 1")
        if self.max_cue_seconds <= self.min_cue_seconds:
            raise ValueError("max_cue_seconds must be longer than min_cue_seconds")

    @property
    def max_chars(self) -> int:
        return self.max_line_chars * self.max_lines


@dataclass(frozen=True)
class Cue:
    """One subtitle: its time on screen and its lines."""

    start: float
    end: float
    lines: tuple[str, ...]
    speaker: str | None = None  # the segment's speaker, where diarization ran

    @property
    def text(self) -> str:
        return "".join(self.lines)


@dataclass(frozen=True)
class _Char:
    char: str
    start: float
    end: float


def make_cues(transcription: Transcription, options: CueOptions | None = None) -> list[Cue]:
    """The transcription's segments cut into cues within ``options`` (see the module docstring)."""
    options = options or CueOptions()
    pieces: list[list[_Char]] = []
    speakers: list[str | None] = []
    for segment in transcription.segments:
        cut = _cut(_timed_chars(segment), options)
        pieces += cut
        speakers += [segment.speaker] * len(cut)
    pieces, speakers = _marks_to_text_before(pieces, speakers)
    spans = _screen_times([(p[0].start, p[-1].end, len(p)) for p in pieces], transcription.duration, options)
    return [Cue(start, end, _lines("".join(c.char for c in piece).strip(), options), speaker)
            for piece, (start, end), speaker in zip(pieces, spans, speakers, strict=True)]


def _marks_to_text_before(
    pieces: list[list[_Char]], speakers: list[str | None]
) -> tuple[list[list[_Char]], list[str | None]]:
    """A piece that starts with closing marks (a segment decoded after a pause in continuous speech often starts
    with "，") gives them to the piece before it; at the very start they have no text to follow and go. Each
    piece keeps its speaker; a piece left empty goes with its speaker."""
    out: list[list[_Char]] = []
    kept: list[str | None] = []
    for piece, speaker in zip(pieces, speakers, strict=True):
        piece = list(piece)
        while piece and (piece[0].char in NO_LINE_START or piece[0].char.isspace()):
            mark = piece.pop(0)
            if out and not mark.char.isspace():
                out[-1].append(replace(mark, start=out[-1][-1].end, end=out[-1][-1].end))
        if piece:
            out.append(piece)
            kept.append(speaker)
    return out, kept


def _timed_chars(segment: Segment) -> list[_Char]:
    """Every character of the segment with a time: from its word's time where words were aligned (each word's
    span shared by its characters), else spread evenly over the segment. A space takes the time of the
    character before it."""
    text = segment.text
    times: list[tuple[float, float]] = []
    for word in segment.words or ():
        n = len(word.word.strip())
        step = (word.end - word.start) / max(1, n)
        times += [(word.start + k * step, word.start + (k + 1) * step) for k in range(n)]
    if not segment.words or len(times) != sum(not c.isspace() for c in text):
        step = (segment.end - segment.start) / max(1, len(text))
        return [_Char(c, segment.start + k * step, segment.start + (k + 1) * step) for k, c in enumerate(text)]
    chars, it, last = [], iter(times), (segment.start, segment.start)
    for c in text:
        if not c.isspace():
            last = next(it)
        chars.append(_Char(c, *last) if not c.isspace() else _Char(c, last[1], last[1]))
    return chars


def _cut(chars: list[_Char], options: CueOptions) -> list[list[_Char]]:
    """Cut ``chars`` into pieces that fit a cue, recursively at the best-scoring allowed boundary."""
    text = "".join(c.char for c in chars).strip()
    if not text:
        return []
    duration = chars[-1].end - chars[0].start
    if len(text) <= options.max_chars and duration <= options.max_cue_seconds:
        return [chars]
    cut = _best_cut(chars, options)
    if cut is None:
        return [chars]  # one word longer than a cue: the only exception the limits allow
    return _cut(chars[:cut], options) + _cut(chars[cut:], options)


def _best_cut(chars: list[_Char], options: CueOptions) -> int | None:
    """The boundary to cut at: between words, preferring punctuation and pauses, then balance."""
    text = "".join(c.char for c in chars)
    allowed = word_boundaries(text) | {k + 1 for k, ch in enumerate(text[:-1]) if ch in STRONG_BREAK + WEAK_BREAK}
    allowed = {_past_marks(text, k) for k in allowed}
    allowed = {k for k in allowed if 0 < k < len(chars) and text[:k].strip() and text[k:].strip()}
    if not allowed:
        return None
    total = chars[-1].end - chars[0].start

    def score(k: int) -> float:
        before = text[:k].rstrip()[-1]
        bonus = STRONG_BONUS if before in STRONG_BREAK else WEAK_BONUS if before in WEAK_BREAK else 0.0
        pause = max(0.0, chars[k].start - chars[k - 1].end)
        balance = abs(k - len(chars) / 2) / len(chars) + abs(chars[k].start - chars[0].start - total / 2) / (total or 1)
        return bonus + min(pause, 1.0) - balance

    return max(sorted(allowed), key=score)


def _screen_times(spans: list[tuple[float, float, int]], duration: float, options: CueOptions) -> list[tuple[float, float]]:
    """On-screen times. Each cue comes on a little before its speech and stays a little after it, by up to half
    the silence on that side (at most EDGE_PAD), so a cue change falls inside the pause between two sentences;
    then, where the silence after it allows, it stays longer to reach the minimum duration and the reading speed.
    Cues never overlap and never leave the audio."""
    padded = []
    for k, (start, end, _chars) in enumerate(spans):
        before = start - (spans[k - 1][1] if k else 0.0)
        after = (spans[k + 1][0] if k + 1 < len(spans) else duration) - end
        room = max(0.0, options.max_cue_seconds - (end - start)) / 2  # padding never makes a cue too long
        lead, lag = min(EDGE_PAD, room, max(0.0, before) / 2), min(EDGE_PAD, room, max(0.0, after) / 2)
        padded.append((start - lead, end + lag))
    out: list[tuple[float, float]] = []
    for k, ((start, end), (_, _, chars)) in enumerate(zip(padded, spans, strict=True)):
        floor = out[-1][1] if out else 0.0
        ceiling = padded[k + 1][0] if k + 1 < len(padded) else duration
        start, end = max(start, floor), min(max(end, start), ceiling)
        wanted = min(max(options.min_cue_seconds, chars / options.max_chars_per_second), options.max_cue_seconds)
        if end - start < wanted:
            end = min(ceiling, start + wanted)
        if end - start < options.min_cue_seconds:
            start = max(floor, end - options.min_cue_seconds)
        if end <= start:  # no room at all: the smallest valid cue
            end = min(ceiling, start + 0.01) if ceiling > start else start + 0.01
        last = math.floor(duration * 1000) / 1000  # milliseconds, never past the audio's end
        out.append((min(round(start, 3), last), min(round(end, 3), last)))
    return out


def _lines(text: str, options: CueOptions) -> tuple[str, ...]:
    """Break a cue's text into lines of at most max_line_chars, at word boundaries, as evenly as possible."""
    if len(text) <= options.max_line_chars or options.max_lines == 1:
        return (text,)
    allowed = sorted({_past_marks(text, k) for k in word_boundaries(text)} - {0, len(text)})
    # a mark may hang past the line's end rather than open the next line
    fitting = [k for k in allowed if len(text[:k].rstrip("".join(NO_LINE_START))) <= options.max_line_chars
               and len(text) - k <= options.max_line_chars * (options.max_lines - 1)]
    if not fitting:
        return (text,)  # a word longer than a line
    cut = min(fitting, key=lambda k: (abs(len(text) - 2 * k), -_is_break(text[k - 1])))
    return (text[:cut].rstrip(),) + _lines(text[cut:].lstrip(), replace(options, max_lines=options.max_lines - 1))


def _past_marks(text: str, k: int) -> int:
    """Boundary ``k`` moved past the closing marks that follow it, so they stay with the text before."""
    while k < len(text) and text[k] in NO_LINE_START:
        k += 1
    return k


def _is_break(char: str) -> int:
    return int(char in STRONG_BREAK + WEAK_BREAK)

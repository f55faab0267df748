"""Windows: how recordings are cut into (or packed into) Whisper's 30-second windows, and how packed text comes
back out.

- A recording is decoded in windows of the *original* audio (silences inside kept, so a window's times map back
  by adding its offset, and the model hears the pauses it punctuates at). A long one is first cut at pauses
  found by voice activity detection (:mod:`whisper_zh.vad`) into stretches decoded as streams of consecutive
  windows (:func:`stream_spans`; the transcriber moves through each stream).
- Short clips are packed several to a window (Whisper's encoder always pays for 30 s, so a 5 s clip alone wastes
  five sixths of it), and their words are split back by time (:func:`make_packs`, :func:`unpack`).
"""

from __future__ import annotations

import bisect
import logging
import math
import os
from dataclasses import dataclass, field, replace

import numpy as np

from whisper_zh.audio import SAMPLE_RATE, Spooled
from whisper_zh.decoding import compression_ratio
from whisper_zh.engines.base import RawSegment, RawWord
from whisper_zh.normalize import CJK_CHAR
from whisper_zh.vad import SPEECH_PAD, Span, cut_at_pauses, speech_regions

logger = logging.getLogger(__name__)

CHUNK_SECONDS = 30.0
# Long recordings are decoded as streams of consecutive windows, cut where the speech pauses; a silence longer
# than STREAM_MAX_GAP is left out. Streams are decoded side by side in batches, so a long recording still fills a
# batch; inside a stream, each window is prompted with the text before. A recording has as many streams as a batch
# has windows, none shorter than STREAM_SECONDS: each stream ends in a part-filled window that costs a whole
# encoder pass (120 s streams gave a 9-minute recording 5 streams, 23 windows where one stream needs 21), and a
# batch of 4 over 5 streams decodes the fifth on its own.
STREAM_SECONDS = 120.0
# A stream may be this much longer than an even split of its recording (seconds), so that a recording gets one
# stream per batch row, not one more for a few seconds over.
STREAM_SLACK = 15.0
# A stream is cut at the longest pause within this many seconds of an even split.
STREAM_CUT_RANGE = 15.0
STREAM_MAX_GAP = 3.0
# Nothing shorter than this is worth a window of its own (seconds).
MIN_WINDOW = 0.2
# Packing: clips up to PACK_MAX_CLIP seconds share one window of at most PACK_WINDOW seconds, separated by
# PACK_GAP seconds of silence.
PACK_MAX_CLIP = 20.0
PACK_GAP = 0.8
PACK_WINDOW = 29.0
_GAP_SAMPLES = round(PACK_GAP * SAMPLE_RATE)
# Clips given in folder order, at least this many in a row, are packed in that order (make_packs). A shuffled folder
# of n clips has about one clip right after its folder neighbour by chance, and three in a row about once in n
# shuffles; two are not evidence of order. (One such pair in the guard's shuffled pool, packed on its own, moved
# which clips shared a window with which across the pool: 120 texts changed, keywords 5 points worse.)
RUN_MIN = 3
# A word belongs to the clip in whose span its end falls, give or take this much (alignment jitter).
PACK_SLACK = 0.15
# A packed clip's words must start within COVER_SLACK of where VAD hears its speech begin (VAD pads speech by
# 0.4 s) and end within COVER_SLACK of where it ends; no word may cover more than WORD_SECONDS of speech per
# two characters. Otherwise words fell out at the boundary, and the clip is decoded again on its own.
COVER_SLACK = 0.8
WORD_SECONDS = 1.0
_SENTENCE_MARKS = ("。", "？", "！", "?", "!", "…", "”", "」")
_OPEN_MARKS = "，、,;；：:"


@dataclass(eq=False)  # identity semantics: used as a dict key
class AudioFile:
    """One decoded input and what the pipeline learns about it."""

    index: int
    source: str
    audio: np.ndarray | Spooled  # Spooled: a long recording, read a window at a time
    language: str | None = None
    regions: list[Span] | None = None  # speech regions, when voice activity detection cut the file
    uncovered: list[Span] = field(default_factory=list)  # speech no segment covers, after the safety net
    credited: float = 0.0  # seconds already reported to the progress callback

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@dataclass(frozen=True, eq=False)
class Member:
    """A clip inside a pack: where it lies on the pack's timeline."""

    file: AudioFile
    start: float
    end: float


@dataclass(eq=False)
class Window:
    """Up to 30 s of audio to decode: a stretch of one recording, or a pack of several short clips."""

    file: AudioFile  # the recording (for a pack: its first clip)
    samples: np.ndarray | None  # a stretch: a view of the recording's samples; a pack: None (see ``audio``)
    offset: float = 0.0  # where the window starts on the recording's timeline (seconds)
    members: tuple[Member, ...] = field(default=())  # a pack's clips

    @property
    def audio(self) -> np.ndarray:
        """The window's samples. A pack's are put together on each call, so that only the packs being decoded
        are held, not every pack of a group at once (a copy of all its audio: 77 MB for 20 minutes)."""
        if self.samples is not None:
            return self.samples
        gap = np.zeros(_GAP_SAMPLES, np.float32)
        return np.concatenate([part for m in self.members for part in (gap, m.file.audio)][1:])

    @property
    def duration(self) -> float:
        if self.samples is not None:
            return len(self.samples) / SAMPLE_RATE
        samples = sum(len(m.file.audio) for m in self.members) + _GAP_SAMPLES * (len(self.members) - 1)
        return samples / SAMPLE_RATE

    @property
    def is_pack(self) -> bool:
        return bool(self.members)

    def spans(self) -> list[tuple[AudioFile, float]]:
        """(recording, seconds of it) covered by this window, for progress reporting."""
        if self.members:
            return [(m.file, m.end - m.start) for m in self.members]
        return [(self.file, self.duration)]


def stream_spans(file: AudioFile, *, use_vad: bool, streams: int = 1) -> list[Span]:
    """The stretches of a recording to decode, each as one stream of consecutive windows (see the transcriber).
    Sets ``file.regions`` (where the speech is) when VAD runs.

    A recording of up to 30 s, or any recording without VAD, is one stretch. A longer one is cut at pauses into
    about ``streams`` stretches of at least STREAM_SECONDS, and silences longer than STREAM_MAX_GAP are left out:
    they hold no speech, and long silence inside a window invites hallucinated text. [] when VAD finds no speech
    at all."""
    if not use_vad:
        return [Span(0.0, file.duration)]
    file.regions = speech_regions(file.audio)
    if file.duration <= CHUNK_SECONDS:  # decoded whatever VAD says: it misses soft speech now and then
        return [Span(0.0, file.duration)]
    if not file.regions:
        logger.info("%s: no speech found by voice activity detection", file.source)
        return []
    longest = max(STREAM_SECONDS, file.duration / max(streams, 1) + STREAM_SLACK)
    stretches = cut_at_pauses(file.regions, file.duration, float("inf"), max_gap=STREAM_MAX_GAP)
    spans = [span for stretch in stretches for span in _balanced(file.regions, stretch, longest)]
    return [s for s in spans if s.duration >= MIN_WINDOW]


def _balanced(regions: list[Span], stretch: Span, longest: float) -> list[Span]:
    """``stretch`` cut into the fewest streams of about equal length none longer than about ``longest``, each
    cut at the longest pause within STREAM_CUT_RANGE of its target. A new stream starts without the text before it
    as context, so a cut inside a sentence (where a reader draws breath) costs the words either side of it."""
    inside = [r for r in regions if r.end > stretch.start and r.start < stretch.end]
    count = math.ceil(stretch.duration / longest)
    if count < 2 or len(inside) < 2:
        return [stretch]
    # The pause between region k-1 and k; VAD splits a short pause between two regions, so its length there is 0.
    pauses = [(inside[k].start - inside[k - 1].end, (inside[k].start + inside[k - 1].end) / 2, k)
              for k in range(1, len(inside))]
    cuts: list[int] = []
    for j in range(1, count):
        target = stretch.start + j * stretch.duration / count
        near = [p for p in pauses if abs(p[1] - target) <= STREAM_CUT_RANGE and (not cuts or p[2] > cuts[-1])]
        best = max(near, key=lambda p: (p[0], -abs(p[1] - target)), default=None)
        if best is not None:
            cuts.append(best[2])
    bounds = [0, *cuts, len(inside)]
    return [Span(max(stretch.start, inside[a].start), min(stretch.end, inside[b - 1].end))
            for a, b in zip(bounds, bounds[1:], strict=False)]


def speech_after(file: AudioFile, start: float, end: float, *, at_least: float = 0.3, padded: bool = True) -> bool:
    """Whether VAD heard at least ``at_least`` seconds of speech between ``start`` and ``end`` (False without VAD).

    ``padded=False`` counts speech itself, not the SPEECH_PAD that VAD adds each side of a region (where the file
    goes on): the padding makes a clip's last 0.4 s of silence look like speech still to come."""
    pad = 0.0 if padded else SPEECH_PAD
    heard = 0.0
    for region in file.regions or ():
        onset = region.start + pad if region.start > 0 else region.start
        offset = region.end - pad if region.end < file.duration else region.end
        heard += max(0.0, min(offset, end) - max(onset, start))
    return heard >= at_least


def hold_back_last_sentence(segments: list[RawSegment], earliest: float) -> tuple[list[RawSegment], float] | None:
    """``segments`` (of one window, with words) without their last sentence, and where that sentence starts.

    For a window whose text runs into its end while the speaker goes on: Whisper closes the sentence cut by the
    window's edge anyway, misheard or short, and the next window, which starts mid-word, is prompted with it (a
    next window that began with the rest of 日挑万斤水泥赚钱 skipped the following sentence, which sounded like
    it). Held back, that sentence is decoded whole by the next window. The cut falls after the last sentence
    mark, or the last clause mark if there is none, at or after ``earliest`` seconds into the window; None when
    there is no such mark."""
    words = [w for s in segments for w in s.words or ()]
    for marks in (_SENTENCE_MARKS, tuple(_OPEN_MARKS)):
        cuts = [k for k in range(1, len(words))
                if words[k - 1].text.rstrip().endswith(marks) and words[k].start >= earliest]
        if cuts:
            break
    else:
        return None
    cut, left = words[cuts[-1]].start, cuts[-1]  # the first ``left`` words stay
    kept = []
    for segment in segments:
        mine, left = (segment.words or ())[: max(0, left)], left - len(segment.words or ())
        if mine:
            text = "".join(w.text for w in mine)
            kept.append(replace(segment, text=text, end=mine[-1].end, words=tuple(mine), tokens=(),
                                compression_ratio=compression_ratio(text)))
    return kept, cut


def window_at(file: AudioFile, start: float, end: float) -> Window:
    """The window of ``file`` from ``start`` to ``end`` seconds (at most CHUNK_SECONDS)."""
    end = min(end, start + CHUNK_SECONDS, file.duration)
    return Window(file, file.audio[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)], start)


def make_packs(files: list[AudioFile]) -> list[Window]:
    """Whole clips in windows of at most PACK_WINDOW seconds, PACK_GAP of silence between, clips of different
    languages never in one window.

    Runs of at least RUN_MIN consecutive pieces of one recording (:func:`recording_runs`) fill windows in their
    order, so that each is heard after the speech before it, as a long recording's windows are: the Taiwan
    narrator's consecutive sentences read 4.75 points better so (bench/RESULTS.md, issue 28). Every other clip
    goes where first-fit decreasing puts it (:func:`_fill_fewest`): the longest first, each into the first window
    with room; in input order, a short word among sentences ended its window's text early (keywords 17 points worse
    in the shuffled mix)."""
    windows: list[list[AudioFile]] = []
    single: list[AudioFile] = []
    for run in recording_runs(files):
        if len(run) < RUN_MIN:
            single += run
            continue
        windows.append([run[0]])  # a run starts its own window: its first clip follows nothing in it
        for file in run[1:]:
            if _fits(windows[-1], file):
                windows[-1].append(file)
            else:
                windows.append([file])
    windows += _fill_fewest(single)
    return [_pack(members) for members in sorted(windows, key=lambda m: m[0].index)]


def _fits(window: list[AudioFile], file: AudioFile) -> bool:
    """Whether ``file`` joins ``window`` (same language, and room for it after a gap)."""
    filled = sum(f.duration for f in window) + PACK_GAP * (len(window) - 1)
    return window[0].language == file.language and filled + PACK_GAP + file.duration <= PACK_WINDOW


def _fill_fewest(files: list[AudioFile]) -> list[list[AudioFile]]:
    """``files`` in as few windows as first-fit decreasing finds, each window's clips in input order.

    Filled in input order instead, 500 unrelated clips took 104-107 windows; first-fit decreasing takes 95-101
    (the encoder pays for each window in full, so that is 6-9 % fewer encoder passes)."""
    bins: list[list[AudioFile]] = []
    for file in sorted(files, key=lambda f: f.duration, reverse=True):
        room = next((members for members in bins if _fits(members, file)), None)
        if room is None:
            bins.append([file])
        else:
            room.append(file)
    return [sorted(members, key=lambda f: f.index) for members in bins]


def recording_runs(files: list[AudioFile]) -> list[list[AudioFile]]:
    """``files`` in input order, cut into runs of consecutive pieces of one recording: a clip continues the run
    of the clip given just before it when it is the next file of the same folder (names sorted, same extension).

    A user's folder of pieces cut from one recording, or a corpus of consecutive sentences (AISHELL's utterances
    follow one article), is given in folder order; clips gathered from many places, or shuffled, almost never
    follow their folder neighbour. In-memory inputs have no folder and are each a run of their own."""
    listings: dict[tuple[str, str], list[str]] = {}  # (folder, extension): its sorted file names, read once

    def follows(earlier: AudioFile, file: AudioFile) -> bool:
        a, b = os.path.split(earlier.source), os.path.split(file.source)
        extension = os.path.splitext(b[1])[1].lower()
        if a[0] != b[0] or not b[1] or extension != os.path.splitext(a[1])[1].lower() or a[1] >= b[1]:
            return False
        if (a[0], extension) not in listings:
            try:
                names = os.listdir(a[0] or ".")
            except OSError:
                names = []
            listings[a[0], extension] = sorted(n for n in names if os.path.splitext(n)[1].lower() == extension)
        names = listings[a[0], extension]
        at = bisect.bisect_left(names, a[1])
        return at + 1 < len(names) and names[at] == a[1] and names[at + 1] == b[1]

    runs: list[list[AudioFile]] = []
    for file in sorted(files, key=lambda f: f.index):
        if runs and follows(runs[-1][-1], file):
            runs[-1].append(file)
        else:
            runs.append([file])
    return runs


def _covers(member: Member, words: list[RawWord]) -> bool:
    """Whether the words assigned to a packed clip account for all of its speech (as VAD hears it).

    Whisper sometimes skips the start of a clip whose opening sounds like what it just heard (a clip packed after
    its own beginning loses its first words), and the aligner then stretches the next word back over the skipped
    speech. So: speech long before the first word or long after the last one, or one word spread over far more
    speech than a word takes, means words fell out at the boundary, and the clip is decoded again on its own.
    """
    regions = member.file.regions
    if not regions or not words:
        return True
    onset, offset = regions[0].start, regions[-1].end  # on the clip's timeline, VAD's padding included
    first, last = words[0].start - member.start, words[-1].end - member.start
    if max(first, onset) - onset > COVER_SLACK or offset - min(last, offset) > COVER_SLACK:
        return False
    for word in words:
        heard = min(word.end - member.start, offset) - max(word.start - member.start, onset)
        if heard > max(WORD_SECONDS, WORD_SECONDS / 2 * len(word.text.strip())):
            return False
    return True


def _closed(words: tuple[RawWord, ...]) -> tuple[RawWord, ...]:
    """A clip is a whole utterance: where Whisper ran a Chinese clip on into the next one of the pack, with no mark
    or a comma between them, it ends with 。 (decoded alone, 98 % of the shared clips end with a sentence mark;
    packed without this, 80 %, the rest with ， or nothing)."""
    last = words[-1]
    text = last.text.rstrip()
    if not any(CJK_CHAR.search(w.text) for w in words) or text.endswith(_SENTENCE_MARKS):
        return words
    text = text.rstrip(_OPEN_MARKS) + "。"
    return (*words[:-1], RawWord(last.start, last.end, text, last.probability))


def _pack(files: list[AudioFile]) -> Window:
    """One window of ``files`` in this order, PACK_GAP of silence between them."""
    members, cursor = [], 0.0
    for file in files:
        members.append(Member(file, cursor, cursor + file.duration))
        cursor += file.duration + PACK_GAP
    return Window(files[0], None, 0.0, tuple(members))


def unpack(pack: Window, segments: list[RawSegment]) -> dict[AudioFile, RawSegment | None]:
    """Split a pack's words back into its clips, each on the clip's own timeline; None marks a clip whose text
    cannot be trusted (none, or implausibly little or much for its length), to be decoded again on its own.

    A word goes to the clip in whose span its *end* falls: the alignment stretches the first word after a gap
    back over the silence, so start times and midpoints land in the previous clip while end times do not. A word
    that ends a sentence goes by its *start*: it is a clip's last word, and the alignment can stretch it forward
    over the gap instead (爸爸去哪儿。 lost its 儿。 to the next clip).
    """
    if not segments:  # the decoder found no speech in the whole pack: every clip is silent, none to redo
        return {m.file: RawSegment("", 0.0, 0.0, 0.0, 1.0) for m in pack.members}
    words = sorted((w for s in segments for w in s.words or ()), key=lambda w: (w.end, w.start))
    assigned: list[list[RawWord]] = [[] for _ in pack.members]
    for word in words:
        at = word.start + PACK_SLACK if word.text.rstrip().endswith(_SENTENCE_MARKS) else word.end
        k = next((k for k, m in enumerate(pack.members) if at <= m.end + PACK_SLACK), len(pack.members) - 1)
        assigned[k].append(word)
    template = segments[0] if segments else None
    out: dict[AudioFile, RawSegment | None] = {}
    for member, mine in zip(pack.members, assigned, strict=True):
        text = "".join(w.text for w in mine).strip()
        seconds = member.end - member.start
        rate = len(text) / seconds
        implausible = not text or (seconds > 2.0 and rate < 0.7) or rate > 12.0
        if template is None or implausible or not _covers(member, mine):
            out[member.file] = None
            continue
        local = _closed(tuple(
            RawWord(min(max(w.start - member.start, 0.0), seconds), min(max(w.end - member.start, 0.0), seconds),
                    w.text, w.probability)
            for w in mine
        ))
        text = "".join(w.text for w in local).strip()
        out[member.file] = RawSegment(
            text=text,
            start=local[0].start,
            end=local[-1].end,
            avg_logprob=template.avg_logprob,
            no_speech_prob=template.no_speech_prob,
            compression_ratio=compression_ratio(text),
            words=local,
        )
    return out

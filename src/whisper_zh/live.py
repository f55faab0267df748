"""Live transcription: audio arriving in chunks in, text out as soon as it is stable. No web framework here.

Whisper is not a streaming model. :class:`LiveSession` streams it the known way (local agreement: whisper_streaming,
Macháček et al. 2023). The audio not yet settled stays in a buffer that is decoded again, through
:class:`~whisper_zh.transcriber.Transcriber`, each time enough new audio has arrived. A piece of text is *committed*
once two consecutive decodes agree on it; committed text is never retracted. The rest of the latest decode is the
*partial* text, which may still change.

Voice activity detection (:func:`whisper_zh.vad.speech_regions`) splits the stream into utterances ("items"). When
the speaker pauses, the item ends: its remaining text is committed without waiting for a second decode, and the
buffer is cut at the end of its speech. Inside a long utterance, the buffer is trimmed at the end of a committed
sentence. Word times (every Chinese character a unit of its own) are what decodes are compared by and where
the buffer is cut. The text committed before the buffer follows the Mandarin prompt as the decoder's previous
text, as in Whisper's own long-form loop (measured on 40 joined clips: decoding utterance by utterance with the
prompt alone cost 2.4 CER points against offline transcription of the same audio; with the previous text, none).

The session does no I/O and no decoding itself. A driver appends audio, asks :meth:`LiveSession.prepare` for the
next :class:`DecodeRequest`, has it decoded (the CLI calls the Transcriber; the server goes through its batching
queue, so that many streams share one model) and passes the result to :meth:`LiveSession.accept`, which returns
the events. :func:`play` is the driver for a recording played in at real-time speed.

A driver that can run decodes side by side may ask for the next request before the last one is answered
(``parallel`` in :func:`play`, the server's decode workers). A word is committed once the second decode after it
agrees, about 2.5 decode times after it was spoken when decodes run one after another; with two overlapping, a
decode starts every half decode time and that falls to about 1.75. Results must be accepted in the order the
requests were made. Ending an item (a pause, a cut, a flush) waits until no request is in flight, so an item's
end is decided on its latest decode, as without overlap.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field

import numpy as np

from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.decoding import DecodeOptions
from whisper_zh.normalize import SENTENCE_MARKS
from whisper_zh.results import Segment, Transcription, Word, join_texts
from whisper_zh.vad import VAD_OPTIONS, Span, speech_regions

# Silero pads every speech region by this much on each side (seconds); pauses are measured without it.
VAD_PAD = VAD_OPTIONS.speech_pad_ms / 1000
SENTENCE_END = frozenset(SENTENCE_MARKS)
# A unit of a new decode that starts this much before the last committed unit ends may still be new (the
# aligner's times wobble from one decode to the next); older units are text already committed.
TIME_SLACK = 0.1
# A committed tail of up to this many units that a new decode repeats at its head is dropped from it.
MAX_OVERLAP = 10
# Tokens a decode may write: a base of this many, and this many per second of its audio. Read Mandarin is 4-6
# characters a second, about a token each plus marks; a decode past the cap is looping. Uncapped, a loop ran to
# Whisper's 448 tokens: on the 9-minute bench file, one stream's text stopped for 10-17 s three times.
TOKENS_BASE, TOKENS_PER_SECOND = 20, 15


@dataclass(frozen=True)
class LiveOptions:
    """How a live session decides when to decode and where to cut. Defaults tuned on this project's CPU
    (bench/live.py)."""

    # Decode again once this much new audio has arrived. Two decodes further apart agree on more evidence: on the
    # 9-minute bench file (bench/live.py, 2 workers x 1 thread) 0.7 s scored +0.57 and +0.44 CER points over
    # offline at p50 1.91-1.93 s; 0.5 s scored +1.20 to +3.10 at p50 1.50-1.54 s. A slower CPU wants less.
    step_seconds: float = 0.7
    # The first decode of an utterance waits for this much of it: less is rarely a word, and a decode wasted on it
    # delays the first text by a whole decode.
    first_decode_seconds: float = 1.0
    pause_seconds: float = 0.6  # a silence this long ends an utterance (clause pauses in read Mandarin are shorter)
    trim_seconds: float = 12.0  # beyond this, the buffer is trimmed at the end of a committed sentence
    max_item_seconds: float = 25.0  # an utterance this long without a pause is cut (Whisper hears 30 s at most)
    keep_seconds: float = VAD_PAD  # silence kept before speech starts (soft onsets)
    # At a pause, the latest decode is taken as final when it heard this much silence after the speech
    # (saves one decode, which is most of the latency of an utterance's last words).
    reuse_after_seconds: float = 0.2
    # Committed text before the buffer that follows the Mandarin prompt (characters; 0: the prompt alone).
    context_chars: int = 100
    # The encoder hears the buffer plus this much padding, not a full 30 s window (DecodeOptions; None: 30 s).
    # Measured with bench/live.py --fast --clips 40 [--encoder-padding ...]: CER 8.62 % against 8.47 % with 30 s,
    # CPU 73 s against 112; with 5 s, 12.10 %; with 1 s, 18.00 %.
    encoder_padding_seconds: float | None = 10.0

    def __post_init__(self) -> None:
        if self.step_seconds <= 0 or self.pause_seconds <= 0:
            raise ValueError("step_seconds and pause_seconds must be positive")
        if not 1.0 <= self.max_item_seconds <= 29.0:
            raise ValueError("max_item_seconds must be between 1 and 29 (Whisper decodes 30 s at a time)")


# -- what a session says -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One Chinese character, one Latin word or number, or one punctuation mark, with its times in seconds
    from the start of the stream. ``text`` keeps the space Whisper put before a Latin word."""

    text: str
    start: float
    end: float

    @property
    def key(self) -> str:
        return self.text.strip()


@dataclass(frozen=True)
class SpeechStarted:
    item_id: str
    start: float


@dataclass(frozen=True)
class Partial:
    """The item's text after its committed text, as the latest decode heard it: it may still change."""

    item_id: str
    text: str


@dataclass(frozen=True)
class Committed:
    """Text appended to the item for good (never retracted)."""

    item_id: str
    text: str
    units: tuple[Unit, ...]


@dataclass(frozen=True)
class SpeechStopped:
    item_id: str
    end: float


@dataclass(frozen=True)
class Completed:
    """The item is over: ``text`` is all its committed text, in order."""

    item_id: str
    text: str
    start: float
    end: float


@dataclass(frozen=True)
class NothingToCommit:
    """:meth:`LiveSession.commit` was asked for, but no speech was heard since the last item ended."""


LiveEvent = SpeechStarted | Partial | Committed | SpeechStopped | Completed | NothingToCommit


@dataclass(frozen=True)
class DecodeRequest:
    """Audio to decode: the buffer from ``start`` to ``end`` (seconds of the stream). ``final``: the item ends at
    ``end``, and everything decoded is committed."""

    audio: np.ndarray
    options: DecodeOptions
    start: float
    end: float
    final: bool
    generation: int

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Step:
    events: list[LiveEvent]
    request: DecodeRequest | None


# -- decoded text as units ---------------------------------------------------------------------------------

_UNIT = re.compile(r"\s*(?:[A-Za-z0-9]+(?:[.,:'%-][A-Za-z0-9]+)*%?|\S)")


def hypothesis_units(result: Transcription, offset: float) -> list[Unit]:
    """The units of ``result`` (decoded from audio that starts ``offset`` seconds into the stream), in order."""
    units: list[Unit] = []
    for segment in result.segments:
        for word in _trusted_words(segment):
            units += _split_word(word, offset)
    return units


def _letters(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum())


def _trusted_words(segment: Segment) -> list[Word]:
    """The segment's words, as many as its cleaned text holds: the transcriber cuts repetition loops out of a
    segment's text but not out of its words."""
    words = segment.words or []
    budget, kept = len(_letters(segment.text)), []
    for word in words:
        budget -= len(_letters(word.word))
        if budget < 0:
            break
        kept.append(word)
    return kept


def _split_word(word: Word, offset: float) -> list[Unit]:
    """A word's units, its time shared out evenly among those that are not punctuation."""
    pieces = _UNIT.findall(word.word)
    spoken = sum(1 for p in pieces if _letters(p)) or 1
    width = max(0.0, word.end - word.start) / spoken
    units, t = [], word.start + offset
    for piece in pieces:
        if _letters(piece):
            units.append(Unit(piece, t, t + width))
            t += width
        else:
            units.append(Unit(piece, t, t))
    return units


def render(units: list[Unit] | tuple[Unit, ...]) -> str:
    return "".join(u.text for u in units)


def _unfinished(units: list[Unit]) -> str:
    """Partial text without the punctuation Whisper puts where the buffer (not the sentence) ends: shown, it
    would vanish at the next decode."""
    while units and not _letters(units[-1].text):
        units = units[:-1]
    return render(units)


class _Agreement:
    """Local agreement: what is committed, and the uncommitted rest of the latest decode."""

    def __init__(self) -> None:
        self.tail: list[Unit] = []  # the last committed units (for overlap checks)
        self.end = 0.0  # where the last committed unit ends
        self.pending: list[Unit] = []  # the latest decode beyond the committed text
        self.heard_until = 0.0  # where the audio of the latest decode ended

    def fresh(self, units: list[Unit]) -> list[Unit]:
        """``units`` without the text already committed (by time, then by repeated words at the seam)."""
        new = [u for u in units if u.start > self.end - TIME_SLACK]
        # A repeat counts only where it overlaps the committed units in time: "谢谢" is two characters.
        for n in range(min(len(self.tail), len(new), MAX_OVERLAP), 0, -1):
            if all(c.key == u.key and u.start < c.end for c, u in zip(self.tail[-n:], new[:n], strict=True)):
                new = new[n:]
                break
        # A mark has no width: the next decode puts the committed "。" a little later, past the time slack. No
        # mark follows a committed mark ("问题。。" came out 4-14 times on the 9-minute bench file).
        if self.tail and not _letters(self.tail[-1].text):
            while new and not _letters(new[0].text):
                new = new[1:]
        return new

    def agree(self, units: list[Unit], heard_until: float) -> list[Unit]:
        """Commit the longest prefix on which ``units`` and the previous decode agree, short of a mark that ends
        the decode: Whisper closes every buffer with "。", which the next words often turn into "，"."""
        new = self.fresh(units)
        n = 0
        for old, cur in zip(self.pending, new, strict=False):
            if old.key != cur.key:
                break
            n += 1
        while n and n == len(new) and not _letters(new[n - 1].text):
            n -= 1
        self.pending, self.heard_until = new[n:], heard_until
        return self._commit(new[:n])

    def flush(self, units: list[Unit], until: float) -> list[Unit]:
        """Commit every new unit that ends by ``until`` (the end of an item)."""
        new = [u for u in self.fresh(units) if u.end <= until + TIME_SLACK]
        self.reset()
        return self._commit(new)

    def settle(self, until: float) -> list[Unit]:
        """Commit the latest decode's uncommitted units that end by ``until`` (it heard the whole item)."""
        new = [u for u in self.pending if u.end <= until + TIME_SLACK]
        self.reset()
        return self._commit(new)

    def reset(self) -> None:
        """Forget the latest decode (its item is over, or its audio was cleared)."""
        self.pending, self.heard_until = [], 0.0

    def _commit(self, units: list[Unit]) -> list[Unit]:
        if units:
            self.tail = (self.tail + units)[-MAX_OVERLAP:]
            self.end = max(self.end, units[-1].end)
        return units


# -- the audio buffer ----------------------------------------------------------------------------------------


class _Audio:
    """The samples held, with their place in the stream (sample indices since the stream began)."""

    def __init__(self) -> None:
        self._data = np.zeros(0, np.float32)
        self._chunks: list[np.ndarray] = []
        self.start = 0  # index of the first sample held
        self.received = 0  # samples received in all

    def append(self, samples: np.ndarray) -> None:
        self._chunks.append(samples)
        self.received += len(samples)

    def view(self, start: float, end: float) -> np.ndarray:
        """The samples between ``start`` and ``end`` seconds of the stream (clipped to what is held)."""
        if self._chunks:
            self._data = np.concatenate([self._data, *self._chunks])
            self._chunks = []
        a = max(0, round(start * SAMPLE_RATE) - self.start)
        b = max(a, round(end * SAMPLE_RATE) - self.start)
        return self._data[a:b]

    def drop_before(self, seconds: float) -> None:
        cut = min(max(round(seconds * SAMPLE_RATE), self.start), self.received)
        self.view(0, 0)  # consolidate
        self._data = self._data[cut - self.start :].copy()
        self.start = cut

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.received / SAMPLE_RATE


@dataclass
class _Item:
    id: str
    start: float
    units: list[Unit] = field(default_factory=list)
    partial: str = ""


# -- the session ---------------------------------------------------------------------------------------------


class LiveSession:
    """One live stream: append audio, decode what :meth:`prepare` asks for, hand the result to :meth:`accept`.

    Thread-safe in one way: audio may be appended (and :meth:`commit`, :meth:`finish` called) from one thread
    while another runs prepare/accept. Decoding is the driver's job; requests may overlap (see the module's
    docstring), and their results are accepted in the order they were made.
    """

    def __init__(self, options: DecodeOptions | None = None, live: LiveOptions | None = None, *,
                 name: str = "item") -> None:
        self.live = live or LiveOptions()
        self.options = _live_decode_options(options or DecodeOptions(), self.live)
        self._name = name
        self._lock = threading.Lock()
        self._audio = _Audio()
        self._agreement = _Agreement()
        self._item: _Item | None = None
        self._ids = itertools.count()
        self._segments: list[Segment] = []
        self._context: list[Unit] = []  # the last committed units, for the prompt
        self._checked = -1.0  # stream time of the last look at the audio
        self._flush = self._finishing = self.done = False
        self._ended_since_flush = False
        self._generation = 0
        self._in_flight = 0  # requests made and not yet accepted
        self._deferred = False  # the last look found the item's end but waited for the requests in flight

    # -- input ------------------------------------------------------------------------------------------
    def append(self, samples: np.ndarray) -> None:
        """Add 16 kHz mono float32 samples at the end of the stream."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        with self._lock:
            if self._finishing:
                raise ValueError("the session is finishing: no more audio")
            self._audio.append(samples)

    def set_options(self, options: DecodeOptions) -> None:
        """Decode with ``options`` from the next request on (language, prompt, script, ...)."""
        with self._lock:
            self.options = _live_decode_options(options, self.live)

    def commit(self) -> None:
        """End the current item at the end of the audio received so far, as if the speaker paused."""
        with self._lock:
            self._flush, self._ended_since_flush = True, False

    def finish(self) -> None:
        """No more audio: decode what is held, end the last item; :attr:`done` turns True when all is out."""
        with self._lock:
            self._finishing = True

    def clear(self) -> None:
        """Forget the audio held and the current item's uncommitted text (a request in flight is ignored)."""
        with self._lock:
            self._audio.drop_before(self._audio.end_s)
            self._agreement.reset()
            self._item = None
            self._generation += 1

    # -- state --------------------------------------------------------------------------------------------
    @property
    def received_seconds(self) -> float:
        return self._audio.end_s

    @property
    def held_seconds(self) -> float:
        """Audio held, not yet settled: what the stream's memory grows with."""
        return self._audio.end_s - self._audio.start_s

    def due(self) -> bool:
        """Whether :meth:`prepare` has anything to look at (cheap: drivers poll it)."""
        with self._lock:
            if self.done:
                return False
            if self._in_flight:  # only a next decode of the same item may start now: it needs new audio
                return self._audio.end_s - self._checked >= self.live.step_seconds
            return (self._flush or self._finishing or self._deferred
                    or self._audio.end_s - self._checked >= self.live.step_seconds)

    @property
    def in_flight(self) -> int:
        """Requests made by :meth:`prepare` whose results :meth:`accept` has not had yet."""
        return self._in_flight

    def transcription(self) -> Transcription:
        """Every completed item with text, as a transcription of the stream so far (for txt/srt/vtt)."""
        with self._lock:
            segments = [Segment(i, s.start, s.end, s.text, 0.0, 0.0, words=s.words) for i, s in
                        enumerate(self._segments)]
            return Transcription("live", segments, self.options.language or "zh", self._audio.end_s)

    # -- the loop -----------------------------------------------------------------------------------------
    def prepare(self) -> Step:
        """Look at the audio (voice activity detection; call it outside the event loop) and say what to decode
        next, if anything. Events for speech starting or stopping come out here."""
        with self._lock:
            if self.done:
                return Step([], None)
            start = self._audio.start_s
            end = min(self._audio.end_s, start + self.live.max_item_seconds + 5.0)
            audio = self._audio.view(start, end)
            self._checked = self._audio.end_s
            self._deferred = False
            generation = self._generation
            caught_up = end >= self._audio.end_s
        regions = [Span(start + r.start, start + r.end) for r in speech_regions(audio)] if len(audio) else []
        with self._lock:
            if generation != self._generation:
                return Step([], None)
            step = _Planner(self, start, end, regions, caught_up).plan()
            self._in_flight += step.request is not None
            return step

    def accept(self, request: DecodeRequest, result: Transcription | Exception) -> list[LiveEvent]:
        """Take the decode of ``request`` (an AudioError or any failure counts as silence); the events."""
        decoded = isinstance(result, Transcription)
        units = hypothesis_units(result, request.start) if decoded else []
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            if request.generation != self._generation or self._item is None:
                return []
            if request.final:  # a failed final decode: what the latest decode heard is the best there is
                settled = self._agreement.flush(units, request.end) if decoded else self._agreement.settle(request.end)
                return self._end_item(settled, request.end)
            events = self._committed(self._agreement.agree(units, request.end))
            pending = _unfinished(self._agreement.pending)
            if pending != self._item.partial or events:  # after a commit, always say what the partial is now
                self._item.partial = pending
                events.append(Partial(self._item.id, pending))
            self._trim()
            return events

    # -- helpers used by the planner (lock held) ----------------------------------------------------------
    def _open_item(self, start: float) -> SpeechStarted:
        self._item = _Item(f"{self._name}_{next(self._ids):04d}", start)
        self._audio.drop_before(start)
        return SpeechStarted(self._item.id, round(start, 3))

    def _request(self, start: float, end: float, *, final: bool) -> DecodeRequest:
        audio = self._audio.view(start, end).copy()
        seconds = len(audio) / SAMPLE_RATE
        # whole seconds: two streams' buffers of about the same length keep identical options (one batch)
        options = self._prompted(start)
        changes = {"max_new_tokens": TOKENS_BASE + TOKENS_PER_SECOND * math.ceil(seconds)}
        if not final:  # a bad partial decode is superseded within a second: no slower retries at higher temperature
            changes["temperature"] = options.temperature[:1]
        return DecodeRequest(audio, options.with_(**changes), start, start + seconds, final, self._generation)

    def _prompted(self, start: float) -> DecodeOptions:
        """The options with the committed text that lies before the buffer after the prompt (Whisper's own way
        with long audio: the text before conditions the next window)."""
        chars = self.live.context_chars
        if not chars:
            return self.options
        before = [u for u in self._context if u.end <= start + TIME_SLACK]
        context = render(before)[-chars:].strip()
        if not context:
            return self.options
        prompt = self.options.prompt_for(self.options.language)
        return self.options.with_(initial_prompt=(prompt or "") + context)

    def _committed(self, units: list[Unit]) -> list[LiveEvent]:
        if not units or self._item is None:
            return []
        if not self._item.units:  # an item's text starts without the space Whisper puts before a Latin word
            units = [Unit(units[0].text.lstrip(), units[0].start, units[0].end), *units[1:]]
        self._item.units += units
        self._context = (self._context + units)[-self.live.context_chars:] if self.live.context_chars else []
        return [Committed(self._item.id, render(units), tuple(units))]

    def _end_item(self, units: list[Unit], end: float) -> list[LiveEvent]:
        """Commit ``units``, close the item at ``end`` and cut the buffer there."""
        item = self._item
        assert item is not None
        events = self._committed(units)
        text = join_texts([render(item.units)])
        start = item.units[0].start if item.units else item.start
        stop = max(start, item.units[-1].end if item.units else end)
        if text:
            words = [Word(round(u.start, 3), round(u.end, 3), u.text, 1.0) for u in item.units]
            self._segments.append(Segment(len(self._segments), round(start, 3), round(stop, 3), text, 0.0, 0.0,
                                          words=words))
        events.append(Completed(item.id, text, round(start, 3), round(stop, 3)))
        self._item, self._ended_since_flush = None, True
        self._agreement.reset()
        self._audio.drop_before(end)
        return events

    def _trim(self) -> None:
        """Inside a long item, drop the audio up to the end of its last committed sentence."""
        if self._item is None or self.held_seconds <= self.live.trim_seconds:
            return
        ends = [u.end for u in self._item.units if u.key in SENTENCE_END and u.end > self._audio.start_s]
        if ends:
            self._audio.drop_before(ends[-1])


class _Planner:
    """One look at the buffer: where the speech is, whether the item ended, what to decode (lock held)."""

    def __init__(self, session: LiveSession, start: float, end: float, regions: list[Span], caught_up: bool) -> None:
        self.s, self.start, self.end, self.regions, self.caught_up = session, start, end, regions, caught_up
        self.events: list[LiveEvent] = []

    def plan(self) -> Step:
        s, live = self.s, self.s.live
        if s._item is None:
            if not self.regions:
                return self._silence()
            self.events.append(s._open_item(self.regions[0].start))
        end_item = self._end_of_item()
        if end_item is not None:
            if s._in_flight:  # the item's end is decided on its latest decode: look again once it is in
                s._deferred = True
                return Step(self.events, None)
            return end_item()
        item = s._item
        assert item is not None
        if not item.units and self.end - item.start < live.first_decode_seconds + VAD_PAD:
            return Step(self.events, None)
        return Step(self.events, s._request(s._audio.start_s, self.end, final=False))

    def _end_of_item(self) -> Callable[[], Step] | None:
        """How the item ends on this look, if it does: at a pause, cut at the length limit, or flushed."""
        s, live = self.s, self.s.live
        start = s._audio.start_s
        pause = _find_pause(self.regions, self.end, live.pause_seconds) if self.regions else (start, None)
        if pause is not None:
            return lambda: self._pause(*pause)
        if self.end - start > live.max_item_seconds:
            return lambda: Step(self.events, s._request(start, _forced_cut(self.regions, start, live), final=True))
        if (s._flush or s._finishing) and self.caught_up:
            return self._flushed
        return None

    def _flushed(self) -> Step:
        """A commit or the end of the stream: decode the whole buffer as the item's last."""
        self.s._flush = False
        return Step(self.events, self.s._request(self.s._audio.start_s, self.end, final=True))

    def _silence(self) -> Step:
        s = self.s
        if s._flush and self.caught_up:
            s._flush = False
            if not s._ended_since_flush:
                self.events.append(NothingToCommit())
        s._audio.drop_before(self.end - s.live.keep_seconds)
        if s._finishing and self.caught_up:
            s.done = True
        return Step(self.events, None)

    def _pause(self, cut: float, resume: float | None) -> Step:
        """The item ends at ``cut``: commit the latest decode if it heard the whole utterance, else decode it."""
        s = self.s
        item = s._item
        assert item is not None
        self.events.append(SpeechStopped(item.id, round(cut, 3)))
        speech_end = max(item.start, cut - VAD_PAD)
        if s._agreement.heard_until >= speech_end + s.live.reuse_after_seconds and cut > s._audio.start_s:
            self.events += s._end_item(s._agreement.settle(cut), cut)
            return Step(self.events, None)
        if cut <= s._audio.start_s:  # nothing left to decode: the item's text is what was committed
            self.events += s._end_item([], cut)
            return Step(self.events, None)
        return Step(self.events, s._request(s._audio.start_s, cut, final=True))


def _find_pause(regions: list[Span], end: float, pause: float) -> tuple[float, float | None] | None:
    """The first silence of at least ``pause`` seconds: (where the speech before it ends, padded; where the
    speech after it starts, or None). Regions are padded by VAD_PAD on each side; regions that touch split a
    silence shorter than two pads (too short to tell its length)."""
    for a, b in itertools.pairwise(regions):
        if b.start > a.end and b.start - a.end + 2 * VAD_PAD >= pause:
            return a.end, b.start
    tail = end - regions[-1].end
    if tail > 0 and tail + VAD_PAD >= pause:
        return regions[-1].end, None
    return None


def _forced_cut(regions: list[Span], start: float, live: LiveOptions) -> float:
    """Where to end an item that has run ``max_item_seconds`` without a pause: at the last short pause (touching
    regions) in its second half, else at the limit."""
    limit = start + live.max_item_seconds
    cuts = [a.end for a, b in itertools.pairwise(regions) if start + live.max_item_seconds / 2 <= a.end <= limit]
    return cuts[-1] if cuts else limit


def _live_decode_options(options: DecodeOptions, live: LiveOptions) -> DecodeOptions:
    """Word times are what decodes are compared by; no packing (one buffer per decode). No VAD inside the
    transcriber: the session already decodes only buffers that hold speech, and on a short buffer the
    transcriber's early-stop rule (VAD hears speech after the last segment's end time) decodes the tail a second
    time, which repeated it in 1 of 3 items tried (BAC009S0150W0302). The encoder hears the buffer plus
    ``live.encoder_padding_seconds``, not 30 s: the buffers are short, and a 30 s encoder pass was about a third
    of a live decode's time."""
    return options.with_(pack=False, word_timestamps=True, vad=False,
                         encoder_padding_seconds=live.encoder_padding_seconds)


# -- a driver: a recording played in -------------------------------------------------------------------------

Decode = Callable[[DecodeRequest], "Transcription | Exception"]


def play(
    session: LiveSession,
    audio: np.ndarray,
    decode: Decode,
    *,
    speed: float | None = 1.0,
    parallel: int = 1,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[LiveEvent]:
    """Feed ``audio`` (16 kHz mono) into ``session`` as a live source would, at ``speed`` times real time (None:
    all at once), decoding whatever the session asks for with ``decode``; yields the events as they come.

    Audio arrives by the clock: what a microphone would have delivered while a decode ran is appended after it.
    ``parallel``: decodes that may run at once, each in a thread of its own (1: in this thread, one at a time).
    More gains only with a decoder that runs calls side by side, e.g. ``Transcriber(workers=2)``; any other
    serialises them, correctly but without the gain."""
    pool = ThreadPoolExecutor(parallel, thread_name_prefix="live-decode") if parallel > 1 else None
    flying: deque[tuple[DecodeRequest, Future]] = deque()
    started, fed, total = clock(), 0, len(audio)
    try:
        while not session.done:
            if flying and (len(flying) >= parallel or flying[0][1].done()):
                request, future = flying.popleft()
                yield from session.accept(request, future.result())
                continue
            target = total if speed is None else min(total, int((clock() - started) * speed * SAMPLE_RATE))
            if target > fed:
                session.append(audio[fed:target])
                fed = target
            if fed >= total:
                session.finish()
            if session.due():
                step = session.prepare()
                yield from step.events
                if step.request is not None:
                    flying.append((step.request, _start(decode, step.request, pool)))
            elif flying:
                wait_for([flying[0][1]], timeout=0.02)
            else:
                sleep(0.02)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _start(decode: Decode, request: DecodeRequest, pool: ThreadPoolExecutor | None) -> Future:
    if pool is not None:
        return pool.submit(decode, request)
    future: Future = Future()
    future.set_result(decode(request))
    return future

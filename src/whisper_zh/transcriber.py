"""The transcription pipeline: inputs -> 16 kHz audio -> windows of <= 30 s -> batched decoding -> segments.

:class:`Transcriber` is the one decoding path of the project: the CLI, the server, evaluation and the trainer's
evaluation all call it. It is engine-agnostic: a :class:`~whisper_zh.engines.Decoder` decodes windows, and the
transcriber decides what the windows are (:mod:`whisper_zh.chunking`), batches the windows of *all* inputs
together, re-decodes broken output through the engine's temperature fallback, and hands each recording's
pieces to :mod:`whisper_zh.segments`, which orders them and makes their times valid. Where the options ask for
speakers, each finished recording then goes through speaker diarization (:mod:`whisper_zh.diarize`), a stage
after decoding that leaves the text as it is.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from whisper_zh.audio import AudioInput, describe_source, open_audio
from whisper_zh.chunking import (
    MIN_WINDOW,
    PACK_MAX_CLIP,
    AudioFile,
    Window,
    hold_back_last_sentence,
    make_packs,
    speech_after,
    stream_spans,
    unpack,
    window_at,
)
from whisper_zh.convert import local_model
from whisper_zh.decoding import DEFAULT_ZH_PROMPT, DecodeOptions, compression_ratio
from whisper_zh.diarize import DiarizeOptions
from whisper_zh.diarize.assign import label_speakers
from whisper_zh.diarize.engine import DiarizationEngine, load_engine
from whisper_zh.engines import Decoded, Decoder, Engine, RawSegment, load_decoder
from whisper_zh.errors import AudioError, UsageError
from whisper_zh.models import resolve_model
from whisper_zh.normalize import CJK_RANGES, has_cjk
from whisper_zh.results import Segment, Transcription
from whisper_zh.segments import (
    UNCOVERED_SECONDS,
    Piece,
    build_segments,
    pieces_within,
    redo_spans,
    segment_spans,
    uncovered_speech,
    without_words_within,
)
from whisper_zh.vad import Span, load_detector, speech_regions

logger = logging.getLogger(__name__)

# Audio held in memory at once by transcribe_iter before its windows are decoded (bounds memory on big batches):
# 20 minutes, 77 MB of samples. A group's last batches are part-filled and its clips can share windows only with
# each other, so bigger groups decode in fewer windows: on the 500 shared clips 1200 s took 117 windows in 32 calls
# where 300 s took 133 in 45, and 5 % less CPU (bench/RESULTS.md). A pack's samples are put together only when it
# is decoded (chunking.Window.audio), so the group's audio is held once.
GROUP_SECONDS = 1200.0

ProgressCallback = Callable[[float], None]


@dataclass(frozen=True)
class ModelInfo:
    """What model ran and how: recorded in evaluation reports and shown by the server."""

    name: str
    path: str
    layout: str
    source: str
    engine: str
    storage_type: str
    compute_type: str
    device: str = "unknown"


class Transcriber:
    """Load a Whisper model once and transcribe Mandarin audio with it.

    >>> Transcriber("base").transcribe("clip.wav").text  # doctest: +SKIP
    """

    def __init__(
        self,
        model: str = "base",
        *,
        engine: Engine = "ctranslate2",
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 0,
        workers: int = 1,
        decoder: Decoder | None = None,
        diarizer: DiarizationEngine | None = None,
    ) -> None:
        """``engine``: "ctranslate2" (fast; a Transformers checkpoint is converted once and cached) or
        "transformers" (runs a Transformers checkpoint as it is; no packing or word timestamps). A ready
        ``decoder`` (e.g. an in-memory model being trained) is used as it is. ``workers``: calls that may decode
        at once from several threads (ctranslate2), each on ``cpu_threads`` threads. ``diarizer``: the speaker
        diarization engine for ``DecodeOptions(diarize=...)`` (default: the built-in one, loaded on first use)."""
        self.model_name = str(model)
        if decoder is None:
            resolved = resolve_model(model)  # a name -> a local directory, in whichever layout it came
            local = local_model(resolved, engine)  # in the engine's layout (converted and cached once)
            decoder = load_decoder(local.path, engine, storage_type=local.storage_type, device=device,
                                   compute_type=compute_type, cpu_threads=cpu_threads, workers=workers)
            layout, source = resolved.layout, resolved.source
        else:
            layout, source = "in-memory" if decoder.model_path.startswith("<") else "local", "local"
        self.decoder = decoder
        self._diarizer = diarizer
        self._device = device
        load_detector()
        self.info = ModelInfo(self.model_name, decoder.model_path, layout, source, decoder.name,
                              decoder.storage_type, decoder.compute_type, getattr(decoder, "device", "unknown"))

    @property
    def engine(self) -> str:
        return self.decoder.name

    @property
    def is_multilingual(self) -> bool:
        return self.decoder.is_multilingual

    @property
    def languages(self) -> frozenset[str]:
        return self.decoder.languages

    @property
    def diarizer(self) -> DiarizationEngine:
        """The speaker diarization engine (the built-in one is loaded on first use)."""
        if self._diarizer is None:
            self._diarizer = load_engine(device=self._device)
        return self._diarizer

    def label_speakers(self, transcription: Transcription, audio: np.ndarray, options: DiarizeOptions) -> Transcription:
        """``transcription`` of ``audio`` (16 kHz) with speakers on its segments and words: a stage after decoding,
        which leaves the text as it is (segments are split where the speaker changes)."""
        if not transcription.segments:
            return transcription
        return label_speakers(transcription, self.diarizer.turns(audio, options))

    def transcribe(self, audio: AudioInput, options: DecodeOptions | None = None) -> Transcription:
        """Transcribe one input (path, bytes, file object or 16 kHz array); raises AudioError on bad input."""
        result = self.transcribe_batch([audio], options)[0]
        if isinstance(result, AudioError):
            raise result
        return result

    def transcribe_batch(
        self,
        inputs: Iterable[AudioInput],
        options: DecodeOptions | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        allow_truncated: bool = False,
    ) -> list[Transcription | AudioError]:
        """Transcribe many inputs, batching their windows; a bad input yields its AudioError in its slot."""
        items = list(inputs)
        results: list[Transcription | AudioError | None] = [None] * len(items)
        for index, result in self.transcribe_iter(items, options, on_progress=on_progress,
                                                  allow_truncated=allow_truncated):
            results[index] = result
        return results  # type: ignore[return-value]

    def transcribe_iter(
        self,
        inputs: Iterable[AudioInput],
        options: DecodeOptions | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        group_seconds: float = GROUP_SECONDS,
        allow_truncated: bool = False,
    ) -> Iterator[tuple[int, Transcription | AudioError]]:
        """Yield (input index, result) as groups of inputs finish; errors are yielded as soon as they are found.

        Inputs are read until ``group_seconds`` of audio are held, then decoded together. A recording longer
        than audio.SPOOL_SECONDS is decoded from a temporary file, a window at a time (audio.open_audio)."""
        options = options or DecodeOptions()
        self.check(options)
        if options.diarize and self.decoder.aligns_words:  # segments are split at words where the speaker changes
            options = options.with_(word_timestamps=True)
        group: list[AudioFile] = []
        held = 0.0
        for index, source in enumerate(inputs):
            try:
                audio = open_audio(source, allow_truncated=allow_truncated)
            except AudioError as exc:
                yield index, exc
                continue
            group.append(AudioFile(index, describe_source(source), audio))
            held += group[-1].duration
            if held >= group_seconds:
                yield from self._transcribe_group(group, options, on_progress)
                group, held = [], 0.0
        if group:
            yield from self._transcribe_group(group, options, on_progress)

    def _transcribe_group(self, group: list[AudioFile], options: DecodeOptions,
                          on_progress: ProgressCallback | None) -> Iterator[tuple[int, Transcription]]:
        audio = {file.index: file.audio for file in group}
        for index, result in _Run(self.decoder, options, on_progress).transcribe(group):
            if options.diarize is not None:
                result = self.label_speakers(result, audio[index], options.diarize)
            yield index, result


    def check(self, options: DecodeOptions) -> None:
        """Refuse options this model or engine cannot honour, before any audio is read."""
        if options.word_timestamps and not self.decoder.aligns_words:
            raise UsageError(f"word timestamps need the ctranslate2 engine, not {self.decoder.name}")
        if options.language and options.language not in self.languages:
            known = "en only (an English-only model)" if self.languages == {"en"} else "e.g. zh, en, yue, ja"
            raise UsageError(f"unknown language '{options.language}' for this model: use a language code "
                             f"({known}) or 'auto'")


class _Run:
    """One group of recordings decoded together: plan their streams and packs, decode them in batches, and
    assemble each recording."""

    def __init__(self, decoder: Decoder, options: DecodeOptions, on_progress: ProgressCallback | None) -> None:
        self.decoder, self.options, self.on_progress = decoder, options, on_progress

    def transcribe(self, files: list[AudioFile]) -> Iterator[tuple[int, Transcription]]:
        # Clips shorter than MIN_WINDOW cannot hold a syllable: they are answered at once, with no text, and never
        # packed (1,000 clips of 0.1 s packed 32 to a window sent every window through the temperature fallback
        # and then decoded each clip again: 854 s for 300 of them, bench/RESULTS.md, issue 30).
        for file in (f for f in files if f.duration < MIN_WINDOW):
            logger.info("%s: %.2f s is too short to hold a word; nothing decoded", file.source, file.duration)
            self._credit(file, file.duration)
            yield file.index, self._assemble(file, [])
        files = [f for f in files if f.duration >= MIN_WINDOW]
        self._assign_languages(files)
        pack = self.options.pack and self.decoder.aligns_words
        packable = [f for f in files if pack and f.duration <= PACK_MAX_CLIP]
        for file in packable:  # where each clip's speech is, to tell whether its words all came back
            file.regions = speech_regions(file.audio) if self.options.vad else None
        tasks: list[_Task] = [self._stream(f, span) for f in files if f not in packable
                              for span in stream_spans(f, use_vad=self.options.vad, streams=self.options.batch_size)]
        tasks += [_Pack(window) for window in make_packs(packable)]
        pieces: dict[AudioFile, list[Piece]] = {f: [] for f in files}
        redo = self._decode_into(pieces, tasks)
        if len(redo) > 1:
            # Most clips a pack gives back are the last ones of their pack, which the decoder never reached (its text
            # stopped early, or its last segment was unfinished and dropped): 50 of 56 on the 500 shared clips. They
            # are packed again among themselves, which costs a fifth of the windows of decoding each alone.
            logger.debug("%d packed clips packed again", len(redo))
            redo = self._decode_into(pieces, [_Pack(window) for window in make_packs(redo)])
        if redo:  # clips the packed passes could not place with confidence: decode them on their own
            logger.debug("%d packed clips decoded again on their own", len(redo))
            self._decode_into(pieces, [self._stream(f, Span(0.0, f.duration), credit=False) for f in redo])
        self._cover(files, pieces)
        for file in files:
            self._credit(file, file.duration - file.credited)  # silences left out, clips decoded again
            yield file.index, self._assemble(file, pieces[file])

    def _decode_into(self, pieces: dict[AudioFile, list[Piece]], tasks: list[_Task]) -> list[AudioFile]:
        """Decode ``tasks`` and add what they heard to ``pieces``; returns the packed clips to decode again."""
        redo: list[AudioFile] = []
        for window, segments in self._decode(tasks):
            if not window.is_pack:
                pieces[window.file] += [Piece(s.shifted(window.offset), window.offset) for s in segments]
                continue
            for file, segment in unpack(window, segments).items():
                if segment is None:
                    redo.append(file)
                else:
                    pieces[file].append(Piece(segment, 0.0))
        return redo

    def _cover(self, files: list[AudioFile], pieces: dict[AudioFile, list[Piece]]) -> None:
        """The safety net: speech that VAD hears and no segment covers (the decoder skipped it: another voice in
        the middle of a window, a window's text dropped as made up) is decoded again on its own, one stream over
        each such stretch, and what that hears there joins the recording's pieces (build_segments puts them in
        time order). A stretch decoded again can be skipped again (Whisper leaves out a window's first sentences
        now and then): what is still uncovered is then decoded once more, each stretch of speech on its own.
        Speech still without a segment is reported (Transcription.uncovered and a warning), never dropped
        silently. Packed clips are checked too, after their own checks (chunking.unpack)."""
        checked = [f for f in files if f.regions]
        tried: dict[AudioFile, set[Span]] = {f: set() for f in checked}
        pending = checked
        for join in COVER_JOINS:
            gaps = {f: _uncovered(f, pieces[f]) for f in pending}
            pending = [f for f in pending if gaps[f]]
            spans = {f: [s for s in redo_spans(gaps[f], f.duration, join=join) if s not in tried[f]] for f in pending}
            tasks = [self._stream(f, span, credit=False) for f in pending for span in spans[f]]
            if not tasks:
                break
            logger.info("%d stretches of speech without text decoded again on their own", len(tasks))
            again: dict[AudioFile, list[Piece]] = {f: [] for f in pending}
            self._decode_into(again, tasks)
            for file in pending:
                tried[file].update(spans[file])
                pieces[file] = _merge_found(pieces[file], again[file], gaps[file])
        for file in (f for f in checked if tried[f]):  # the others had no uncovered speech to begin with
            file.uncovered = _uncovered(file, pieces[file])
            for span in file.uncovered:
                logger.warning("%s: %.1f-%.1f s: voice activity detection hears speech there, but no text was "
                               "decoded", file.source, span.start, span.end)

    def _stream(self, file: AudioFile, span: Span, *, credit: bool = True) -> _Stream:
        # Segments of a cut recording are rebuilt from word times; packs are split back by them.
        words = self.decoder.aligns_words and (self.options.word_timestamps or file.regions is not None)
        return _Stream(file, span, words=words, credit=credit, conditioned=self.options.condition_on_previous_text)

    def _assign_languages(self, files: list[AudioFile]) -> None:
        for file in files:
            if self.options.language:
                file.language = self.options.language
            elif not self.decoder.is_multilingual:
                file.language = "en"
            else:
                file.language = self.decoder.detect_language(file.audio)

    def _decode(self, tasks: list[_Task]) -> Iterator[tuple[Window, list[RawSegment]]]:
        """Decode every task's windows; yields each window with its segments (silence dropped).

        Each round decodes the next window of every unfinished task, in batches of one language and setting;
        a stream's next window is known only once its current one is decoded."""
        while tasks:
            groups: dict[tuple, list[_Task]] = {}
            for task in tasks:
                key = (task.head.file.language or "zh", task.words, task.timestamps, task.context is not None)
                groups.setdefault(key, []).append(task)
            for (language, words, timestamps, _context), group in groups.items():
                # Similar durations decode to similar lengths, so beams in a batch finish together; similar contexts
                # keep more of each (a batch keeps as many context tokens as its shortest context has).
                group.sort(key=lambda t: (len(t.context or ""), t.head.duration), reverse=True)
                for start in range(0, len(group), self.options.batch_size):
                    batch = group[start : start + self.options.batch_size]
                    yield from self._decode_batch(batch, language, words, timestamps)
            tasks = [task for task in tasks if not task.done]

    def _decode_batch(
        self, batch: list[_Task], language: str, words: bool, timestamps: bool
    ) -> Iterator[tuple[Window, list[RawSegment]]]:
        windows = [task.head for task in batch]
        results = self.decoder.decode([w.audio for w in windows], self.options, language=language, words=words,
                                      timestamps=timestamps, contexts=[task.context for task in batch])
        # Whisper repeated its previous text, or skipped what sounded like it: decode those windows without it.
        # It wrote the Mandarin prompt sentence itself (short clips: 中国 -> 中国是普通话的句子。): without any prompt.
        echoed = {i for i, decoded in enumerate(results) if _echoes_prompt(decoded.segments)}
        unprompted = {i for i, (task, decoded) in enumerate(zip(batch, results, strict=True)) if i not in echoed
                      and (_copies_context(decoded.segments, task.context) or task.skipped_start(decoded.segments))}
        bare = self.options.with_(initial_prompt=None) if echoed else self.options
        for rows, options in ((sorted(unprompted), self.options), (sorted(echoed), bare)):
            if rows:
                logger.debug("%d windows repeated or skipped their prompt; decoded again without it", len(rows))
                again = self.decoder.decode([windows[i].audio for i in rows], options, language=language,
                                            words=words, timestamps=timestamps)
                for i, decoded in zip(rows, again, strict=True):
                    results[i] = decoded
        for i, (task, window, decoded) in enumerate(zip(batch, windows, results, strict=True)):
            options = bare if i in echoed else self.options
            if _needs_fallback(decoded.segments, options):
                context = None if i in echoed or i in unprompted else task.context
                decoded = self._fallback(window, options, language, words, timestamps, context)
            silent = _is_silence(decoded.segments, self.options) or task.too_much_text(decoded.segments) or (
                not task.heard_speech() and _no_speech(decoded.segments, self.options)
            )
            segments, progress = task.advance(decoded, [] if silent else list(decoded.segments))
            for file, seconds in progress:
                self._credit(file, seconds)
            yield window, segments

    def _fallback(self, window: Window, options: DecodeOptions, language: str, words: bool, timestamps: bool,
                  context: str | None) -> Decoded:
        """``window`` decoded again with the temperature fallback. Its samples can write the Mandarin prompt
        sentence as if heard, as the first pass can (复旦 -> 普通话的句子。 in the guard's shuffled keywords): then
        the fallback runs again without any prompt."""
        decoded = self.decoder.decode_with_fallback(window.audio, options, language=language, words=words,
                                                    timestamps=timestamps, context=context)
        if options.initial_prompt is not None and _echoes_prompt(decoded.segments):
            decoded = self.decoder.decode_with_fallback(window.audio, options.with_(initial_prompt=None),
                                                        language=language, words=words, timestamps=timestamps)
        return decoded

    def _credit(self, file: AudioFile, seconds: float) -> None:
        """Report ``seconds`` more of ``file`` decoded."""
        seconds = min(seconds, file.duration - file.credited)
        if seconds > 0:
            file.credited += seconds
            if self.on_progress:
                self.on_progress(seconds)

    def _assemble(self, file: AudioFile, pieces: list[Piece]) -> Transcription:
        language = file.language or self.options.language or "zh"
        segments = build_segments(pieces, duration=file.duration, options=self.options, language=language,
                                  regions=file.regions, source=file.source)
        if self.options.task == "translate":
            _warn_untranslated(file.source, segments)
        uncovered = [(span.start, span.end) for span in file.uncovered]
        return Transcription(file.source, segments, language, file.duration, uncovered)


def _warn_untranslated(source: str, segments: Sequence[Segment]) -> None:
    """Whisper's translation to English can leave Chinese in the text (base: a word at a sentence's end, or a
    whole sentence left in Chinese, on 2 of 12 AISHELL clips). Nothing in the decoder reliably avoids it, so it is
    said, with the segments it is in, rather than handed on as English."""
    mixed = [s for s in segments if has_cjk(s.text)]
    if mixed:
        logger.warning("%s: %d of %d translated segment(s) still hold Chinese characters (e.g. %r); a larger "
                       "model translates better, or transcribe and translate the text", source, len(mixed),
                       len(segments), mixed[0].text[:40])


def _uncovered(file: AudioFile, pieces: list[Piece]) -> list[Span]:
    """The speech VAD hears in ``file`` that no segment of ``pieces`` covers."""
    return uncovered_speech(file.regions or [], segment_spans(pieces, file.regions), file.duration)


def _merge_found(pieces: list[Piece], again: list[Piece], gaps: list[Span]) -> list[Piece]:
    """``pieces`` with what a second pass (``again``) heard inside ``gaps``; where it heard words, what the first
    pass wrote there (a loop's tail) gives way."""
    found = pieces_within(again, gaps, pieces)
    heard = [s for s in gaps if any(s.start <= (w.start + w.end) / 2 <= s.end
                                    for p in found for w in p.segment.words or ())]
    return without_words_within(pieces, heard) + found


# The safety net's rounds (_Run._cover): stretches of uncovered speech less than this apart (seconds) are decoded
# again together, then, for what is still uncovered, each on its own.
COVER_JOINS = (UNCOVERED_SECONDS, 0.0)


# A window with less final text than this (seconds) is taken whole: nothing in it was final, and a stream must
# move on. Any longer final part is kept and the stream goes on from its end.
MIN_STEP = 0.1
# Speech heard this long after a window's last segment means the decoder stopped early (seconds).
EARLY_STOP_SLACK = 0.3
# Text decoded above this temperature (a fallback) is not trusted as the next window's prompt (Whisper's rule).
PROMPT_RESET_TEMPERATURE = 0.5
# Text that ends this close to a full window's end while speech goes on across it (half of it heard within this
# much either side of the edge) was cut by the edge (seconds).
EDGE_SECONDS = 0.5
# A window's first word this late, with speech before it, means the words before it were left out (seconds).
LATE_START = 2.0


class _Task(Protocol):
    head: Window
    words: bool
    timestamps: bool
    context: str | None
    done: bool

    def advance(
        self, decoded: Decoded, kept: list[RawSegment]
    ) -> tuple[list[RawSegment], list[tuple[AudioFile, float]]]:
        """Take the result of ``head``; returns the segments that are final, and (recording, seconds of it
        decoded by this step) for progress."""
        ...

    def heard_speech(self) -> bool:
        """False when voice activity detection heard no speech in ``head`` (True when it did not run)."""
        ...

    def skipped_start(self, segments: Sequence[RawSegment]) -> bool:
        """True when ``segments`` begin well after speech that ``head`` opens with (words were left out)."""
        ...

    def too_much_text(self, segments: Sequence[RawSegment]) -> bool:
        """True when ``segments`` hold more text than anyone could say in ``head`` (made up, to be dropped)."""
        ...


class _Stream:
    """Consecutive windows over one stretch of a recording: Whisper's long-form loop. Each window starts where
    the text before it is final (timestamp tokens say where) and is prompted with that text; many streams are
    decoded side by side, so a long recording is batched without losing its context."""

    timestamps = True

    def __init__(self, file: AudioFile, span: Span, *, words: bool, credit: bool = True,
                 conditioned: bool = True) -> None:
        # conditioned: each window prompted with the text before it (DecodeOptions.condition_on_previous_text)
        self.file, self.span, self.words, self.credit, self.conditioned = file, span, words, credit, conditioned
        self.context: str | None = None
        self.done = span.end - span.start < MIN_WINDOW
        self.head = window_at(file, span.start, span.end)

    def heard_speech(self) -> bool:
        window = self.head
        return self.file.regions is None or speech_after(self.file, window.offset, window.offset + window.duration)

    def too_much_text(self, segments: Sequence[RawSegment]) -> bool:
        # A short tail of a recording decoded into a repeat of the sentence before it (15 characters in 0.7 s).
        spoken = sum(len(_SPOKEN_UNIT.findall(s.text)) for s in segments)
        return spoken > MAX_UNITS_PER_SECOND * self.head.duration + 2

    def skipped_start(self, segments: Sequence[RawSegment]) -> bool:
        # Prompted with the text before, Whisper sometimes leaves out the window's first sentence when it sounds
        # like the end of that text (六十四岁…挑水泥 after 日挑万斤水泥), and starts several seconds in. Without
        # VAD there is no telling speech from silence there, and a window decoded again costs little.
        # It can also leave out everything, taking all it heard for the text before: nothing came back where VAD
        # hears speech (a short last window of a stream, all of it said before its prompt ends).
        if not self.context:
            return False
        if not any(s.text.strip() for s in segments):
            return self.file.regions is not None and self._speech_before(self.head.duration)
        first = next((w for s in segments for w in s.words or ()), None)
        return bool(first and first.start > LATE_START and (self.file.regions is None
                                                            or self._speech_before(first.start)))

    def _speech_before(self, seconds: float) -> bool:
        """Whether VAD hears at least LATE_START / 2 of speech in the window's first ``seconds``."""
        window = self.head
        return speech_after(self.file, window.offset, window.offset + seconds, at_least=LATE_START / 2,
                            padded=False)

    def advance(
        self, decoded: Decoded, kept: list[RawSegment]
    ) -> tuple[list[RawSegment], list[tuple[AudioFile, float]]]:
        window = self.head
        step = decoded.complete if decoded.complete >= MIN_STEP else window.duration
        kept, step = self._hold_back(kept, step)
        # Whisper sometimes ends a window after a sentence or two although speech goes on (the Mandarin prompt
        # is one short sentence): where VAD hears speech after the last segment, the next window starts there.
        last = max((s.end for s in kept), default=0.0)
        if kept and last >= MIN_STEP and speech_after(self.file, window.offset + last + EARLY_STOP_SLACK,
                                                          window.offset + step):
            step = min(step, last)
        trusted = self.conditioned and kept and all(s.temperature <= PROMPT_RESET_TEMPERATURE for s in kept)
        text = "".join(s.text for s in kept).strip() if trusted else ""
        self.context = (((self.context or "") + text)[-CONTEXT_CHARS:] or None) if trusted else None
        position = window.offset + step
        # Nothing left to hear (VAD hears no speech in the rest, its padding aside): decoding silence only invites
        # hallucinated text.
        self.done = self.span.end - position < MIN_WINDOW or (
            self.file.regions is not None
            and not speech_after(self.file, position + EARLY_STOP_SLACK, self.span.end, padded=False)
        )
        if not self.done:
            self.head = window_at(self.file, position, self.span.end)
        return kept, [(self.file, step if self.credit else 0.0)]

    def _hold_back(self, kept: list[RawSegment], step: float) -> tuple[list[RawSegment], float]:
        """Where the window's text runs into its end and the speaker goes on past it, its last sentence was cut
        by the edge: leave it to the next window (chunking.hold_back_last_sentence)."""
        window = self.head
        edge = window.offset + window.duration
        words = [w for s in kept for w in s.words or ()]
        if not (words and self.span.end - edge >= MIN_WINDOW and words[-1].end >= window.duration - EDGE_SECONDS
                and speech_after(self.file, edge - EDGE_SECONDS, edge + EDGE_SECONDS, at_least=EDGE_SECONDS,
                                 padded=False)):
            return kept, step
        held = hold_back_last_sentence(kept, earliest=window.duration / 2)
        return held if held is not None else (kept, step)


# The previous text kept as a stream's context (the engine keeps at most half of Whisper's 448-token window).
CONTEXT_CHARS = 200


# Faster than anyone reads aloud: the shared clips' fastest speaker says under 6 characters a second; English
# runs at about 3 words a second. A unit is a Chinese character or a word of letters or digits.
MAX_UNITS_PER_SECOND = 8.0
_SPOKEN_UNIT = re.compile(f"[{CJK_RANGES}]|[^\\W{CJK_RANGES}]+")


class _Pack:
    """Several short clips decoded in one window, split back into clips by word times."""

    words = True
    # Decoded with timestamps, Whisper punctuates a pack as it does a clip alone (6.9 marks per 100 characters on
    # 40 shared clips, as alone); without them it ran clips together unpunctuated (3.9).
    timestamps = True
    context = None

    def __init__(self, window: Window) -> None:
        self.head = window
        self.done = False

    def heard_speech(self) -> bool:
        return any(m.file.regions is None or speech_after(m.file, 0.0, m.file.duration) for m in self.head.members)

    def too_much_text(self, segments: Sequence[RawSegment]) -> bool:
        return False  # judged clip by clip when the pack is split (chunking.unpack)

    def skipped_start(self, segments: Sequence[RawSegment]) -> bool:
        return False  # judged clip by clip when the pack is split (chunking.unpack)

    def advance(
        self, decoded: Decoded, kept: list[RawSegment]
    ) -> tuple[list[RawSegment], list[tuple[AudioFile, float]]]:
        self.done = True
        return kept, [(m.file, m.file.duration) for m in self.head.members]


def _copies_context(segments: Sequence[RawSegment], context: str | None, min_chars: int = 8) -> bool:
    """Whether a segment repeats a stretch of the prompt's previous text word for word (Whisper's known failure
    when conditioned on previous text: it copies the prompt instead of transcribing the audio)."""
    if not context:
        return False
    seen = _letters(context)
    return any(len(text) >= min_chars and text in seen for text in (_letters(s.text) for s in segments))


def _letters(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum())


# Five characters in a row of the Mandarin prompt sentence (以下是普通话的句子) are an echo of it, not speech.
_PROMPT_LETTERS = _letters(DEFAULT_ZH_PROMPT)
_PROMPT_ECHOES = frozenset(_PROMPT_LETTERS[i : i + 5] for i in range(len(_PROMPT_LETTERS) - 4))


def _echoes_prompt(segments: Sequence[RawSegment]) -> bool:
    """Whether Whisper wrote part of the Mandarin prompt sentence, the text just before the audio, as if heard
    (seen on one- and two-word clips: 中国 -> 中国是普通话的句子。)."""
    return any(echo in letters for letters in (_letters(s.text) for s in segments) for echo in _PROMPT_ECHOES)


def _needs_fallback(segments: Sequence[RawSegment], options: DecodeOptions) -> bool:
    """Whisper's rule: too repetitive, or too unsure where there is speech, means decode again hotter."""
    if len(options.temperature) < 2 or not segments:
        return False
    text = "".join(s.text for s in segments)
    first = segments[0]
    too_repetitive = bool(text) and compression_ratio(text) > options.compression_ratio_threshold
    unsure = first.avg_logprob < options.log_prob_threshold
    silent = first.no_speech_prob > options.no_speech_threshold
    return too_repetitive or (unsure and not silent)


def _no_speech(segments: Sequence[RawSegment], options: DecodeOptions) -> bool:
    """The decoder's own no-speech probability says there is no speech (on its own it is not enough: Whisper
    sets it high on some quiet speech, which is why Whisper's rule asks for low confidence too)."""
    return not segments or segments[0].no_speech_prob > options.no_speech_threshold


def _is_silence(segments: Sequence[RawSegment], options: DecodeOptions) -> bool:
    if not segments:
        return True
    first = segments[0]
    return first.no_speech_prob > options.no_speech_threshold and first.avg_logprob < options.log_prob_threshold


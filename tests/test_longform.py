"""Long audio keeps its order and its times valid: the real model on continuous speech, and a property test of
the windowing and assembly over generated layouts with a scripted decoder.

The scripted decoder stands in for the model only where the model cannot be steered: it "hears" real speech
(shared clips, so voice activity detection runs for real) whose transcript is a run of distinct characters in
time order, punctuated, and it misbehaves the ways Whisper does (early stops, broken output that needs the
fallback, words crossing a window edge, windows decoded as silence, jittered word times, the first seconds of a
prompted window left out). Whatever it does, the pipeline must never reorder or repeat text, must not lose text
unless a window came back silent, and must produce valid times in segments and subtitle cues.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from tests.media import read_flac

from whisper_zh import DecodeOptions, Transcriber
from whisper_zh.engines import Decoded, RawSegment, RawWord
from whisper_zh.subtitles import CueOptions, make_cues
from whisper_zh.vad import SPEECH_PAD, speech_regions
from whisper_zh.writers import format_transcription

SR = 16000
FIRST_CHAR = 0x4E00


def assert_valid_times(result) -> None:
    floor = 0.0
    for segment in result.segments:
        assert floor <= segment.start < segment.end <= result.duration + 1e-9, segment
        for word in segment.words or ():
            assert segment.start <= word.start <= word.end <= segment.end, (word, segment)
        floor = segment.end
    floor = 0.0
    for cue in make_cues(result):
        assert floor <= cue.start < cue.end <= result.duration + 1e-9, cue
        floor = cue.end


# -- the real model on continuous speech ------------------------------------------------------------------


def _out_of_order(refs: list[str], text: str) -> int:
    from rapidfuzz import fuzz

    positions = []
    for ref in refs:
        found = fuzz.partial_ratio_alignment(ref, text)
        if found.score >= 60:
            positions.append(found.dest_start)
    runs: list[int] = []  # longest increasing run of positions
    import bisect

    for p in positions:
        k = bisect.bisect_right(runs, p)
        runs[k : k + 1] = [p]
    return len(positions) - len(runs)


def test_continuous_speech_comes_out_in_order_with_valid_times_and_readable_cues(transcriber, aishell_rows):
    """24 sentences read back to back (~2 min, only the clips' own silences between them), as in a lecture."""
    from whisper_zh.metrics import cer
    from whisper_zh.normalize import TextNormalizer

    rows = [r for r in aishell_rows if "W0300" <= r["id"][-5:] <= "W0323"]
    audio = np.concatenate([read_flac(r["path"]) for r in rows])
    result = transcriber.transcribe(audio, DecodeOptions(word_timestamps=True))
    normalize = TextNormalizer()
    refs = [normalize(r["text"]) for r in rows]
    assert _out_of_order(refs, normalize(result.text)) == 0
    assert cer(["".join(refs)], [result.text], normalizer=normalize).rate < 0.2
    assert_valid_times(result)
    limits = CueOptions()
    cues = make_cues(result, limits)
    assert all(len(line) <= limits.max_line_chars for c in cues for line in c.lines)
    assert all(len(c.lines) <= limits.max_lines and c.end - c.start <= limits.max_cue_seconds for c in cues)
    srt = format_transcription(result, "srt")
    assert srt.count(" --> ") == len(cues)
    # Punctuation survives long form: the Mandarin context reaches every window.
    marks = sum(result.text.count(m) for m in "，。？！")
    assert marks >= len(rows) / 2, result.text


class _PromptRecorder:
    """The real decoder, passed through, noting the text-before each window was prompted with."""

    def __init__(self, decoder) -> None:
        self.decoder, self.contexts = decoder, []

    def __getattr__(self, name: str):
        return getattr(self.decoder, name)

    def decode(self, windows, options, **kwargs):
        self.contexts += list(kwargs.get("contexts") or [None] * len(windows))
        return self.decoder.decode(windows, options, **kwargs)

    def decode_with_fallback(self, window, options, **kwargs):
        self.contexts.append(kwargs.get("context"))
        return self.decoder.decode_with_fallback(window, options, **kwargs)


def test_condition_on_previous_text_off_decodes_every_window_without_the_text_before(transcriber, aishell_rows):
    """`DecodeOptions(condition_on_previous_text=False)` decodes every window of a long recording without the text
    before it (it was ignored: every window after the first got it). 40 s of news read back to back: two windows
    or more, in one stream."""
    from whisper_zh import Transcriber

    rows = [r for r in aishell_rows if "W0300" <= r["id"][-5:] <= "W0308"]
    audio = np.concatenate([read_flac(r["path"]) for r in rows])
    recorder = _PromptRecorder(transcriber.decoder)
    options = DecodeOptions(condition_on_previous_text=False, batch_size=1)
    result = Transcriber(decoder=recorder).transcribe(audio, options)
    assert len(recorder.contexts) >= 2 and result.text
    assert not any(recorder.contexts), recorder.contexts


# -- the property test ----------------------------------------------------------------------------------


@dataclass
class Source:
    """A recording the scripted decoder can hear: its samples and its transcript (char, start, end)."""

    audio: np.ndarray
    chars: list[tuple[str, float, float]]


class ScriptedDecoder:
    """A Decoder that transcribes known recordings exactly, then misbehaves at random (see the module docstring).

    It finds where a window comes from by looking its samples up in the known recordings (windows are exact
    slices of them, or packs of whole ones with silence between)."""

    name = "scripted"
    model_path = "<scripted>"
    storage_type = compute_type = "none"
    aligns_words = True
    is_multilingual = True
    languages = frozenset({"zh"})

    def __init__(self, sources: list[Source], rng: np.random.Generator, *, lossy: bool) -> None:
        self.sources, self.rng, self.lossy = sources, rng, lossy
        self.raw = [s.audio.tobytes() for s in sources]

    def detect_language(self, audio: np.ndarray) -> str:
        return "zh"

    def decode(self, windows: Sequence[np.ndarray], options: DecodeOptions, *, language: str, words: bool,
               timestamps: bool = False, contexts: Sequence[str | None] | None = None) -> list[Decoded]:
        contexts = contexts or [None] * len(windows)
        return [self._misbehave(self._skip(self._hear(w), context), len(w) / SR, words, timestamps)
                for w, context in zip(windows, contexts, strict=True)]

    def _skip(self, heard: list, context: str | None) -> list:
        """Prompted with the text before, sometimes leaves out the window's first seconds of speech."""
        skipped = sum(1 for _, start, _ in heard if start < 3.0)
        if context and skipped >= 6 and self.rng.random() < 0.5:
            return heard[skipped:]
        return heard

    def decode_with_fallback(self, window: np.ndarray, options: DecodeOptions, *, language: str, words: bool,
                             timestamps: bool = False, context: str | None = None) -> Decoded:
        heard = self._hear(window)
        return Decoded(tuple(_segments(heard, words, temperature=0.4)), len(window) / SR)

    def _hear(self, window: np.ndarray) -> list[tuple[str, float, float]]:
        """The transcript of ``window``: every known character whose middle lies inside it."""
        found: dict[tuple[int, int], None] = {}
        for p in range(0, max(1, len(window) - 256), SR // 2):
            probe = window[p : p + 256]
            if not np.any(probe):
                continue
            for s, raw in enumerate(self.raw):
                at = raw.find(probe.tobytes())
                while at >= 0 and at % 4:
                    at = raw.find(probe.tobytes(), at + 1)
                if at >= 0:
                    found[(s, at // 4 - p)] = None
        heard = []
        for s, shift in found:
            for char, start, end in self.sources[s].chars:
                a, b = start - shift / SR, end - shift / SR
                if 0 <= (a + b) / 2 < len(window) / SR:
                    heard.append((char, a, b))
        return sorted(heard, key=lambda c: c[1])

    def _misbehave(self, heard: list, duration: float, words: bool, timestamps: bool) -> Decoded:
        rng = self.rng
        if self.lossy and heard and rng.random() < 0.1:
            return Decoded((), duration)  # taken for silence: its text is lost, nothing else may break
        if heard and rng.random() < 0.15:  # broken output: the transcriber must call decode_with_fallback
            return Decoded((RawSegment("的的的的的的的的的的的的的的的的", 0.0, duration, -2.5, 0.1),), duration)
        jittered = [(c, max(0.0, a + rng.normal(0, 0.03)), max(0.0, b + rng.normal(0, 0.03))) for c, a, b in heard]
        complete = duration
        if timestamps and len(heard) > 4 and rng.random() < 0.3:  # stops early, its last segment unfinished
            cut = int(rng.integers(1, len(heard) - 1))
            complete = max(0.0, (heard[cut - 1][2] + heard[cut][1]) / 2)
            jittered = jittered[:cut]
        elif not timestamps and len(heard) > 4 and rng.random() < 0.2:  # a pack's decode stops after a clip
            jittered = jittered[: int(rng.integers(1, len(heard)))]
        return Decoded(tuple(_segments(jittered, words)), complete)


def _segments(chars: list, words: bool, temperature: float = 0.0) -> list[RawSegment]:
    """Split the heard characters into segments of up to 7 characters (Whisper's segments are sentences)."""
    out = []
    for k in range(0, len(chars), 7):
        part = chars[k : k + 7]
        part = [(_marked(c), a, b) for c, a, b in part]
        text = "".join(c for c, _, _ in part)
        aligned = tuple(RawWord(a, max(a, b), c, 0.9) for c, a, b in part) if words else None
        out.append(RawSegment(text, part[0][1], max(part[-1][2], part[0][1]), -0.2, 0.05, words=aligned,
                              temperature=temperature))
    return out


def _marked(char: str) -> str:
    """Punctuation as Whisper writes it: a sentence mark after some characters, a clause mark after others."""
    return char + ("。" if ord(char) % 9 == 0 else "，" if ord(char) % 4 == 0 else "")


@pytest.fixture(scope="module")
def speech_clips(aishell_rows) -> list[np.ndarray]:
    return [read_flac(row["path"]) for row in aishell_rows[130:160]]


def _source(audio: np.ndarray, next_char: list[int], per_second: float) -> Source:
    """``audio`` with a transcript of distinct characters spread over the speech VAD hears in it."""
    chars = []
    for region in speech_regions(audio):
        # the speech itself, not the padding VAD adds each side of it
        onset, offset = region.start + SPEECH_PAD, max(region.start + SPEECH_PAD + 0.1, region.end - SPEECH_PAD)
        count = max(1, int((offset - onset) * per_second))
        for j in range(count):
            start = onset + (offset - onset) * j / count
            chars.append((chr(next_char[0]), start, start + (offset - onset) / count))
            next_char[0] += 1
    return Source(audio, chars)


def _layout(clips: list[np.ndarray], rng: np.random.Generator, next_char: list[int]) -> Source:
    """A recording of 3-10 of ``clips`` with gaps of 0-4 s between them."""
    pieces = []
    for k in rng.choice(len(clips), size=int(rng.integers(3, len(clips) + 1)), replace=False):
        pieces += [clips[k], np.zeros(int(rng.choice([0.0, 0.3, 1.0, 4.0]) * SR), np.float32)]
    return _source(np.concatenate(pieces), next_char, per_second=3.0)


@pytest.mark.parametrize("lossy", [False, True], ids=["lossless", "lossy"])
@pytest.mark.parametrize("seed", range(16))
def test_any_layout_keeps_text_in_order_with_valid_times(speech_clips, seed, lossy):
    rng = np.random.default_rng(seed)
    next_char = [FIRST_CHAR]
    # Each clip is heard in one recording only (the decoder finds windows by their samples).
    long = [_layout(speech_clips[:10], rng, next_char), _layout(speech_clips[10:20], rng, next_char)]
    short = [_source(speech_clips[20 + int(k)], next_char, per_second=0.5) for k in rng.choice(10, 5, replace=False)]
    sources = long + short
    decoder = ScriptedDecoder(sources, rng, lossy=lossy)
    transcriber = Transcriber(decoder=decoder)
    options = DecodeOptions(word_timestamps=bool(seed % 2), batch_size=int(rng.integers(1, 6)), vad=seed != 5,
                            script="as-is", repetition_guard=False)
    results = transcriber.transcribe_batch([s.audio for s in sources], options)
    for source, result in zip(sources, results, strict=True):
        # the scripted characters only: a packed clip is closed with a sentence mark the transcriber adds
        text = "".join(c for s in result.segments for c in s.text if FIRST_CHAR <= ord(c) <= 0x9FFF)
        assert all(ord(a) < ord(b) for a, b in zip(text, text[1:], strict=False)), "text reordered or repeated"
        if not lossy:
            assert text == "".join(c for c, _, _ in source.chars), "text lost"
        elif options.vad:  # the safety net: speech whose window came back silent is decoded again, or reported
            for start, end in _lost_stretches(source.chars, text):
                assert any(u0 - 0.5 <= start and end <= u1 + 0.5 for u0, u1 in result.uncovered), (
                    f"{start:.2f}-{end:.2f} s lost without a report ({result.uncovered})")
        assert_valid_times(result)


def _lost_stretches(chars: list[tuple[str, float, float]], text: str) -> list[tuple[float, float]]:
    """Where runs of characters missing from ``text`` were said, those over 1.5 s (the safety net looks for
    speech of at least segments.UNCOVERED_SECONDS without a segment)."""
    runs: list[list[tuple[float, float]]] = []
    for k, (char, start, end) in enumerate(chars):
        if char in text:
            continue
        if runs and chars[k - 1][0] not in text:
            runs[-1].append((start, end))
        else:
            runs.append([(start, end)])
    return [(run[0][0], run[-1][1]) for run in runs if run[-1][1] - run[0][0] >= 1.5]

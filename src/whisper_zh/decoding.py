"""Decoding options and judgements on decoded text: what to ask the model for, and how to clean what it says.

:class:`DecodeOptions` is the one place where decoding defaults live: the CLI's flags, the server's form
fields and the Python API all start from ``DecodeOptions()`` and change fields with :meth:`DecodeOptions.with_`.
Rules that depend on several fields (the Mandarin prompt is for Mandarin only) are methods here, evaluated
when the language is known, never re-implemented by callers.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from whisper_zh.diarize.options import DiarizeOptions
from whisper_zh.normalize import Script

# A Simplified-Chinese sentence with Chinese punctuation, given as the previous-text prompt: it nudges
# Whisper towards Simplified characters and punctuation (OpenCC still converts whatever slips through).
DEFAULT_ZH_PROMPT = "以下是普通话的句子。"
_SENTENCE_END = ("。", "！", "？", ".", "!", "?")

Task = Literal["transcribe", "translate"]
SCRIPTS = ("simplified", "traditional", "as-is")


@dataclass(frozen=True)
class DecodeOptions:
    """Every decoding knob whisper-zh exposes, with defaults tuned for Mandarin.

    ``language=None`` detects the language of each input. ``initial_prompt`` defaults to a Mandarin sentence;
    :meth:`prompt_for` drops that default for any other language and for translation (a user's own prompt is
    always kept; for Mandarin transcription the Mandarin sentence follows it).
    """

    language: str | None = "zh"
    task: Task = "transcribe"
    beam_size: int = 5
    # Measured on the 500 shared clips: CER 16.5 % with this prompt, 18.3 % without (bench/RESULTS.md).
    initial_prompt: str | None = DEFAULT_ZH_PROMPT
    hotwords: str | None = None
    word_timestamps: bool = False
    script: Script = "simplified"
    # Write numbers a reader expects in digits (dates, amounts, percentages, phone numbers: 二〇二三年 -> 2023年),
    # as evaluate's numbers-normalised score reads them (normalize.arabic_numbers). Chinese text only; a
    # segment's words keep the form the model wrote.
    numbers: bool = False
    # Windows decoded together (and streams a long recording is cut into). On a CPU, on the 500 shared clips:
    # 4 took 160 s and 661 MB at the peak, 6 152 s and 799 MB, 8 143 s and 914 MB (the beam search's states grow
    # with beams x batch). 4 keeps transcribe within 1.5x faster-whisper's memory. On a GPU larger batches pay
    # (--batch-size 16).
    batch_size: int = 4
    vad: bool = True  # cut audio longer than 30 s at pauses found by voice activity detection (Silero VAD)
    temperature: tuple[float, ...] = field(default=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0))
    compression_ratio_threshold: float = 2.4
    log_prob_threshold: float = -1.0
    no_speech_threshold: float = 0.6
    # In a long recording, prompt each window with the text decoded before it (Whisper's own way with long audio;
    # it keeps names and terms consistent). The first window of each chain gets the initial prompt alone.
    condition_on_previous_text: bool = True
    max_new_tokens: int | None = None
    repetition_guard: bool = True
    # Decode short clips (<= 20 s) several to a 30 s window, split back by word timestamps (faster on many clips).
    pack: bool = True
    # None: the encoder hears every window padded to 30 s, as Whisper was trained. A number: a window shorter than
    # 30 s is padded only this many seconds past its audio, which makes the encoder (a third or more of a short
    # decode's cost) cheaper in proportion. Live decoding uses 10 (bench/RESULTS.md, "Live": the same CER for a third less CPU;
    # at 1 s the CER doubled). The CTranslate2 engine's batched path only; the Transformers encoder needs 30 s.
    encoder_padding_seconds: float | None = None
    # Label who spoke when (whisper_zh.diarize): a stage after decoding, which it leaves as it is; it asks for word
    # timestamps (a segment is split at the word where the speaker changes).
    diarize: DiarizeOptions | None = None

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError("beam_size must be at least 1")
        if self.encoder_padding_seconds is not None and self.encoder_padding_seconds < 0:
            raise ValueError("encoder_padding_seconds must be at least 0")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.script not in SCRIPTS:
            raise ValueError(f"unknown script '{self.script}': use simplified, traditional or as-is")
        if self.task not in ("transcribe", "translate"):
            raise ValueError(f"unknown task '{self.task}': use transcribe or translate")
        if isinstance(self.temperature, (int, float)):
            object.__setattr__(self, "temperature", (float(self.temperature),))
        object.__setattr__(self, "temperature", tuple(float(t) for t in self.temperature))
        if not self.temperature:
            raise ValueError("temperature needs at least one value")
        if self.initial_prompt is not None and not self.initial_prompt.strip():
            object.__setattr__(self, "initial_prompt", None)

    def with_(self, **changes: Any) -> DecodeOptions:
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)

    def prompt_for(self, language: str | None) -> str | None:
        """The prompt to decode ``language`` with: the default Mandarin prompt only where the speech is
        Mandarin (or not yet known) and the task is transcription; a user's own prompt always.

        For Mandarin transcription a user's prompt is followed by the Mandarin sentence: Whisper copies the style
        of the text just before it, and a bare term list ("经济") made it stop punctuating (0 of 12 shared clips
        ended with 。; 12 of 12 with the sentence after the terms)."""
        mandarin = self.task == "transcribe" and language in (None, "zh")
        if self.initial_prompt in (None, DEFAULT_ZH_PROMPT):
            return self.initial_prompt if mandarin else None
        if not mandarin or self.initial_prompt.startswith(DEFAULT_ZH_PROMPT):
            # a prompt already led by the sentence is kept: live sessions put the previous text after it, and
            # Whisper reads the text just before the audio as what came before (appending the sentence again
            # would put it between them)
            return self.initial_prompt
        user = self.initial_prompt.rstrip()
        return user + ("" if user.endswith(_SENTENCE_END) else "。") + DEFAULT_ZH_PROMPT

    def script_for(self, language: str | None) -> Script:
        """Simplified/Traditional conversion is for Chinese text; other languages come out as decoded."""
        return self.script if language in (None, "zh", "yue") and self.task == "transcribe" else "as-is"


def compression_ratio(text: str) -> float:
    """Bytes of ``text`` over bytes of its zlib compression: Whisper's measure of repetitive output."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


# A unit of 1-15 characters repeated back to back at least 4 times (and covering >= 12 characters):
# the shape of Whisper's hallucination loops ("的的的的...", "谢谢观看。谢谢观看。...").
_LOOP = re.compile(r"(.{1,15}?)\1{3,}", re.DOTALL)


def cut_repetition_loop(text: str, min_chars: int = 12) -> tuple[str, bool]:
    """Collapse runs of a repeated unit to one occurrence; returns (text, whether anything was cut).

    Hand-rolled because no maintained library detects decoder loops in generated text; faster-whisper only
    detects them indirectly (compression ratio) and re-decodes, which this complements.
    """
    cut = False

    def _collapse(match: re.Match[str]) -> str:
        nonlocal cut
        if len(match.group(0)) < min_chars:
            return match.group(0)
        cut = True
        return match.group(1)

    return _LOOP.sub(_collapse, text), cut


def loop_start(text: str, min_chars: int = 12) -> int | None:
    """Where the first loop :func:`cut_repetition_loop` would cut begins to repeat (the end of its first
    occurrence, which the cut keeps), or None."""
    for match in _LOOP.finditer(text):
        if len(match.group(0)) >= min_chars:
            return match.start() + len(match.group(1))
    return None

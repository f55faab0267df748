"""Result types shared by decoding, writers, evaluation and the server."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Word:
    """One word (for Chinese: usually one character) with its time span in seconds."""

    start: float
    end: float
    word: str
    probability: float
    speaker: str | None = None  # set by speaker diarization (whisper_zh.diarize): SPEAKER_1, SPEAKER_2, ...


@dataclass
class Segment:
    """A stretch of speech with its text; times are seconds from the start of the file."""

    id: int
    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float = 0.0
    tokens: list[int] = field(default_factory=list)
    words: list[Word] | None = None
    temperature: float = 0.0  # the sampling temperature the text was decoded at (above 0: a fallback)
    speaker: str | None = None  # set by speaker diarization (whisper_zh.diarize): SPEAKER_1, SPEAKER_2, ...


@dataclass
class Transcription:
    """Everything known about one transcribed input."""

    source: str
    segments: list[Segment]
    language: str
    duration: float
    # (start, end) seconds of speech that voice activity detection heard, that no segment covers even after it
    # was decoded again on its own (the transcriber's safety net): reported, never dropped silently
    uncovered: list[tuple[float, float]] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The full text: segments joined (no spaces between Chinese segments)."""
        return join_texts(segment.text for segment in self.segments)

    @property
    def speakers(self) -> list[str]:
        """The speakers diarization found, in order of first appearance (empty if it did not run)."""
        return list(dict.fromkeys(s.speaker for s in self.segments if s.speaker))

    def to_dict(self) -> dict[str, Any]:
        out = {
            "source": self.source,
            "language": self.language,
            "duration": round(self.duration, 3),
            "text": self.text,
            "segments": [asdict(segment) for segment in self.segments],
        }
        if self.uncovered:
            out["uncovered"] = [[round(a, 3), round(b, 3)] for a, b in self.uncovered]
        return out


def join_texts(texts) -> str:  # noqa: ANN001 - any iterable of str
    """Join segment texts: no separator between CJK text, one space where Latin text meets Latin text."""
    out = ""
    for text in texts:
        text = text.strip()
        if not text:
            continue
        if out and out[-1].isascii() and out[-1].isalnum() and text[0].isascii() and text[0].isalnum():
            out += " "
        out += text
    return out

"""The rows every data format yields: :class:`Utterance`, :class:`BadRow` (a row not used, and why),
:class:`DataSource` (the iterable of both), and the small readers the format modules share (UTF-8 lines with
their numbers, Kaldi-style two-column tables, column picking)."""

from __future__ import annotations

import codecs
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from whisper_zh.audio import SAMPLE_RATE, audio_duration, load_audio
from whisper_zh.normalize import normalize_whitespace

# What counts as an audio (or video with audio) file when a folder is searched: by `transcribe` and by the
# `folder` data format alike.
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".oga", ".opus", ".wma", ".webm", ".mp4", ".mkv", ".mov",
     ".avi", ".amr", ".aiff", ".aif"}
)
# BadRow.kind -> how reports name it; each kind is counted on its own.
BAD_ROW_KINDS: dict[str, str] = {
    "malformed_row": "malformed row",
    "not_utf8": "line is not valid UTF-8",
    "missing_audio": "audio file not found",
    "unreadable_audio": "audio cannot be decoded",
    "empty_text": "empty reference text",
    "no_transcript": "no transcript for the audio",
    "no_audio": "transcript without audio",
    "duplicate_id": "duplicate id",
    "unsupported": "unsupported entry",
    "not_transcribed": "not transcribed",
    "empty_after_normalisation": "reference empty after normalisation",
    "silent_audio": "audio is silent",
    "too_long": "audio longer than Whisper's 30 s window",
    "duplicate_audio": "the same audio as an earlier row",
}

# Column names tried, in order, when none is given.
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "audio": ("audio", "audio_filepath", "path", "file", "speech", "array"),
    "text": ("text", "sentence", "transcription", "transcript", "normalized_text", "raw_text"),
    "id": ("id", "utt_id", "utterance_id", "key", "segment_id"),
    "speaker": ("speaker", "speaker_id", "client_id", "spk"),
    "duration": ("duration", "length"),
}


@dataclass(frozen=True)
class Utterance:
    """One transcribed recording. ``audio`` is a path (str) or a 16 kHz mono float32 array."""

    id: str
    audio: str | np.ndarray
    text: str
    duration: float | None = None
    speaker: str | None = None

    def load_audio(self) -> np.ndarray:
        """The samples at 16 kHz (raises :class:`~whisper_zh.errors.AudioError` for unreadable audio)."""
        return load_audio(self.audio)

    def measured_duration(self) -> float:
        """``duration`` when known, else measured from the audio (the file header where possible)."""
        if self.duration is not None:
            return self.duration
        if isinstance(self.audio, np.ndarray):
            return len(self.audio) / SAMPLE_RATE
        return audio_duration(self.audio)


@dataclass(frozen=True)
class BadRow:
    """A row that was not yielded, and why: ``kind`` is one of :data:`BAD_ROW_KINDS` (what reports count),
    ``reason`` the one-line detail, ``where`` a file and line, or a row number."""

    id: str
    reason: str
    where: str = ""
    kind: str = "malformed_row"

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "kind": self.kind, "reason": self.reason, "where": self.where}


def count_kinds(rows: list[BadRow]) -> str:
    """"3 audio file not found, 1 empty reference text": each reason counted and named on its own."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.kind] = counts.get(row.kind, 0) + 1
    return ", ".join(f"{n} {BAD_ROW_KINDS.get(kind, kind or 'other')}" for kind, n in counts.items())


@dataclass(frozen=True)
class TextLine:
    """One line of a text file: ``text`` without its line ending, or None with ``problem`` when it is not UTF-8."""

    number: int
    text: str | None
    problem: str = ""


def read_lines(path: str | os.PathLike) -> Iterator[TextLine]:
    """The lines of a UTF-8 text file, numbered from 1, a byte-order mark at the start ignored.

    A line that is not valid UTF-8 comes back with ``text=None`` and the reason (which byte, where), so one bad
    line is one bad row, not the end of the file.
    """
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            raw = raw.rstrip(b"\r\n")
            try:
                yield TextLine(number, raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                problem = (f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line); "
                           "save the file as UTF-8")
                yield TextLine(number, None, problem)


class DataSource:
    """An iterable of :class:`Utterance` from one dataset, plus the rows that could not be used (``problems``).

    File-based formats are indexed when loaded (metadata only, no audio decoded); Hugging Face datasets are
    converted row by row as they are iterated.
    """

    def __init__(
        self,
        location: str,
        format: str,
        utterances: list[Utterance] | None = None,
        problems: list[BadRow] | None = None,
        *,
        rows: Callable[[], Iterator[Utterance]] | None = None,
        size: int | None = None,
    ) -> None:
        self.location = location
        self.format = format
        self.problems: list[BadRow] = problems if problems is not None else []
        self._utterances = utterances
        self._rows = rows
        self._size = size

    def __iter__(self) -> Iterator[Utterance]:
        if self._utterances is not None:
            return iter(self._utterances)
        assert self._rows is not None
        return self._rows()

    @property
    def streamed(self) -> bool:
        """True for rows converted as they are iterated (Hugging Face datasets): ``problems`` fills as they go."""
        return self._utterances is None

    def __len__(self) -> int:
        """Number of usable utterances (for streamed hub data: the split's row count, problems included)."""
        if self._utterances is not None:
            return len(self._utterances)
        return self._size or 0

    def __repr__(self) -> str:
        return f"DataSource({self.location!r}, format={self.format!r}, utterances={len(self)}, problems={len(self.problems)})"

    def describe(self) -> dict[str, Any]:
        """Location, format and counts, for reports."""
        return {
            "location": self.location,
            "format": self.format,
            "utterances": len(self),
            "problems": len(self.problems),
        }


Loaded = tuple[list[Utterance], list[BadRow]]


def pick_column(row: dict[str, Any], kind: str, columns: dict[str, str | None], required: bool = False) -> Any:
    """The value of the configured (or first default-named) column for ``kind``; KeyError when required and absent."""
    names = (columns[kind],) if columns.get(kind) else DEFAULT_COLUMNS[kind]
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    if required:
        raise KeyError(
            f"no '{names[0]}' field" if len(names) == 1 else f"no {kind} field ({', '.join(names)})"
        )
    return None


def make_utterance(
    uid: str,
    audio: str | np.ndarray,
    text: Any,
    where: str,
    check_audio: bool,
    problems: list[BadRow],
    duration: Any = None,
    speaker: Any = None,
) -> Utterance | None:
    """Build an utterance, or record why the row is unusable and return None."""
    text = "" if text is None else str(text).strip()
    if isinstance(audio, str) and check_audio and not Path(audio).is_file():
        problems.append(BadRow(uid, f"audio file not found: {audio}", where, "missing_audio"))
        return None
    if not text:
        problems.append(BadRow(uid, "empty reference text", where, "empty_text"))
        return None
    try:
        seconds = float(duration) if duration not in (None, "") else None
    except (TypeError, ValueError):
        seconds = None
    return Utterance(uid, audio, text, seconds, None if speaker in (None, "") else str(speaker))


def read_table(path: Path, problems: list[BadRow]) -> dict[str, str]:
    """A Kaldi-style two-column file: first token -> rest of the line (lines that are not UTF-8 are problems)."""
    table: dict[str, str] = {}
    for line in read_lines(path):
        if line.text is None:
            problems.append(BadRow(f"line {line.number}", line.problem, f"{path.name}:{line.number}", "not_utf8"))
            continue
        parts = line.text.strip().split(maxsplit=1)
        if parts:
            table[parts[0]] = parts[1] if len(parts) > 1 else ""
    return table


def unsegment(text: str) -> str:
    """Kaldi/AISHELL transcripts are word-segmented: drop spaces between CJK characters, keep them between words."""
    return normalize_whitespace(text)

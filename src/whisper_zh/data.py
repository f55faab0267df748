"""Speech data sources: one loader interface over the corpus layouts Mandarin ASR data comes in.

``load_source(spec, format=None, **options) -> DataSource``; a :class:`DataSource` iterates
:class:`Utterance` (id, audio, text, duration, speaker), where ``audio`` is a file path or a 16 kHz mono float32
array. Formats (detected from ``spec`` unless ``format`` forces one):

=============  ======================================================================================================
``jsonl``      a JSONL manifest: ``audio`` (path relative to the manifest), ``text``, optional ``id``, ``duration``,
               ``speaker`` (NeMo's ``audio_filepath`` also works). A directory holding ``manifest.jsonl`` works too.
``kaldi``      a Kaldi data directory: ``wav.scp`` + ``text`` (+ optional ``utt2spk``, ``utt2dur``).
``aishell``    AISHELL-1: ``transcript/aishell_transcript_v0.8.txt`` + ``wav/<split>/<speaker>/*.wav``
               (the release root or its ``data_aishell`` folder; ``split`` picks train/dev/test).
``commonvoice`` a Common Voice release directory (``<split>.tsv`` with ``path`` and ``sentence``, ``clips/*.mp3``)
               or one of its ``.tsv`` files; ``split`` defaults to ``test``.
``hf-disk``    a Hugging Face dataset saved with ``save_to_disk``; audio as a float32 list column, an ``Audio``
               column (read undecoded, then decoded here) or a path column.
``hub``        a Hugging Face hub id (``mozilla-foundation/common_voice_17_0`` with ``config="zh-CN"``), online only.
``folder``     a folder (searched recursively) of audio files, each with a same-named ``.txt`` transcript.
=============  ======================================================================================================

Column names are configurable (``audio_column``, ``text_column``, ``id_column``, ``speaker_column``,
``duration_column``) for the formats that have columns. Rows that cannot be used (no audio file, empty text,
malformed line, a line that is not UTF-8) are never silently dropped: they are listed in ``DataSource.problems``
(a :class:`BadRow` with a ``kind`` that names the reason) and not yielded. Text files may start with a UTF-8 BOM.
Kaldi and AISHELL transcripts are word-segmented; their spaces between CJK characters are removed so the text
reads as Whisper writes it. Audio is decoded without torchcodec (soundfile / PyAV, see :mod:`whisper_zh.audio`).
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from whisper_zh.audio import SAMPLE_RATE, audio_duration, load_audio
from whisper_zh.errors import AudioError, DataError
from whisper_zh.normalize import normalize_whitespace

Format = Literal["jsonl", "kaldi", "aishell", "commonvoice", "hf-disk", "hub", "folder"]
FORMATS: tuple[str, ...] = ("jsonl", "kaldi", "aishell", "commonvoice", "hf-disk", "hub", "folder")
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
}

# Column names tried, in order, when none is given.
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "audio": ("audio", "audio_filepath", "path", "file", "speech", "array"),
    "text": ("text", "sentence", "transcription", "transcript", "normalized_text", "raw_text"),
    "id": ("id", "utt_id", "utterance_id", "key", "segment_id"),
    "speaker": ("speaker", "speaker_id", "client_id", "spk"),
    "duration": ("duration", "length"),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Formats that only a directory can hold, and what it holds.
_DIRECTORY_FORMATS = {
    "kaldi": "wav.scp and text",
    "aishell": "transcript/ and wav/",
    "folder": "audio files with .txt transcripts",
    "hf-disk": "a dataset saved with save_to_disk",
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


def load_source(
    spec: str | os.PathLike,
    format: str | None = None,
    *,
    split: str | None = None,
    config: str | None = None,
    limit: int | None = None,
    check_audio: bool = True,
    audio_column: str | None = None,
    text_column: str | None = None,
    id_column: str | None = None,
    speaker_column: str | None = None,
    duration_column: str | None = None,
) -> DataSource:
    """Open the dataset at ``spec`` (a path or a hub id); see the module docstring for formats and options.

    ``split`` picks a split (AISHELL wav/<split>, Common Voice <split>.tsv, a DatasetDict split, a hub split);
    ``config`` is a hub configuration (e.g. ``zh-CN``); ``limit`` keeps the first N usable utterances;
    ``check_audio`` reports rows whose audio file does not exist. Raises :class:`DataError` when ``spec`` is not a
    dataset of the (given or detected) format.
    """
    fmt = format or detect_format(spec)
    if fmt not in FORMATS:
        raise DataError(f"unknown data format '{fmt}': use one of {', '.join(FORMATS)}")
    columns = {
        "audio": audio_column,
        "text": text_column,
        "id": id_column,
        "speaker": speaker_column,
        "duration": duration_column,
    }
    if fmt == "hub":
        return _load_hub(str(spec), config, split, columns, limit)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"{spec}: no such file or directory")
    if fmt == "hf-disk":
        return _load_hf_disk(path, split, columns, limit)
    loader = {
        "jsonl": _load_jsonl,
        "kaldi": _load_kaldi,
        "aishell": _load_aishell,
        "commonvoice": _load_commonvoice,
        "folder": _load_folder,
    }[fmt]
    if fmt in _DIRECTORY_FORMATS and not path.is_dir():
        raise DataError(f"{spec}: the {fmt} format is a directory ({_DIRECTORY_FORMATS[fmt]}), not a file")
    try:
        utterances, problems = loader(path, split=split, columns=columns, check_audio=check_audio)
    except OSError as exc:  # a file the format needs is missing or unreadable
        raise DataError(f"{exc.filename or spec}: cannot read it as {fmt} data ({exc.strerror or exc})") from exc
    utterances = _drop_duplicate_ids(utterances, problems)
    if limit is not None:
        utterances = utterances[:limit]
    return DataSource(str(path), fmt, utterances, problems)


def _drop_duplicate_ids(utterances: list[Utterance], problems: list[BadRow]) -> list[Utterance]:
    """Keep the first utterance of each id; later ones are problems (ids key predictions and comparisons)."""
    seen: set[str] = set()
    kept = []
    for utt in utterances:
        if utt.id in seen:
            problems.append(BadRow(utt.id, "duplicate id (an earlier row has it)", str(utt.audio), "duplicate_id"))
        else:
            seen.add(utt.id)
            kept.append(utt)
    return kept


def detect_format(spec: str | os.PathLike) -> Format:
    """Guess the format of ``spec`` from the files it holds (see the module docstring)."""
    path = Path(spec).expanduser()
    if not path.exists():
        if isinstance(spec, str) and _HUB_ID.match(spec):
            return "hub"
        raise DataError(f"{spec}: no such file or directory (and not a hub dataset id like owner/name)")
    if path.is_file():
        if path.suffix in (".jsonl", ".json", ".ndjson"):
            return "jsonl"
        if path.suffix == ".tsv":
            return "commonvoice"
        raise DataError(f"{spec}: cannot tell the data format of a '{path.suffix}' file; pass --format")
    if any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
        return "hf-disk"
    if (path / "wav.scp").is_file() and (path / "text").is_file():
        return "kaldi"
    if _aishell_root(path) is not None:
        return "aishell"
    if (path / "clips").is_dir() and any(path.glob("*.tsv")):
        return "commonvoice"
    if (path / "manifest.jsonl").is_file():
        return "jsonl"
    if any(p.suffix.lower() in AUDIO_EXTENSIONS for p in path.rglob("*") if p.is_file()):
        return "folder"
    raise DataError(
        f"{spec}: not a recognised dataset (no manifest, wav.scp+text, AISHELL transcript, Common Voice tsv, "
        "saved Hugging Face dataset or audio files)"
    )


# ---------------------------------------------------------------------------------------------------------------
# File-based formats: each returns (utterances, problems).

Loaded = tuple[list[Utterance], list[BadRow]]


def _pick(row: dict[str, Any], kind: str, columns: dict[str, str | None], required: bool = False) -> Any:
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


def _make(
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


def _load_jsonl(path: Path, *, columns: dict[str, str | None], check_audio: bool, **_: Any) -> Loaded:
    if path.is_dir():
        path = path / "manifest.jsonl"
    utterances: list[Utterance] = []
    problems: list[BadRow] = []
    for line in read_lines(path):
        where = f"{path.name}:{line.number}"
        if line.text is None:
            problems.append(BadRow(f"line {line.number}", line.problem, where, "not_utf8"))
            continue
        if not line.text.strip():
            continue
        try:
            row = json.loads(line.text)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
            audio = str(_pick(row, "audio", columns, required=True))
        except (ValueError, KeyError) as exc:
            problems.append(BadRow(f"line {line.number}", f"malformed manifest row: {exc}", where))
            continue
        uid = str(_pick(row, "id", columns) or Path(audio).stem)
        resolved = audio if os.path.isabs(audio) else str(path.parent / audio)
        utt = _make(
            uid,
            resolved,
            _pick(row, "text", columns),
            where,
            check_audio,
            problems,
            _pick(row, "duration", columns),
            _pick(row, "speaker", columns),
        )
        if utt is not None:
            utterances.append(utt)
    return utterances, problems


def _read_table(path: Path, problems: list[BadRow]) -> dict[str, str]:
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


def _unsegment(text: str) -> str:
    """Kaldi/AISHELL transcripts are word-segmented: drop spaces between CJK characters, keep them between words."""
    return normalize_whitespace(text)


def _load_kaldi(path: Path, *, check_audio: bool, **_: Any) -> Loaded:
    if (path / "segments").is_file():
        raise DataError(
            f"{path}: Kaldi 'segments' files (several utterances per recording) are not supported"
        )
    utterances: list[Utterance] = []
    problems: list[BadRow] = []
    wavs = _read_table(path / "wav.scp", problems)
    texts = _read_table(path / "text", problems)
    speakers = _read_table(path / "utt2spk", problems) if (path / "utt2spk").is_file() else {}
    durations = _read_table(path / "utt2dur", problems) if (path / "utt2dur").is_file() else {}
    for uid, location in wavs.items():
        where = f"wav.scp:{uid}"
        if location.endswith("|"):
            problems.append(BadRow(uid, "piped wav.scp command (not a file) is not supported", where, "unsupported"))
            continue
        audio = location if os.path.isabs(location) else _relative(location, path)
        if uid not in texts:
            problems.append(BadRow(uid, "no transcript in 'text'", where, "no_transcript"))
            continue
        utt = _make(
            uid,
            audio,
            _unsegment(texts[uid]),
            where,
            check_audio,
            problems,
            durations.get(uid),
            speakers.get(uid),
        )
        if utt is not None:
            utterances.append(utt)
    for uid in texts.keys() - wavs.keys():
        problems.append(BadRow(uid, "transcript without audio in wav.scp", f"text:{uid}", "no_audio"))
    return utterances, problems


def _relative(location: str, data_dir: Path) -> str:
    """Kaldi paths are relative to the recipe directory (usually two levels above data/x); try the likely bases."""
    for base in (data_dir, data_dir.parent, data_dir.parent.parent, Path.cwd()):
        candidate = base / location
        if candidate.exists():
            return str(candidate)
    return str(data_dir / location)


def _aishell_root(path: Path) -> Path | None:
    for root in (path, path / "data_aishell"):
        if (root / "wav").is_dir() and list((root / "transcript").glob("aishell_transcript*.txt")):
            return root
    return None


def _load_aishell(path: Path, *, split: str | None, check_audio: bool, **_: Any) -> Loaded:
    root = _aishell_root(path)
    if root is None:
        raise DataError(f"{path}: no AISHELL layout (transcript/aishell_transcript_v0.8.txt and wav/)")
    transcript = sorted((root / "transcript").glob("aishell_transcript*.txt"))[-1]
    utterances: list[Utterance] = []
    problems: list[BadRow] = []
    texts = _read_table(transcript, problems)
    wav_dir = root / "wav" / split if split else root / "wav"
    if not wav_dir.is_dir():
        raise DataError(f"{wav_dir}: no such split directory")
    for wav in sorted(p for p in wav_dir.rglob("*") if p.suffix.lower() in (".wav", ".flac")):
        uid = wav.stem
        if uid not in texts:
            problems.append(
                BadRow(uid, f"no transcript in {transcript.name}", str(wav.relative_to(root)), "no_transcript")
            )
            continue
        utt = _make(
            uid,
            str(wav),
            _unsegment(texts[uid]),
            transcript.name,
            check_audio,
            problems,
            speaker=wav.parent.name,
        )
        if utt is not None:
            utterances.append(utt)
    return utterances, problems


def _load_commonvoice(
    path: Path, *, split: str | None, columns: dict[str, str | None], check_audio: bool, **_: Any
) -> Loaded:
    if path.is_file():
        tsv, root = path, path.parent
    else:
        root = path
        tsv = root / f"{split or 'test'}.tsv"
        if not tsv.is_file():
            found = ", ".join(sorted(p.stem for p in root.glob("*.tsv") if _is_cv_split(p))) or "none"
            raise DataError(f"{tsv}: no such split file (splits here: {found}); pass --split")
    clips = root / "clips"
    durations: dict[str, str] = {}
    if (root / "clip_durations.tsv").is_file():  # newer releases: clip, duration[ms]
        for _, row in _tsv_rows(root / "clip_durations.tsv", []):  # a bad line only loses a duration
            values = list(row.values())
            if len(values) >= 2 and values[1]:
                durations[values[0]] = str(float(values[1]) / 1000)
    columns = {
        "audio": "path",
        "text": "sentence",
        "speaker": "client_id",
        **{k: v for k, v in columns.items() if v},
    }
    utterances: list[Utterance] = []
    problems: list[BadRow] = []
    for number, row in _tsv_rows(tsv, problems):
        where = f"{tsv.name}:{number}"
        try:
            name = str(_pick(row, "audio", columns, required=True))
        except KeyError as exc:
            problems.append(BadRow(f"line {number}", f"malformed row: {exc}", where))
            continue
        uid = str(row.get(columns["id"]) or Path(name).stem) if columns.get("id") else Path(name).stem
        utt = _make(
            uid,
            str(clips / name),
            _pick(row, "text", columns),
            where,
            check_audio,
            problems,
            durations.get(name),
            _pick(row, "speaker", columns),
        )
        if utt is not None:
            utterances.append(utt)
    return utterances, problems


def _tsv_rows(path: Path, problems: list[BadRow]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {column: value}) for each data line of a tab-separated file with a header line."""
    header: list[str] | None = None
    for line in read_lines(path):
        if line.text is None:
            problems.append(BadRow(f"line {line.number}", line.problem, f"{path.name}:{line.number}", "not_utf8"))
            continue
        if not line.text:
            continue
        values = next(csv.reader([line.text], delimiter="\t", quoting=csv.QUOTE_NONE))
        if header is None:
            header = values
            continue
        yield line.number, dict(zip(header, values, strict=False))


def _is_cv_split(tsv: Path) -> bool:
    """A Common Voice split file has 'path' and 'sentence' columns (clip_durations.tsv, reported.tsv do not)."""
    first = next(read_lines(tsv), None)
    header = first.text.split("\t") if first is not None and first.text else []
    return "path" in header and "sentence" in header


def _load_folder(path: Path, *, check_audio: bool, **_: Any) -> Loaded:
    utterances: list[Utterance] = []
    problems: list[BadRow] = []
    for audio in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS):
        uid = audio.relative_to(path).with_suffix("").as_posix()
        transcript = audio.with_suffix(".txt")
        if not transcript.is_file():
            where = str(audio.relative_to(path))
            problems.append(BadRow(uid, f"no transcript {transcript.name}", where, "no_transcript"))
            continue
        lines = list(read_lines(transcript))
        if bad := next((line for line in lines if line.text is None), None):
            problems.append(BadRow(uid, bad.problem, f"{transcript.name}:{bad.number}", "not_utf8"))
            continue
        text = "\n".join(line.text or "" for line in lines)
        utt = _make(uid, str(audio), text, transcript.name, check_audio, problems)
        if utt is not None:
            utterances.append(utt)
    return utterances, problems


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face datasets (imported lazily: `datasets` is an optional dependency).


def _load_hf_disk(
    path: Path, split: str | None, columns: dict[str, str | None], limit: int | None
) -> DataSource:
    datasets = _import_datasets()
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises assorted types for a bad directory
        raise DataError(f"{path}: cannot load the saved dataset ({exc})") from exc
    dataset = _pick_split(loaded, split, str(path))
    return _hf_source(dataset, str(path), "hf-disk", columns, limit)


def _load_hub(
    name: str, config: str | None, split: str | None, columns: dict[str, str | None], limit: int | None
) -> DataSource:
    datasets = _import_datasets()
    try:
        # Streaming: read rows as needed instead of downloading the whole split first.
        dataset = datasets.load_dataset(name, config, split=split or "test", streaming=True)
    except Exception as exc:  # offline, gated, unknown id: all surface as different exception types
        raise DataError(f"{name}: cannot open the hub dataset ({type(exc).__name__}: {exc})") from exc
    return _hf_source(dataset, name, "hub", columns, limit)


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is installed with the [train] extra
        raise DataError("Hugging Face datasets are not installed: pip install 'whisper-zh[train]'") from exc
    return datasets


def _pick_split(loaded: Any, split: str | None, where: str) -> Any:
    if not hasattr(loaded, "keys"):  # a single Dataset
        return loaded
    names = list(loaded.keys())
    choice = split or ("test" if "test" in names else names[0] if len(names) == 1 else None)
    if choice not in names:
        raise DataError(f"{where}: choose a split with --split (available: {', '.join(names)})")
    return loaded[choice]


def _hf_source(
    dataset: Any, where: str, fmt: str, columns: dict[str, str | None], limit: int | None
) -> DataSource:
    datasets = _import_datasets()
    features = dataset.features or {}
    names = list(features) if features else list(getattr(dataset, "column_names", None) or [])
    wanted = {kind: _column_name(names, kind, columns, where) for kind in DEFAULT_COLUMNS}
    audio_col, text_col = wanted["audio"], wanted["text"]
    if audio_col is None or text_col is None:
        missing = "audio" if audio_col is None else "text"
        raise DataError(f"{where}: no {missing} column among {names}; pass --{missing}-column")
    if isinstance(features.get(audio_col), datasets.Audio):
        # Read Audio columns undecoded (bytes/path): datasets decodes only through torchcodec, unusable here.
        dataset = dataset.cast_column(audio_col, datasets.Audio(decode=False))
    rate_col = "sampling_rate" if "sampling_rate" in names else None
    problems: list[BadRow] = []

    def rows() -> Iterator[Utterance]:
        yielded = 0
        for index, row in enumerate(dataset):
            if limit is not None and yielded >= limit:
                return
            uid = str(row[wanted["id"]]) if wanted["id"] else f"{index:06d}"
            try:
                audio = _hf_audio(row[audio_col], row.get(rate_col) if rate_col else None)
            except AudioError as exc:
                problems.append(BadRow(uid, str(exc), f"row {index}", "unreadable_audio"))
                continue
            utt = _make(
                uid,
                audio,
                row[text_col],
                f"row {index}",
                True,
                problems,
                row[wanted["duration"]] if wanted["duration"] else None,
                row[wanted["speaker"]] if wanted["speaker"] else None,
            )
            if utt is not None:
                yielded += 1
                yield utt

    size = getattr(dataset, "num_rows", None)
    if size is None:
        info_splits = getattr(getattr(dataset, "info", None), "splits", None) or {}
        split_info = info_splits.get(getattr(dataset, "split", None) or "", None)
        size = getattr(split_info, "num_examples", None)
    if size is not None and limit is not None:
        size = min(size, limit)
    return DataSource(where, fmt, None, problems, rows=rows, size=size)


def _column_name(names: list[str], kind: str, columns: dict[str, str | None], where: str) -> str | None:
    if columns.get(kind):
        if columns[kind] not in names:
            raise DataError(f"{where}: no column '{columns[kind]}' (columns: {', '.join(names)})")
        return columns[kind]
    return next((name for name in DEFAULT_COLUMNS[kind] if name in names), None)


def _hf_audio(value: Any, rate: Any) -> str | np.ndarray:
    """A dataset audio cell -> path or 16 kHz float32 array (raises AudioError when it is neither)."""
    sample_rate = int(rate) if rate else SAMPLE_RATE
    if isinstance(value, dict):
        if value.get("array") is not None:
            sample_rate = int(value.get("sampling_rate") or sample_rate)
            value = value["array"]
        elif value.get("bytes"):
            return load_audio(value["bytes"], allow_silence=True)
        elif value.get("path"):
            return str(value["path"])
        else:
            raise AudioError("audio cell has neither array, bytes nor path")
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    array = np.asarray(value, dtype=np.float32)
    if array.ndim != 1 or array.size == 0:
        raise AudioError(f"audio array has shape {array.shape}: expected non-empty mono samples")
    if sample_rate != SAMPLE_RATE:
        import soxr

        array = soxr.resample(array, sample_rate, SAMPLE_RATE).astype(np.float32)
    return array

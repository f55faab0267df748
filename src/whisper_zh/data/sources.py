"""Which format a path holds, and opening it: :func:`load_source` and :func:`detect_format` dispatch to the
format modules of this package."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from whisper_zh.data.aishell import aishell_root, load_aishell
from whisper_zh.data.base import AUDIO_EXTENSIONS, BadRow, DataSource, Utterance
from whisper_zh.data.commonvoice import load_commonvoice
from whisper_zh.data.folder import load_folder
from whisper_zh.data.hf import load_hf_disk, load_hub
from whisper_zh.data.kaldi import load_kaldi
from whisper_zh.data.manifest import load_csv, load_jsonl
from whisper_zh.errors import DataError

Format = Literal["jsonl", "csv", "kaldi", "aishell", "commonvoice", "hf-disk", "hub", "folder"]
FORMATS: tuple[str, ...] = ("jsonl", "csv", "kaldi", "aishell", "commonvoice", "hf-disk", "hub", "folder")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Formats that only a directory can hold, and what it holds.
_DIRECTORY_FORMATS = {
    "kaldi": "wav.scp and text",
    "aishell": "transcript/ and wav/",
    "folder": "audio files with .txt transcripts",
    "hf-disk": "a dataset saved with save_to_disk",
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
        return load_hub(str(spec), config, split, columns, limit)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"{spec}: no such file or directory")
    if fmt == "hf-disk":
        return load_hf_disk(path, split, columns, limit)
    loader = {
        "jsonl": load_jsonl,
        "csv": load_csv,
        "kaldi": load_kaldi,
        "aishell": load_aishell,
        "commonvoice": load_commonvoice,
        "folder": load_folder,
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
        if path.suffix.lower() == ".csv":
            return "csv"
        if path.suffix == ".tsv":
            return "commonvoice"
        raise DataError(f"{spec}: cannot tell the data format of a '{path.suffix}' file; pass --format")
    if any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
        return "hf-disk"
    if (path / "wav.scp").is_file() and (path / "text").is_file():
        return "kaldi"
    if aishell_root(path) is not None:
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

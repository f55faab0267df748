"""Hugging Face datasets, saved to disk or streamed from the hub (``datasets`` is imported lazily: it is an
optional dependency). Audio columns are read undecoded and decoded here, without torchcodec."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from whisper_zh.audio import SAMPLE_RATE, load_audio
from whisper_zh.data.base import DEFAULT_COLUMNS, BadRow, DataSource, Utterance, make_utterance
from whisper_zh.errors import AudioError, DataError


def load_hf_disk(
    path: Path, split: str | None, columns: dict[str, str | None], limit: int | None
) -> DataSource:
    datasets = _import_datasets()
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises assorted types for a bad directory
        raise DataError(f"{path}: cannot load the saved dataset ({exc})") from exc
    dataset = _pick_split(loaded, split, str(path))
    return _hf_source(dataset, str(path), "hf-disk", columns, limit)


def load_hub(
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
            utt = make_utterance(
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

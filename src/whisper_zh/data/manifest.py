"""Manifests: JSONL (one JSON object a line) or CSV (a header line, then one row a line), each row with
``audio`` (a path relative to the manifest's folder, or absolute), ``text`` and optional ``id``, ``duration``,
``speaker`` (NeMo's ``audio_filepath`` works too). A row's problems name the manifest and its line."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from whisper_zh.data.base import BadRow, Loaded, Utterance, make_utterance, pick_column, read_lines


def load_jsonl(path: Path, *, columns: dict[str, str | None], check_audio: bool, **_: Any) -> Loaded:
    if path.is_dir():
        path = path / "manifest.jsonl"
    problems: list[BadRow] = []
    return _utterances(path, _json_rows(path, problems), columns, check_audio, problems), problems


def load_csv(path: Path, *, columns: dict[str, str | None], check_audio: bool, **_: Any) -> Loaded:
    problems: list[BadRow] = []
    return _utterances(path, _csv_rows(path, problems), columns, check_audio, problems), problems


def _json_rows(path: Path, problems: list[BadRow]) -> Iterator[tuple[int, Any]]:
    """(line number, parsed row) per non-blank line; lines that are not UTF-8 or not JSON become problems."""
    for line in read_lines(path):
        if line.text is None:
            problems.append(BadRow(f"line {line.number}", line.problem, f"{path.name}:{line.number}", "not_utf8"))
        elif line.text.strip():
            try:
                yield line.number, json.loads(line.text)
            except ValueError as exc:
                problems.append(BadRow(f"line {line.number}", f"malformed manifest row: {exc}",
                                       f"{path.name}:{line.number}"))


def _csv_rows(path: Path, problems: list[BadRow]) -> Iterator[tuple[int, Any]]:
    """(line number, {column: value}) per data row of a CSV file with a header line (the csv module reads quoted
    fields, commas inside them included); lines that are not UTF-8 become problems."""
    number = 0

    def text_lines() -> Iterator[str]:
        nonlocal number
        for line in read_lines(path):
            number = line.number
            if line.text is None:
                problems.append(BadRow(f"line {line.number}", line.problem, f"{path.name}:{line.number}", "not_utf8"))
            else:
                yield line.text
    reader = csv.reader(text_lines())
    header = next(reader, None)
    for values in reader:
        if any(v.strip() for v in values):
            yield number, dict(zip(header or [], values, strict=False))


def _utterances(path: Path, rows: Iterator[tuple[int, Any]], columns: dict[str, str | None], check_audio: bool,
                problems: list[BadRow]) -> list[Utterance]:
    utterances: list[Utterance] = []
    for number, row in rows:
        where = f"{path.name}:{number}"
        try:
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
            audio = str(pick_column(row, "audio", columns, required=True))
        except (ValueError, KeyError) as exc:
            problems.append(BadRow(f"line {number}", f"malformed manifest row: {exc}", where))
            continue
        uid = str(pick_column(row, "id", columns) or Path(audio).stem)
        resolved = audio if os.path.isabs(audio) else str(path.parent / audio)
        utt = make_utterance(
            uid,
            resolved,
            pick_column(row, "text", columns),
            where,
            check_audio,
            problems,
            pick_column(row, "duration", columns),
            pick_column(row, "speaker", columns),
        )
        if utt is not None:
            utterances.append(utt)
    return utterances

"""Common Voice releases: ``<split>.tsv`` (``path``, ``sentence``, ``client_id``) beside ``clips/``, with
``clip_durations.tsv`` where the release has it."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from whisper_zh.data.base import BadRow, Loaded, Utterance, make_utterance, pick_column, read_lines
from whisper_zh.errors import DataError


def load_commonvoice(
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
            name = str(pick_column(row, "audio", columns, required=True))
        except KeyError as exc:
            problems.append(BadRow(f"line {number}", f"malformed row: {exc}", where))
            continue
        uid = str(row.get(columns["id"]) or Path(name).stem) if columns.get("id") else Path(name).stem
        utt = make_utterance(
            uid,
            str(clips / name),
            pick_column(row, "text", columns),
            where,
            check_audio,
            problems,
            durations.get(name),
            pick_column(row, "speaker", columns),
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

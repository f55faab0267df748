"""JSONL manifests: one JSON object a line with ``audio`` (relative to the manifest's folder), ``text`` and
optional ``id``, ``duration``, ``speaker`` (NeMo's ``audio_filepath`` works too)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from whisper_zh.data.base import BadRow, Loaded, Utterance, make_utterance, pick_column, read_lines


def load_jsonl(path: Path, *, columns: dict[str, str | None], check_audio: bool, **_: Any) -> Loaded:
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
            audio = str(pick_column(row, "audio", columns, required=True))
        except (ValueError, KeyError) as exc:
            problems.append(BadRow(f"line {line.number}", f"malformed manifest row: {exc}", where))
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
    return utterances, problems

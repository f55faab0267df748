"""Kaldi data directories: ``wav.scp`` + ``text`` (+ optional ``utt2spk``, ``utt2dur``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from whisper_zh.data.base import BadRow, Loaded, Utterance, make_utterance, read_table, unsegment
from whisper_zh.errors import DataError


def load_kaldi(path: Path, *, check_audio: bool, **_: Any) -> Loaded:
    if (path / "segments").is_file():
        raise DataError(
            f"{path}: Kaldi 'segments' files (several utterances per recording) are not supported"
        )
    utterances: list[Utterance] = []
    problems: list[BadRow] = []
    wavs = read_table(path / "wav.scp", problems)
    texts = read_table(path / "text", problems)
    speakers = read_table(path / "utt2spk", problems) if (path / "utt2spk").is_file() else {}
    durations = read_table(path / "utt2dur", problems) if (path / "utt2dur").is_file() else {}
    for uid, location in wavs.items():
        where = f"wav.scp:{uid}"
        if location.endswith("|"):
            problems.append(BadRow(uid, "piped wav.scp command (not a file) is not supported", where, "unsupported"))
            continue
        audio = location if os.path.isabs(location) else _relative(location, path)
        if uid not in texts:
            problems.append(BadRow(uid, "no transcript in 'text'", where, "no_transcript"))
            continue
        utt = make_utterance(
            uid,
            audio,
            unsegment(texts[uid]),
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

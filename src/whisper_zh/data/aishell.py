"""AISHELL-1 releases: ``transcript/aishell_transcript_v0.8.txt`` + ``wav/<split>/<speaker>/*.wav``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from whisper_zh.data.base import BadRow, Loaded, Utterance, make_utterance, read_table, unsegment
from whisper_zh.errors import DataError


def aishell_root(path: Path) -> Path | None:
    for root in (path, path / "data_aishell"):
        if (root / "wav").is_dir() and list((root / "transcript").glob("aishell_transcript*.txt")):
            return root
    return None


def load_aishell(path: Path, *, split: str | None, check_audio: bool, **_: Any) -> Loaded:
    root = aishell_root(path)
    if root is None:
        raise DataError(f"{path}: no AISHELL layout (transcript/aishell_transcript_v0.8.txt and wav/)")
    transcript = sorted((root / "transcript").glob("aishell_transcript*.txt"))[-1]
    utterances: list[Utterance] = []
    problems: list[BadRow] = []
    texts = read_table(transcript, problems)
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
        utt = make_utterance(
            uid,
            str(wav),
            unsegment(texts[uid]),
            transcript.name,
            check_audio,
            problems,
            speaker=wav.parent.name,
        )
        if utt is not None:
            utterances.append(utt)
    return utterances, problems

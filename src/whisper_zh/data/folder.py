"""A folder of audio files (searched recursively), each with a same-named ``.txt`` transcript."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from whisper_zh.data.base import AUDIO_EXTENSIONS, BadRow, Loaded, Utterance, make_utterance, read_lines


def load_folder(path: Path, *, check_audio: bool, **_: Any) -> Loaded:
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
        utt = make_utterance(uid, str(audio), text, transcript.name, check_audio, problems)
        if utt is not None:
            utterances.append(utt)
    return utterances, problems

"""Expanding command-line inputs (files, directories, JSONL manifests) into a list of audio paths."""

from __future__ import annotations

import json
from pathlib import Path

from whisper_zh.errors import DataError

AUDIO_EXTENSIONS = frozenset(
    [
        ".wav",
        ".flac",
        ".mp3",
        ".m4a",
        ".aac",
        ".ogg",
        ".oga",
        ".opus",
        ".wma",
        ".webm",
        ".mp4",
        ".mkv",
        ".mov",
        ".avi",
        ".amr",
        ".aiff",
        ".aif",
    ]
)


def expand_inputs(items: list[str]) -> list[str]:
    """Files stay as given; a directory gives its audio/video files (recursively, sorted); a .jsonl manifest
    gives its ``audio`` paths (relative to the manifest). Missing files are kept so they fail with a reason."""
    out: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            out.extend(
                str(p)
                for p in sorted(path.rglob("*"))
                if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
            )
        elif path.suffix.lower() == ".jsonl" and path.is_file():
            out.extend(_manifest_paths(path))
        else:
            out.append(item)
    return out


def _manifest_paths(manifest: Path) -> list[str]:
    paths = []
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            audio = row["audio"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{manifest}:{number}: not a JSON object with an 'audio' field") from exc
        audio_path = Path(audio)
        paths.append(str(audio_path if audio_path.is_absolute() else manifest.parent / audio_path))
    return paths

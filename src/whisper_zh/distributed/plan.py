"""What a distributed job decodes: its inputs, and how they are cut into the groups one actor call decodes.

Each group is cut by the rule :meth:`~whisper_zh.transcriber.Transcriber.transcribe_iter` uses on one machine
(consecutive inputs until ``group_seconds`` of audio are held), so each actor packs and batches exactly the clips
the single-process path packs together, and the transcripts come out identical.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import soundfile as sf


@dataclass(frozen=True)
class Item:
    """One input of a job. ``key`` (the path as given) identifies its result across runs; ``name`` is the stem of
    its per-file outputs; ``duration`` (seconds, 0.0 when unknown) sizes the groups and the progress bar."""

    key: str
    name: str
    duration: float = 0.0


def plan_groups(items: Iterable[Item], group_seconds: float) -> list[list[Item]]:
    """Consecutive items until ``group_seconds`` of audio are held: the transcriber's own grouping rule."""
    groups: list[list[Item]] = []
    group: list[Item] = []
    held = 0.0
    for item in items:
        group.append(item)
        held += item.duration
        if held >= group_seconds:
            groups.append(group)
            group, held = [], 0.0
    if group:
        groups.append(group)
    return groups


def encode_group(group: list[Item]) -> str:
    """A group as one JSON string (one row of the Ray dataset; strings travel through Arrow unchanged)."""
    return json.dumps([asdict(item) for item in group], ensure_ascii=False)


def decode_group(text: str) -> list[Item]:
    return [Item(**fields) for fields in json.loads(text)]


def unique(items: Iterable[Item]) -> list[Item]:
    """The first item of each key (an input given twice is transcribed once)."""
    seen: set[str] = set()
    out = []
    for item in items:
        if item.key not in seen:
            seen.add(item.key)
            out.append(item)
    return out


def probe_duration(path: str) -> float:
    """Seconds of audio from the file's header, without decoding it (0.0 when the header does not say).

    Cheaper than :func:`whisper_zh.audio.audio_duration`, which decodes compressed formats whole: a corpus of
    MP3s would be decoded twice. A wrong guess here only moves a group boundary or the progress bar's total."""
    try:
        info = sf.info(path)
        return info.frames / info.samplerate
    except (sf.LibsndfileError, RuntimeError, OSError):
        pass
    if not Path(path).is_file():
        return 0.0
    try:
        import av  # PyAV, shipped with faster-whisper: the container header's duration

        with av.open(path, metadata_errors="ignore") as container:
            return (container.duration or 0) / av.time_base
    except Exception:  # noqa: BLE001 - any unreadable file: its decode fails later, with its reason
        return 0.0

"""Conversations for the diarization benchmark and tests, built from the shared speech sets.

Each speaker is a pool of utterances (leading and trailing silence trimmed); a conversation is turns of one or
two utterances by a speaker other than the last one, with 0.2-1 s pauses between turns (0.15-0.3 s between the
sentences of a turn), seeded so the same call gives the same audio. The reference says who spoke from when to
when (a turn's sentences and the pause inside it are one stretch of speech).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SETS = {"S0150": "aishell1-sample-S0150", "S0252": "aishell1-sample-S0252-176",
        "narrator": "taiwan-narrator-131", "aishell3": "aishell3-30-speakers", "dsp": "dspspeech20-keywords"}


@dataclass
class Conversation:
    name: str
    audio: np.ndarray
    turns: list[tuple[float, float, str]]  # (start, end, speaker) of the reference

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    @property
    def speakers(self) -> list[str]:
        return sorted({t[2] for t in self.turns})


def rows(set_name: str) -> list[dict]:
    folder = DATA / SETS[set_name]
    out = []
    for line in (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out.append({**row, "path": folder / row["audio"]})
    return out


def load_clip(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32")
    assert rate == SAMPLE_RATE, path
    audio = audio - float(np.mean(audio))  # the AISHELL-1 sample carries a small DC offset
    trimmed, _ = librosa.effects.trim(audio, top_db=35)
    return trimmed


def voice(set_name: str, *, speaker: str | None = None, limit: int = 60, skip: int = 0) -> list[np.ndarray]:
    """Utterances of one speaker: a set's rows in order (news only for S0150), or one speaker of a multi-speaker
    set. An AISHELL-3 voice has one utterance, cut in two at its pause nearest the middle (two turns)."""
    chosen = [r for r in rows(set_name) if speaker is None or r["speaker"] == speaker]
    if set_name == "S0150":
        chosen = [r for r in chosen if r["domain"] == "news"]
    clips = [load_clip(r["path"]) for r in chosen[skip : skip + limit]]
    if set_name == "aishell3":
        return _halves(clips[0])
    if set_name == "dsp":  # isolated words: three to a turn
        return [np.concatenate(_with_gaps(clips[i : i + 3], 0.15)) for i in range(0, len(clips) - 2, 3)]
    return clips


def speakers_of(set_name: str) -> list[str]:
    return sorted({r["speaker"] for r in rows(set_name)})


def build(name: str, voices: dict[str, list[np.ndarray]], *, turns: int = 0, seconds: float = 0.0,
          seed: int = 0) -> Conversation:
    """``turns`` turns (or turns until ``seconds`` of audio) by ``voices``; pools are used in order and wrap."""
    rng = random.Random(seed)
    names = list(voices)
    used = dict.fromkeys(names, 0)
    parts: list[np.ndarray] = [np.zeros(int(0.5 * SAMPLE_RATE), np.float32)]
    reference: list[tuple[float, float, str]] = []
    at, last = 0.5, None
    while (turns and len(reference) < turns) or (seconds and at < seconds):
        if turns and len(reference) >= turns:
            break
        speaker = rng.choice([n for n in names if n != last] or names)
        pool = voices[speaker]
        count = min(rng.choice((1, 2)), len(pool))
        sentences = [pool[(used[speaker] + k) % len(pool)] for k in range(count)]
        used[speaker] += count
        turn = np.concatenate(_with_gaps(sentences, rng.uniform(0.15, 0.3)))
        reference.append((round(at, 3), round(at + len(turn) / SAMPLE_RATE, 3), speaker))
        pause = rng.uniform(0.2, 1.0)
        parts += [turn, np.zeros(int(pause * SAMPLE_RATE), np.float32)]
        at += len(turn) / SAMPLE_RATE + int(pause * SAMPLE_RATE) / SAMPLE_RATE
        last = speaker
    return Conversation(name, np.concatenate(parts).astype(np.float32), reference)


def _with_gaps(clips: list[np.ndarray], gap: float) -> list[np.ndarray]:
    silence = np.zeros(int(gap * SAMPLE_RATE), np.float32)
    out: list[np.ndarray] = []
    for i, clip in enumerate(clips):
        out += [silence, clip] if i else [clip]
    return out


def _halves(clip: np.ndarray) -> list[np.ndarray]:
    gaps = librosa.effects.split(clip, top_db=30)
    cuts = [int((a[1] + b[0]) / 2) for a, b in zip(gaps, gaps[1:], strict=False)]
    middle = len(clip) // 2
    cut = min(cuts, key=lambda c: abs(c - middle)) if cuts else middle
    return [clip[:cut], clip[cut:]]

"""Shared test fixtures: the shared AISHELL-1 sample, the embedded model, a session-wide Transcriber.

Helpers may append fixtures at the end of this file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "aishell1-sample-S0150"
EXAMPLES = REPO / "examples"


def shared_rows() -> list[dict]:
    manifest = SHARED_DATA / "manifest.jsonl"
    if not manifest.is_file():
        pytest.skip(
            f"shared AISHELL-1 sample not found at {SHARED_DATA} (expected ../shared beside the repo)"
        )
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in rows:
        row["path"] = str(SHARED_DATA / row["audio"])
    return rows


@pytest.fixture(scope="session")
def aishell_rows() -> list[dict]:
    """All 500 rows of the shared manifest, each with an absolute `path`; skips when shared data is absent."""
    return shared_rows()


@pytest.fixture(scope="session")
def news_rows(aishell_rows: list[dict]) -> list[dict]:
    """The public AISHELL-1 news utterances (W0121-W0496)."""
    return [row for row in aishell_rows if row["domain"] == "news"]


@pytest.fixture(scope="session")
def example_clips() -> list[dict]:
    """The two AISHELL-1 clips shipped in examples/ (always present), with references."""
    rows = [
        json.loads(line) for line in (EXAMPLES / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    for row in rows:
        row["path"] = str(EXAMPLES / row["audio"])
    return rows


@pytest.fixture(scope="session")
def transcriber():
    """The real embedded Whisper base, loaded once for the whole session."""
    from whisper_zh import Transcriber

    return Transcriber("base")


@pytest.fixture(scope="session")
def base_tokenizer():
    """The embedded base's Transformers tokenizer (what fine-tuning builds its labels with)."""
    from whisper_zh.hf import load_tokenizer
    from whisper_zh.models import embedded_model_dir

    return load_tokenizer(embedded_model_dir())


@pytest.fixture(scope="session")
def training_clips() -> list:
    """Three shared news clips (W0201-W0203) as fine-tuning utterances; skips when shared data is absent."""
    from whisper_zh.training.features import load_utterances

    shared_rows()  # skips without the shared data
    return load_utterances(SHARED_DATA / "manifest.jsonl")[200:203]


# -- speaker diarization: a conversation of two real voices ----------------------------------------------------

CONVERSATION_TURNS = (  # (speaker, utterances): AISHELL-1 S0150 and the Taiwan narrator, taking turns
    ("S0150", ("aishell1-sample-S0150/audio/BAC009S0150W0121.flac",)),
    ("narrator", ("taiwan-narrator-131/audio/5_3039_20231015000.flac", "taiwan-narrator-131/audio/5_3039_20231015001.flac")),
    ("S0150", ("aishell1-sample-S0150/audio/BAC009S0150W0122.flac",)),
    ("narrator", ("taiwan-narrator-131/audio/5_3039_20231015004.flac", "taiwan-narrator-131/audio/5_3039_20231015005.flac")),
)


@pytest.fixture(scope="session")
def conversation() -> dict:
    """Two speakers in four turns (0.6 s between turns, 0.25 s between a turn's sentences), ~24 s: ``audio``
    (16 kHz float32), ``turns`` [(start, end, speaker)] and the ``text`` spoken."""
    shared_rows()  # skips without the shared data
    import numpy as np
    from bench.conversations import load_clip

    data = SHARED_DATA.parent
    texts = {}
    for name in ("aishell1-sample-S0150", "taiwan-narrator-131"):
        for line in (data / name / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts[f"{name}/{row['audio']}"] = row["text"]
    parts, turns, at, text = [np.zeros(8000, np.float32)], [], 0.5, ""
    for speaker, clips in CONVERSATION_TURNS:
        start = at
        for k, clip in enumerate(clips):
            if k:
                parts.append(np.zeros(4000, np.float32))
                at += 0.25
            audio = load_clip(data / clip)
            parts.append(audio)
            at += len(audio) / 16000
            text += texts[clip]
        turns.append((start, at, speaker))
        parts.append(np.zeros(9600, np.float32))
        at += 0.6
    return {"audio": np.concatenate(parts), "turns": turns, "text": text}

"""Pseudo-labels: a manifest of machine transcripts that ``finetune`` and ``evaluate`` read directly, with each
row's confidence, keeping only the rows confident enough to train on.

A row is ``{"id", "audio", "text", "duration", "avg_logprob", "no_speech_prob", "compression_ratio"}``; the
confidence fields come from the transcription's segments (:func:`confidence`). The thresholds default to
Whisper's own rules for distrusting a decode (the ``DecodeOptions`` thresholds). Rows that fail a threshold go to
``manifest-rejected.jsonl`` with the reason, so a user can look at what was left out.

Caveat: the log-probability and no-speech probability of a short clip that was packed with others into one
30-second window are the window's, shared by every clip in it; the compression ratio is the clip's own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from whisper_zh.decoding import DecodeOptions
from whisper_zh.distributed.store import Outcome
from whisper_zh.files import atomic_write_text
from whisper_zh.results import Transcription

MANIFEST_FILE = "manifest.jsonl"
REJECTED_FILE = "manifest-rejected.jsonl"
_DEFAULTS = DecodeOptions()


@dataclass(frozen=True)
class Confidence:
    """A transcription's confidence: mean token log-probability (weighted by tokens where segments carry them),
    the highest no-speech probability and the highest compression ratio among its segments."""

    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float


def confidence(transcription: Transcription) -> Confidence:
    segments = transcription.segments
    if not segments:
        return Confidence(0.0, 1.0, 0.0)
    weights = [len(s.tokens) or 1 for s in segments]
    avg = sum(s.avg_logprob * w for s, w in zip(segments, weights, strict=True)) / sum(weights)
    return Confidence(avg, max(s.no_speech_prob for s in segments), max(s.compression_ratio for s in segments))


@dataclass(frozen=True)
class ConfidenceFilter:
    """Thresholds a row must pass (None: not checked). The defaults are Whisper's own thresholds for a decode
    to distrust. The no-speech probability is not checked by default: Whisper sets it high on some quiet speech
    and trusts it only together with a low log-probability, which ``min_avg_logprob`` already rejects."""

    min_avg_logprob: float | None = _DEFAULTS.log_prob_threshold
    max_no_speech: float | None = None
    max_compression_ratio: float | None = _DEFAULTS.compression_ratio_threshold

    def reasons(self, text: str, conf: Confidence) -> list[str]:
        """Why a row is rejected (empty: kept)."""
        out = [] if text.strip() else ["no text"]
        if self.min_avg_logprob is not None and conf.avg_logprob < self.min_avg_logprob:
            out.append(f"avg_logprob {conf.avg_logprob:.3f} < {self.min_avg_logprob:g}")
        if self.max_no_speech is not None and conf.no_speech_prob > self.max_no_speech:
            out.append(f"no_speech_prob {conf.no_speech_prob:.3f} > {self.max_no_speech:g}")
        if self.max_compression_ratio is not None and conf.compression_ratio > self.max_compression_ratio:
            out.append(f"compression_ratio {conf.compression_ratio:.2f} > {self.max_compression_ratio:g}")
        return out


@dataclass(frozen=True)
class ManifestCounts:
    kept: int
    rejected: int
    path: Path
    rejected_path: Path


def manifest_row(outcome: Outcome) -> dict:
    """The manifest row of a transcribed input (``audio`` absolute, so the manifest can live anywhere)."""
    assert outcome.transcription is not None
    conf = confidence(outcome.transcription)
    return {
        "id": outcome.name,
        "audio": os.path.abspath(outcome.key),
        "text": outcome.transcription.text,
        "duration": round(outcome.transcription.duration, 3),
        "avg_logprob": round(conf.avg_logprob, 4),
        "no_speech_prob": round(conf.no_speech_prob, 4),
        "compression_ratio": round(conf.compression_ratio, 3),
    }


def write_manifest(outcomes: Iterable[Outcome], directory: Path, keep: ConfidenceFilter) -> ManifestCounts:
    """manifest.jsonl (rows that pass ``keep``) and manifest-rejected.jsonl (the others, with ``rejected``),
    in the order of ``outcomes``; failed inputs are in neither (they are in errors.jsonl)."""
    kept: list[str] = []
    rejected: list[str] = []
    for outcome in outcomes:
        if outcome.transcription is None:
            continue
        row = manifest_row(outcome)
        reasons = keep.reasons(row["text"], confidence(outcome.transcription))
        if reasons:
            rejected.append(json.dumps({**row, "rejected": "; ".join(reasons)}, ensure_ascii=False) + "\n")
        else:
            kept.append(json.dumps(row, ensure_ascii=False) + "\n")
    path = atomic_write_text(directory / MANIFEST_FILE, "".join(kept))
    rejected_path = atomic_write_text(directory / REJECTED_FILE, "".join(rejected))
    return ManifestCounts(len(kept), len(rejected), path, rejected_path)

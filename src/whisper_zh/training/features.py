"""Training data: utterances -> (log-mel features, decoder inputs, labels), optional packing, and the collator.

Targets are converted to the configured script (Simplified by default) with punctuation kept; the decoder
prefix is ``<|startoftranscript|><|zh|><|transcribe|><|notimestamps|>``, and the loss covers the transcript and
``<|endoftext|>`` only (the forced prefix is masked with -100).

Features: by default they are computed as faster-whisper computes them at inference time (log-mel of the
unpadded audio, then mel frames padded with zeros to 3000), because ``whisper-zh transcribe`` runs the
fine-tuned model through faster-whisper; training on the same encoder input avoids the train/inference mismatch
described in shared/docs/stack-notes.md. ``feature_pipeline: transformers`` uses WhisperFeatureExtractor
(audio padded to 30 s first), as the plain Hugging Face recipe does.

Packing: Whisper's encoder always sees 30 s (3000 frames), so a 4 s clip pays for 26 s of padding. With
``packing`` on, several utterances share one window, and the labels carry timestamp tokens marking where each
starts and ends (Whisper's own long-form training format):
``<|sot|><|zh|><|transcribe|><|0.00|>text1<|3.20|><|3.20|>text2<|7.84|><|endoftext|>``.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from whisper_zh.audio import SAMPLE_RATE, load_audio
from whisper_zh.errors import DataError
from whisper_zh.normalize import convert_script

log = logging.getLogger(__name__)

N_FRAMES = 3000  # Whisper's encoder input: 30 s of 10 ms frames
MAX_TARGET_TOKENS = 448  # decoder positions
TIME_PRECISION = 0.02  # seconds per timestamp token
PACK_GAP_SECONDS = 0.1  # silence inserted between packed utterances


# ---------------------------------------------------------------------------------------------- sources

@dataclass
class Item:
    """One utterance as the trainer sees it (a path or array for audio, the raw transcript)."""

    id: str
    audio: Any
    text: str
    duration: float | None = None
    speaker: str | None = None


def open_source(spec: str | Path) -> tuple[list[Item], list[Any]]:
    """Read any source whisper_zh.data understands: (usable items, rows it could not use as BadRow)."""
    from whisper_zh.data import load_source

    source = load_source(str(spec))
    items = [Item(u.id, u.audio, u.text, u.duration, u.speaker) for u in source]
    return items, list(source.problems)


def load_utterances(spec: str | Path) -> list[Item]:
    """The usable utterances of a source (see :func:`open_source`)."""
    return open_source(spec)[0]


def write_manifest(items: Iterable[Item], path: str | Path) -> Path:
    """Write Items as a JSONL manifest with absolute audio paths (subsets for tests and benchmarks)."""
    path = Path(path)
    lines = [json.dumps({"id": it.id, "audio": str(Path(it.audio).resolve()), "text": it.text,
                         "duration": it.duration, "speaker": it.speaker}, ensure_ascii=False) for it in items]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@lru_cache(maxsize=8192)
def _cached_audio(path: str) -> np.ndarray:
    return load_audio(path)


def item_audio(item: Item) -> np.ndarray:
    """Decoded 16 kHz mono audio of an item (cached per path)."""
    if isinstance(item.audio, np.ndarray):
        return item.audio.astype(np.float32, copy=False)
    return _cached_audio(str(item.audio))


def item_duration(item: Item) -> float:
    if item.duration:
        return float(item.duration)
    return len(item_audio(item)) / SAMPLE_RATE


# ---------------------------------------------------------------------------------------------- features

class Featurizer:
    """Audio -> (80 or 128, 3000) float32 log-mel, with the configured pipeline."""

    def __init__(self, pipeline: str = "faster-whisper", n_mels: int = 80) -> None:
        self.pipeline = pipeline
        self.n_mels = n_mels
        if pipeline == "faster-whisper":
            from faster_whisper.feature_extractor import FeatureExtractor

            self._fw = FeatureExtractor(feature_size=n_mels)
        elif pipeline == "transformers":
            from transformers import WhisperFeatureExtractor

            self._hf = WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=SAMPLE_RATE, hop_length=160,
                                               n_fft=400)
        else:
            raise ValueError(f"unknown feature pipeline '{pipeline}'")

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        audio = audio[: 30 * SAMPLE_RATE]
        if self.pipeline == "faster-whisper":
            from faster_whisper.audio import pad_or_trim

            mel = self._fw(audio)[:, : len(audio) // 160]  # as faster-whisper's transcribe: content frames only
            return pad_or_trim(mel, N_FRAMES).astype(np.float32)
        out = self._hf(audio, sampling_rate=SAMPLE_RATE, return_tensors="np")
        return out["input_features"][0].astype(np.float32)


# ---------------------------------------------------------------------------------------------- labels

@dataclass
class TokenPlan:
    """Special-token ids, read from the tokenizer (not hard-coded) so any Whisper vocabulary works."""

    sot: int
    eot: int
    language: int
    task: int
    no_timestamps: int
    timestamp_begin: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, language: str = "zh", task: str = "transcribe") -> TokenPlan:
        ids = tokenizer.convert_tokens_to_ids(
            ["<|startoftranscript|>", "<|endoftext|>", f"<|{language}|>", f"<|{task}|>", "<|notimestamps|>",
             "<|0.00|>"]
        )
        unk = getattr(tokenizer, "unk_token_id", None)
        if any(i is None or (unk is not None and i == unk and i != ids[1]) for i in ids):
            raise DataError(f"tokenizer lacks Whisper special tokens for language '{language}' / task '{task}'")
        return cls(*ids)

    def timestamp(self, seconds: float) -> int:
        index = int(round(min(max(seconds, 0.0), 30.0) / TIME_PRECISION))
        return self.timestamp_begin + index


def clean_target(text: str, script: str = "simplified") -> str:
    """The training target: script-converted, punctuation kept, surrounding and inner ASCII spaces trimmed."""
    text = convert_script(text.strip(), script)  # type: ignore[arg-type]
    return " ".join(text.split())


@dataclass
class Example:
    """One training window: features plus decoder input and label ids (labels aligned with inputs)."""

    input_features: np.ndarray
    decoder_input_ids: list[int]
    labels: list[int]
    n_utterances: int
    ids: list[str] = field(default_factory=list)


class ExampleBuilder:
    """Builds Examples from one utterance (no timestamps) or several packed into one window (timestamps)."""

    def __init__(self, tokenizer: Any, featurizer: Featurizer, *, language: str = "zh", task: str = "transcribe",
                 script: str = "simplified") -> None:
        self.tokenizer = tokenizer
        self.featurizer = featurizer
        self.tokens = TokenPlan.from_tokenizer(tokenizer, language, task)
        self.script = script

    def text_ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(clean_target(text, self.script), add_special_tokens=False))

    def single(self, item: Item) -> Example:
        t = self.tokens
        prefix = [t.sot, t.language, t.task, t.no_timestamps]
        body = self.text_ids(item.text) + [t.eot]
        return self._example(self.featurizer(item_audio(item)), prefix, body, [item.id])

    def packed(self, items: Sequence[Item]) -> Example:
        if len(items) == 1:
            return self.single(items[0])
        t = self.tokens
        gap = np.zeros(int(PACK_GAP_SECONDS * SAMPLE_RATE), dtype=np.float32)
        pieces: list[np.ndarray] = []
        body: list[int] = []
        cursor = 0
        for index, item in enumerate(items):
            audio = item_audio(item)
            if index:
                pieces.append(gap)
                cursor += len(gap)
            start = cursor / SAMPLE_RATE
            pieces.append(audio)
            cursor += len(audio)
            body += [t.timestamp(start)] + self.text_ids(item.text) + [t.timestamp(cursor / SAMPLE_RATE)]
        body.append(t.eot)
        audio = np.concatenate(pieces)
        return self._example(self.featurizer(audio), [t.sot, t.language, t.task], body, [i.id for i in items])

    def _example(self, features: np.ndarray, prefix: list[int], body: list[int], ids: list[str]) -> Example:
        sequence = prefix + body
        if len(sequence) > MAX_TARGET_TOKENS:
            raise DataError(f"{ids[0]}: target is {len(sequence)} tokens, over Whisper's {MAX_TARGET_TOKENS}")
        decoder_input_ids = sequence[:-1]
        labels = sequence[1:]
        masked = len(prefix) - 1  # language, task (and notimestamps) are forced at inference: no loss on them
        labels = [-100] * masked + labels[masked:]
        return Example(features, decoder_input_ids, labels, len(ids), ids)


def plan_windows(durations: Sequence[float], token_counts: Sequence[int], *, packing: bool, max_seconds: float,
                 seed: int, epoch: int) -> list[list[int]]:
    """Shuffle utterance indices (seed, epoch) and group them into windows.

    Without packing every window holds one utterance. With packing, consecutive shuffled utterances are added
    to the open window while the audio (plus gaps) stays under ``max_seconds`` and the label tokens under 440.
    """
    order = list(range(len(durations)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    if not packing:
        return [[i] for i in order]
    windows: list[list[int]] = []
    current: list[int] = []
    seconds = 0.0
    tokens = 4
    for index in order:
        need = durations[index] + (PACK_GAP_SECONDS if current else 0.0)
        need_tokens = token_counts[index] + 2
        if current and (seconds + need > max_seconds or tokens + need_tokens > MAX_TARGET_TOKENS - 8):
            windows.append(current)
            current, seconds, tokens = [], 0.0, 4
            need = durations[index]
        current.append(index)
        seconds += need
        tokens += need_tokens
    if current:
        windows.append(current)
    return windows


class WindowDataset:
    """A torch-style map dataset over a window plan (each entry a list of item indices)."""

    def __init__(self, items: Sequence[Item], windows: Sequence[Sequence[int]], builder: ExampleBuilder) -> None:
        self.items = items
        self.windows = windows
        self.builder = builder

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> Example:
        members = [self.items[i] for i in self.windows[index]]
        return self.builder.packed(members)


class Collator:
    """Stack features; right-pad decoder inputs with <|endoftext|> and labels with -100."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: Sequence[Example]) -> dict[str, Any]:
        import torch

        width = max(len(e.labels) for e in examples)
        inputs = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        for row, example in enumerate(examples):
            inputs[row, : len(example.decoder_input_ids)] = torch.tensor(example.decoder_input_ids)
            labels[row, : len(example.labels)] = torch.tensor(example.labels)
        features = torch.from_numpy(np.stack([e.input_features for e in examples]))
        return {
            "input_features": features,
            "decoder_input_ids": inputs,
            "labels": labels,
            "n_utterances": sum(e.n_utterances for e in examples),
        }

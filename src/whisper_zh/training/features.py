"""Training data: utterances -> (log-mel features, decoder inputs, labels), packing, augmentation, the collator.

Targets are converted to the configured script (Simplified by default) with punctuation kept. A window is built
as the product decodes one, so that training and use match:

- **The prompt.** ``whisper-zh transcribe`` conditions the decoder on the Mandarin prompt (previous-text tokens,
  ``DecodeOptions.initial_prompt``). Training windows carry the same context:
  ``<|startofprev|>以下是普通话的句子。<|startoftranscript|><|zh|><|transcribe|><|notimestamps|>text<|endoftext|>``,
  with no loss on the prompt or the forced prefix. A share of windows (``prompt_dropout``) goes without it, so
  decoding without a prompt keeps working.
- **Features** are computed as faster-whisper computes them at inference time (log-mel of the unpadded audio,
  then mel frames padded with zeros to 3000); ``feature_pipeline: transformers`` uses WhisperFeatureExtractor
  (audio padded to 30 s first), as the plain Hugging Face recipe does.
- **Packing.** Whisper's encoder always sees 30 s (3000 frames), so a 4 s clip pays for 26 s of padding. With
  ``packing`` on, several utterances share one window, separated by the product's packing gap
  (:data:`whisper_zh.chunking.PACK_GAP`). A window is written in one of two forms: the product's pack
  (``<|notimestamps|>``, the texts one after the other, as the transcriber decodes packed clips), or Whisper's
  long-form format with timestamp tokens marking where each utterance starts and ends
  (``<|sot|><|zh|><|transcribe|><|0.00|>text1<|3.20|><|4.00|>text2<|7.84|><|endoftext|>``), which keeps the
  timestamps that long recordings are decoded with. ``pack_timestamps`` is the share of the second form.
- **Augmentation** (:mod:`whisper_zh.training.augment`) changes each utterance's waveform before it is packed.

Every per-window choice (prompt or not, pack form, augmentation) is drawn from (seed, epoch, index), so a resumed
run builds the same windows as an uninterrupted one.
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
from whisper_zh.chunking import PACK_GAP
from whisper_zh.errors import DataError
from whisper_zh.normalize import chinese_punctuation, convert_script
from whisper_zh.training.augment import Augmenter, AugmentPlan

log = logging.getLogger(__name__)

N_FRAMES = 3000  # Whisper's encoder input: 30 s of 10 ms frames
MAX_TARGET_TOKENS = 448  # decoder positions
TIME_PRECISION = 0.02  # seconds per timestamp token
PACK_GAP_SECONDS = PACK_GAP  # silence between packed utterances: the product's packing gap


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
    previous: int  # <|startofprev|>

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, language: str = "zh", task: str = "transcribe") -> TokenPlan:
        ids = tokenizer.convert_tokens_to_ids(
            ["<|startoftranscript|>", "<|endoftext|>", f"<|{language}|>", f"<|{task}|>", "<|notimestamps|>",
             "<|0.00|>", "<|startofprev|>"]
        )
        unk = getattr(tokenizer, "unk_token_id", None)
        if any(i is None or (unk is not None and i == unk and i != ids[1]) for i in ids):
            raise DataError(f"tokenizer lacks Whisper special tokens for language '{language}' / task '{task}'")
        return cls(*ids)

    def timestamp(self, seconds: float) -> int:
        index = int(round(min(max(seconds, 0.0), 30.0) / TIME_PRECISION))
        return self.timestamp_begin + index


def clean_target(text: str, script: str = "simplified") -> str:
    """The training target: script-converted, punctuation kept (half-width marks in Chinese text made
    full-width, as the product writes them), surrounding and inner ASCII spaces trimmed."""
    text = convert_script(text.strip(), script)  # type: ignore[arg-type]
    return chinese_punctuation(" ".join(text.split()))


@dataclass
class Example:
    """One training window: features plus decoder input and label ids (labels aligned with inputs)."""

    input_features: np.ndarray
    decoder_input_ids: list[int]
    labels: list[int]
    n_utterances: int
    ids: list[str] = field(default_factory=list)


class ExampleBuilder:
    """Builds Examples from one utterance or several packed into one window (see the module docstring).

    ``prompt`` is the previous-text prompt the product decodes with (None: windows never carry one); it is
    tokenised as the CTranslate2 engine tokenises it (no leading space)."""

    def __init__(self, tokenizer: Any, featurizer: Featurizer, *, language: str = "zh", task: str = "transcribe",
                 script: str = "simplified", prompt: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.featurizer = featurizer
        self.tokens = TokenPlan.from_tokenizer(tokenizer, language, task)
        self.script = script
        text = (prompt or "").strip()
        self.prompt_ids = [self.tokens.previous, *tokenizer.encode(text, add_special_tokens=False)] if text else []

    def text_ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(clean_target(text, self.script), add_special_tokens=False))

    def single(self, item: Item, *, prompted: bool = True, audio: np.ndarray | None = None) -> Example:
        t = self.tokens
        prefix = self._context(prompted) + [t.sot, t.language, t.task, t.no_timestamps]
        body = self.text_ids(item.text) + [t.eot]
        audio = item_audio(item) if audio is None else audio
        return self._example(self.featurizer(audio), prefix, body, [item.id])

    def packed(self, items: Sequence[Item], *, prompted: bool = True, timestamps: bool = True,
               audios: Sequence[np.ndarray] | None = None) -> Example:
        """One window of ``items`` (with ``audios`` in place of their own audio, when given)."""
        audios = [item_audio(it) for it in items] if audios is None else list(audios)
        if len(items) == 1:
            return self.single(items[0], prompted=prompted, audio=audios[0])
        t = self.tokens
        gap = np.zeros(int(PACK_GAP_SECONDS * SAMPLE_RATE), dtype=np.float32)
        pieces: list[np.ndarray] = []
        body: list[int] = []
        cursor = 0
        for index, (item, audio) in enumerate(zip(items, audios, strict=True)):
            if index:
                pieces.append(gap)
                cursor += len(gap)
            start = cursor / SAMPLE_RATE
            pieces.append(audio)
            cursor += len(audio)
            text = self.text_ids(item.text)
            body += [t.timestamp(start), *text, t.timestamp(cursor / SAMPLE_RATE)] if timestamps else text
        body.append(t.eot)
        prefix = self._context(prompted) + [t.sot, t.language, t.task] + ([] if timestamps else [t.no_timestamps])
        return self._example(self.featurizer(np.concatenate(pieces)), prefix, body, [i.id for i in items])

    def _context(self, prompted: bool) -> list[int]:
        return list(self.prompt_ids) if prompted else []

    def _example(self, features: np.ndarray, prefix: list[int], body: list[int], ids: list[str]) -> Example:
        sequence = prefix + body
        if len(sequence) > MAX_TARGET_TOKENS:
            raise DataError(f"{ids[0]}: target is {len(sequence)} tokens, over Whisper's {MAX_TARGET_TOKENS}")
        decoder_input_ids = sequence[:-1]
        labels = sequence[1:]
        masked = len(prefix) - 1  # the prompt, language, task (and notimestamps) are given at inference: no loss
        labels = [-100] * masked + labels[masked:]
        return Example(features, decoder_input_ids, labels, len(ids), ids)


def plan_windows(durations: Sequence[float], token_counts: Sequence[int], *, packing: bool, max_seconds: float,
                 seed: int, epoch: int, reserved_tokens: int = 4) -> list[list[int]]:
    """Shuffle utterance indices (seed, epoch) and group them into windows.

    Without packing every window holds one utterance. With packing, consecutive shuffled utterances are added
    to the open window while the audio (plus gaps) stays under ``max_seconds`` and the label tokens (plus
    ``reserved_tokens`` for the prompt and prefix) under Whisper's 448.
    """
    order = list(range(len(durations)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    if not packing:
        return [[i] for i in order]
    windows: list[list[int]] = []
    current: list[int] = []
    seconds = 0.0
    tokens = reserved_tokens
    for index in order:
        need = durations[index] + (PACK_GAP_SECONDS if current else 0.0)
        need_tokens = token_counts[index] + 2
        if current and (seconds + need > max_seconds or tokens + need_tokens > MAX_TARGET_TOKENS - 8):
            windows.append(current)
            current, seconds, tokens = [], 0.0, reserved_tokens
            need = durations[index]
        current.append(index)
        seconds += need
        tokens += need_tokens
    if current:
        windows.append(current)
    return windows


@dataclass(frozen=True)
class WindowSpec:
    """One planned training window: which utterances, how each is augmented, and how the window is written."""

    members: tuple[int, ...]
    augment: tuple[AugmentPlan, ...]
    prompted: bool
    timestamps: bool


class EpochPlanner:
    """The windows of each epoch: augmentation drawn per utterance, then packing, then per-window choices."""

    def __init__(self, durations: Sequence[float], token_counts: Sequence[int], *, packing: bool,
                 max_seconds: float, seed: int, augmenter: Augmenter | None = None, prompt_dropout: float = 0.0,
                 pack_timestamps: float = 1.0, reserved_tokens: int = 4) -> None:
        self.durations, self.token_counts = list(durations), list(token_counts)
        self.packing, self.max_seconds, self.seed = packing, max_seconds, seed
        self.augmenter = augmenter or Augmenter(seed=seed)
        self.prompt_dropout, self.pack_timestamps = prompt_dropout, pack_timestamps
        self.reserved_tokens = reserved_tokens

    def __call__(self, epoch: int) -> list[WindowSpec]:
        plans = [self.augmenter.plan(epoch, i) for i in range(len(self.durations))]
        durations = [self.augmenter.duration(d, p) for d, p in zip(self.durations, plans, strict=True)]
        windows = plan_windows(durations, self.token_counts, packing=self.packing, max_seconds=self.max_seconds,
                               seed=self.seed, epoch=epoch, reserved_tokens=self.reserved_tokens)
        specs = []
        for index, members in enumerate(windows):
            rng = random.Random(f"{self.seed}/{epoch}/{index}")
            prompted = rng.random() >= self.prompt_dropout
            timestamps = len(members) > 1 and rng.random() < self.pack_timestamps
            specs.append(WindowSpec(tuple(members), tuple(plans[i] for i in members), prompted, timestamps))
        return specs


class WindowDataset:
    """A torch-style map dataset over planned windows."""

    def __init__(self, items: Sequence[Item], windows: Sequence[WindowSpec | Sequence[int]],
                 builder: ExampleBuilder) -> None:
        self.items = items
        self.windows = [w if isinstance(w, WindowSpec) else WindowSpec(tuple(w), (AugmentPlan(),) * len(w), True,
                                                                       len(w) > 1) for w in windows]
        self.builder = builder

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> Example:
        spec = self.windows[index]
        members = [self.items[i] for i in spec.members]
        audios = [Augmenter.apply(item_audio(it), plan) if plan.changes_audio else item_audio(it)
                  for it, plan in zip(members, spec.augment, strict=True)]
        return self.builder.packed(members, prompted=spec.prompted, timestamps=spec.timestamps, audios=audios)


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

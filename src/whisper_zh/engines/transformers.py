"""The Transformers (PyTorch) engine: runs a Transformers Whisper checkpoint as it is, with ``generate()``.

CTranslate2 is the fast default; this engine decodes a checkpoint without converting it (and an in-memory
model, for training code). Log-mel features come from faster-whisper's extractor, the front end the
CTranslate2 engine uses, so both engines see the same input (Transformers' own extractor pads the waveform
before the log-mel, which changes some transcripts; see shared/docs/stack-notes.md). It does not align words,
so the transcriber neither packs clips nor asks it for word times.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from faster_whisper.audio import pad_or_trim
from faster_whisper.feature_extractor import FeatureExtractor

from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.decoding import DecodeOptions, compression_ratio
from whisper_zh.engines.base import Decoded, RawSegment, split_at_timestamps

# CTranslate2 caps Whisper at 224 new tokens; use the same cap so both engines stop at the same place.
MAX_NEW_TOKENS = 224


class TransformersDecoder:
    """Batched beam search with a ``WhisperForConditionalGeneration`` behind the :class:`Decoder` protocol."""

    name = "transformers"
    aligns_words = False

    def __init__(self, model: Any, processor: Any, *, device: str = "cpu", model_path: str = "<in memory>") -> None:
        self.device = "cuda" if device in ("cuda", "auto") and torch.cuda.is_available() else "cpu"
        self.model = model.to(self.device)
        self.processor = processor
        self.dtype = next(model.parameters()).dtype
        self.model_path = model_path
        self.storage_type = str(self.dtype).removeprefix("torch.")
        self.compute_type = self.storage_type
        self._features = FeatureExtractor(feature_size=int(model.config.num_mel_bins))

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "cpu") -> TransformersDecoder:
        """Load the Transformers model directory ``path``."""
        from whisper_zh.hf import load_transformers_dir

        model, processor = load_transformers_dir(path)
        return cls(model, processor, device=device, model_path=str(path))

    @property
    def is_multilingual(self) -> bool:
        return bool(getattr(self.model.generation_config, "is_multilingual", True))

    @property
    def languages(self) -> frozenset[str]:
        if not self.is_multilingual:
            return frozenset({"en"})
        codes = getattr(self.model.generation_config, "lang_to_id", None) or {}
        return frozenset(code.strip("<|>") for code in codes)

    def detect_language(self, audio: np.ndarray) -> str:
        inputs = self._inputs([audio[: 30 * 16000]])
        with torch.inference_mode():
            token_id = int(self.model.detect_language(input_features=inputs)[0])
        return self.processor.tokenizer.convert_ids_to_tokens(token_id).strip("<|>")

    def decode(
        self, windows: Sequence[np.ndarray], options: DecodeOptions, *, language: str, words: bool,
        timestamps: bool = False, contexts: Sequence[str | None] | None = None,
    ) -> list[Decoded]:
        """Segments from Whisper's timestamp tokens (one per window without them); no word times, and
        ``contexts`` are not used (generate() takes one prompt for the whole batch)."""
        if words:
            raise ValueError("word timestamps need the ctranslate2 engine")
        rows = self._generate(self._inputs(windows), options, language, options.temperature[0], timestamps)
        return [self._decoded(tokens, logprob, _seconds(w), options.temperature[0])
                for w, (tokens, logprob) in zip(windows, rows, strict=True)]

    def decode_with_fallback(
        self, window: np.ndarray, options: DecodeOptions, *, language: str, words: bool, timestamps: bool = False,
        context: str | None = None,
    ) -> Decoded:
        """Whisper's temperature fallback: sample at each higher temperature until the text is neither too
        repetitive nor too unsure; keep the most probable attempt if none passes. The whole window is final."""
        inputs = self._inputs([window])
        attempts = []
        for temperature in options.temperature:
            tokens, logprob = self._generate(inputs, options, language, temperature, timestamps=False)[0]
            attempt = self._decoded(tokens, logprob, _seconds(window), temperature)
            attempts.append(attempt)
            text = "".join(s.text for s in attempt.segments)
            if compression_ratio(text) <= options.compression_ratio_threshold and logprob >= options.log_prob_threshold:
                return attempt
        return max(attempts, key=lambda a: a.segments[0].avg_logprob if a.segments else -1e9)

    # -- internals -------------------------------------------------------------------------------------------

    def _decoded(self, tokens: list[int], logprob: float, duration: float, temperature: float) -> Decoded:
        tokenizer = self.processor.tokenizer
        parts, complete = split_at_timestamps(tokens, self._timestamp_begin, duration)
        segments = []
        for start, end, ids in parts:
            text = tokenizer.decode(ids, skip_special_tokens=True).strip()
            segments.append(RawSegment(text, start, end, logprob, 0.0, compression_ratio(text), tuple(ids),
                                       temperature=temperature))
        return Decoded(tuple(segments), complete)

    def _inputs(self, windows: Sequence[np.ndarray]) -> torch.Tensor:
        features = np.stack([pad_or_trim(self._features(w)[..., :-1]) for w in windows])
        return torch.from_numpy(np.ascontiguousarray(features)).to(self.device, self.dtype)

    def _generate(
        self, inputs: torch.Tensor, options: DecodeOptions, language: str, temperature: float, timestamps: bool
    ) -> list[tuple[list[int], float]]:
        """(answer tokens: text and timestamps, mean token log-probability) per row."""
        sampling = temperature > 0
        kwargs: dict[str, Any] = {
            "task": options.task,
            "num_beams": 1 if sampling else options.beam_size,
            "do_sample": sampling,
            "max_new_tokens": options.max_new_tokens or MAX_NEW_TOKENS,
            "return_timestamps": timestamps,
        }
        if sampling:
            kwargs["temperature"] = temperature
        if self.is_multilingual:
            kwargs["language"] = language
        prompt = options.prompt_for(language)
        prompt_ids: list[int] = []
        if prompt:
            prompt_ids = list(self.processor.get_prompt_ids(prompt))
            kwargs["prompt_ids"] = torch.tensor(prompt_ids, device=self.device)
        with torch.inference_mode():
            out = self.model.generate(input_features=inputs, **kwargs)
        sequences = out["sequences"] if isinstance(out, dict) else out
        answers = [self._answer(row, prompt_ids) for row in sequences.cpu().tolist()]
        prefix = prompt_ids + self._task_tokens(options.task, language, timestamps)
        return [(answer, self._logprob(inputs[i : i + 1], prefix, answer)) for i, answer in enumerate(answers)]

    def _task_tokens(self, task: str, language: str, timestamps: bool) -> list[int]:
        ids = self.processor.tokenizer.convert_tokens_to_ids
        tokens = [ids("<|startoftranscript|>")]
        if self.is_multilingual:
            tokens += [ids(f"<|{language}|>"), ids(f"<|{task}|>")]
        return tokens + ([] if timestamps else [ids("<|notimestamps|>")])

    def _logprob(self, features: torch.Tensor, prefix: list[int], answer: list[int]) -> float:
        """Whisper's avg_logprob of ``answer`` (and the end token after it), scored by one teacher-forced pass."""
        eot = self.processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        target = answer + [eot]
        ids = torch.tensor([prefix + target], device=self.device)
        with torch.inference_mode():
            logits = self.model(input_features=features, decoder_input_ids=ids[:, :-1]).logits
        logprobs = torch.log_softmax(logits[0, len(prefix) - 1 :].float(), dim=-1)
        picked = logprobs.gather(1, torch.tensor(target, device=self.device)[:, None])
        return float(picked.sum()) / len(target)

    def _answer(self, row: list[int], prompt_ids: list[int]) -> list[int]:
        """The answer's tokens (text and timestamps): generate() returns <|startofprev|> + prompt first, then the
        task tokens, then the answer."""
        if prompt_ids and row[: len(prompt_ids)] == prompt_ids:
            row = row[len(prompt_ids) :]
        eot = self.processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")  # ids from here to <|0.00|> are special
        return [t for t in row if t < eot or t >= self._timestamp_begin]

    @property
    def _timestamp_begin(self) -> int:
        return int(self.processor.tokenizer.convert_tokens_to_ids("<|0.00|>"))

def _seconds(window: np.ndarray) -> float:
    return len(window) / SAMPLE_RATE

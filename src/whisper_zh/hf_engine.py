"""The Transformers (PyTorch) decoding engine: the chunks the CTranslate2 path would decode, decoded with generate().

CTranslate2 is the fast default; this engine runs a Transformers checkpoint as it is (no conversion), which is
what training uses for its generate-based evaluation and what checks the two engines against each other. The
log-mel features are computed by the caller with faster-whisper's extractor, the same front end as the
CTranslate2 path (Transformers' own extractor pads before the log-mel, which changes some transcripts).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from whisper_zh.decoding import DecodeOptions
from whisper_zh.hf import load_transformers_whisper
from whisper_zh.models import ResolvedModel

# CTranslate2 caps Whisper at 224 new tokens; use the same cap so both engines stop at the same place.
MAX_NEW_TOKENS = 224


class TransformersDecoder:
    """Batched beam search over (batch, n_mels, 3000) features with a Transformers Whisper model."""

    def __init__(
        self, resolved: ResolvedModel, device: str = "cpu", dtype: torch.dtype = torch.float32
    ) -> None:
        self.model, self.processor = load_transformers_whisper(resolved, dtype=dtype)
        self.device = "cuda" if device in ("cuda", "auto") and torch.cuda.is_available() else "cpu"
        self.model.to(self.device)
        self.dtype = dtype

    @property
    def is_multilingual(self) -> bool:
        return bool(getattr(self.model.generation_config, "is_multilingual", True))

    @property
    def n_mels(self) -> int:
        return int(self.model.config.num_mel_bins)

    def detect_language(self, features: np.ndarray) -> str:
        """The most likely language code for one (n_mels, 3000) feature window."""
        inputs = torch.from_numpy(np.ascontiguousarray(features[None])).to(self.device, self.dtype)
        with torch.inference_mode():
            token_id = int(self.model.detect_language(input_features=inputs)[0])
        return self.processor.tokenizer.convert_ids_to_tokens(token_id).strip("<|>")

    def decode(self, features: np.ndarray, options: DecodeOptions, language: str) -> list[dict[str, Any]]:
        """One result per row of ``features``: text, mean token log-probability and the token ids."""
        kwargs: dict[str, Any] = {
            "task": options.task,
            "num_beams": options.beam_size,
            "max_new_tokens": options.max_new_tokens or MAX_NEW_TOKENS,
            "return_dict_in_generate": True,
            "output_scores": True,
        }
        if self.is_multilingual:
            kwargs["language"] = language
        if options.initial_prompt:
            kwargs["prompt_ids"] = torch.tensor(
                self.processor.get_prompt_ids(options.initial_prompt), device=self.device
            )
        inputs = torch.from_numpy(np.ascontiguousarray(features)).to(self.device, self.dtype)
        with torch.inference_mode():
            out = self.model.generate(input_features=inputs, **kwargs)
        sequences = out.sequences.cpu()
        if options.beam_size > 1 and getattr(out, "sequences_scores", None) is not None:
            logprobs = out.sequences_scores.float().cpu().tolist()
        else:
            step = (
                self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
                .float()
                .cpu()
            )
            logprobs = [
                float(row[torch.isfinite(row)].mean()) if torch.isfinite(row).any() else 0.0 for row in step
            ]
        tokenizer = self.processor.tokenizer
        prompt = kwargs["prompt_ids"].tolist() if "prompt_ids" in kwargs else []
        first_special = tokenizer.convert_tokens_to_ids("<|endoftext|>")  # every id from here on is special
        results = []
        for row, logprob in zip(sequences.tolist(), logprobs, strict=True):
            # With prompt_ids, generate() returns <|startofprev|> + prompt before the answer: drop them.
            if prompt and row[: len(prompt)] == prompt:
                row = row[len(prompt) :]
            tokens = [t for t in row if t < first_special]
            results.append(
                {
                    "text": tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                    "avg_logprob": float(logprob),
                    "no_speech_prob": 0.0,  # generate() does not expose it; silence is handled by VAD upstream
                    "tokens": tokens,
                }
            )
        return results

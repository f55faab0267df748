"""Loading a Whisper model for the Transformers engine, offline: the top layer of model loading.

:func:`load_transformers_whisper` takes any model name :mod:`whisper_zh.models` resolves; a CTranslate2 directory
(the embedded base included) is converted once into the cache by :mod:`whisper_zh.convert`, and the parts a
checkpoint may lack (processor, generation config) come from :mod:`whisper_zh.hf_parts`. The layers, lowest
first: names (models) -> parts (hf_parts) -> conversion (convert) -> loading (this module).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import (
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

from whisper_zh.convert import local_model
from whisper_zh.hf_parts import build_feature_extractor, build_generation_config, load_tokenizer
from whisper_zh.hf_parts import save_processor as save_processor  # re-exported: callers save what they load
from whisper_zh.models import ResolvedModel, resolve_model

__all__ = ["load_transformers_dir", "load_transformers_whisper", "load_tokenizer", "save_processor"]


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
    resolved = name_or_resolved if isinstance(name_or_resolved, ResolvedModel) else resolve_model(name_or_resolved)
    return load_transformers_dir(local_model(resolved, "transformers").path, dtype)


def load_transformers_dir(
    model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32
) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """Load the Transformers Whisper directory ``model_dir`` as it is (what the Transformers engine loads)."""
    model_dir = Path(model_dir)
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

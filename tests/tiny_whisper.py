"""A tiny, randomly initialised Whisper with the real tokenizer: a model that loads and runs in seconds.

For tests, and for benchmarks that time a model shape whose weights are not available offline (speed and memory do
not depend on the weights' values). Not part of the package: nothing a user runs needs random weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from whisper_zh.files import atomic_dir
from whisper_zh.hf_parts import (
    build_generation_config,
    build_processor,
    load_tokenizer,
    save_processor,
    whisper_token_config,
)
from whisper_zh.models import embedded_model_dir


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
    Deterministic for a given ``seed``. The directory is also loadable by :func:`whisper_zh.hf.load_transformers_whisper`
    and convertible with :func:`whisper_zh.convert.transformers_to_ct2_dir`. Returns ``out_dir``.
    """
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

    with atomic_dir(out_dir) as staging:
        model.save_pretrained(str(staging))
        save_processor(build_processor(tokenizer, 80), staging)
    return Path(out_dir)


def _ct2_suppress(ct2_dir: Path, key: str) -> list[int] | None:
    values = json.loads((ct2_dir / "config.json").read_text(encoding="utf-8")).get(key)
    return [int(v) for v in values] if values else None

"""Weight-space interpolation of a fine-tuned model with the model it started from (WiSE-FT).

Wortsman et al., "Robust fine-tuning of zero-shot models" (CVPR 2022): exporting
``start + alpha * (tuned - start)`` keeps most of what fine-tuning gained on its own data and gives back much of
what it cost elsewhere. The small-data recipe adapts Whisper to one speaker, so it was measured there
(bench/RESULTS.md, "Fine-tuning"): at alpha 0.5 the held-out speaker's CER was lower than the fine-tuned weights'
(8.25 % against 9.45 %, p = 0.10), but the dev CER was higher and the other speakers gained nothing, so the recipe
leaves it off (``wise_ft_alpha: 1.0``); it stays an option for data further from the base's.

This module owns only the arithmetic on the trainable state (what ``trainer.trainable_state`` returns); the trainer
decides when it runs and scores the result. PEFT has weighted adapter merging, but not towards the base weights of
a full fine-tune, so the few lines are ours.
"""

from __future__ import annotations

import torch

# LoRA's update is lora_B @ lora_A, and lora_B starts at zero: scaling lora_B by alpha (and keeping lora_A) scales
# the update exactly by alpha. Interpolating lora_A too would scale it by about alpha squared.
_KEPT_AS_TUNED = ("lora_A",)


def interpolate(start: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """``start + alpha * (tuned - start)`` for every tensor of ``tuned`` (computed in float32, stored in the tuned
    tensor's dtype). ``alpha`` 1 returns the tuned weights, 0 the starting ones."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    missing = [name for name in tuned if name not in start and not _kept(name)]
    if missing:
        raise ValueError(f"the starting model has no tensor {missing[0]} ({len(missing)} missing)")
    merged = {}
    for name, weight in tuned.items():
        if _kept(name):
            merged[name] = weight.clone()
            continue
        base = start[name].float()
        merged[name] = (base + alpha * (weight.float() - base)).to(weight.dtype)
    return merged


def _kept(name: str) -> bool:
    return any(part in name for part in _KEPT_AS_TUNED)

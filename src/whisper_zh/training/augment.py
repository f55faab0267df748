"""Waveform augmentation for training: speed perturbation and additive noise at a random SNR.

Both are drawn per utterance and epoch from a generator seeded with (seed, epoch, utterance index), so a resumed
run sees the same audio as an uninterrupted one. SpecAugment (time and frequency masks on the log-mel) is the
model's own (``WhisperConfig.apply_spec_augment``) and is switched on in the trainer.

- Speed perturbation resamples the waveform (Kaldi's recipe: tempo and pitch change together), with soxr, the
  resampler the audio loader already uses. A factor above 1 makes the speech faster and shorter.
- Noise: Gaussian noise, white or brown (integrated, low-frequency heavy like hum and traffic), scaled to an SNR
  drawn uniformly from ``noise_snr_db`` against the utterance's RMS. No noise corpus ships with the project, so
  this is synthetic; pass real noise by other means if you have it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from whisper_zh.audio import SAMPLE_RATE


@dataclass(frozen=True)
class AugmentPlan:
    """What happens to one utterance in one epoch."""

    speed: float = 1.0
    snr_db: float | None = None  # None: no noise
    brown: bool = False
    seed: int = 0

    @property
    def changes_audio(self) -> bool:
        return self.speed != 1.0 or self.snr_db is not None


class Augmenter:
    """Draws :class:`AugmentPlan` per (epoch, utterance) and applies it to a waveform."""

    def __init__(self, *, speeds: Sequence[float] = (), noise_probability: float = 0.0,
                 noise_snr_db: Sequence[float] = (10.0, 30.0), seed: int = 0) -> None:
        self.speeds = tuple(float(s) for s in speeds) or (1.0,)
        self.noise_probability = float(noise_probability)
        low, high = (float(v) for v in noise_snr_db)
        self.snr_range = (min(low, high), max(low, high))
        self.seed = seed

    @property
    def active(self) -> bool:
        return self.speeds != (1.0,) or self.noise_probability > 0

    def plan(self, epoch: int, index: int) -> AugmentPlan:
        if not self.active:
            return AugmentPlan()
        rng = np.random.default_rng([self.seed, epoch, index])
        speed = float(self.speeds[rng.integers(len(self.speeds))])
        noisy = rng.random() < self.noise_probability
        snr = float(rng.uniform(*self.snr_range)) if noisy else None
        return AugmentPlan(speed, snr, bool(rng.random() < 0.5), int(rng.integers(2**31)))

    def duration(self, seconds: float, plan: AugmentPlan) -> float:
        """Duration of a ``seconds`` long utterance after ``plan``."""
        return seconds / plan.speed

    @staticmethod
    def apply(audio: np.ndarray, plan: AugmentPlan) -> np.ndarray:
        if plan.speed != 1.0:
            audio = change_speed(audio, plan.speed)
        if plan.snr_db is not None:
            audio = add_noise(audio, plan.snr_db, np.random.default_rng(plan.seed), brown=plan.brown)
        return audio


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Play ``audio`` ``factor`` times as fast (shorter above 1, pitch moved with it)."""
    import soxr

    return soxr.resample(audio, SAMPLE_RATE * factor, SAMPLE_RATE).astype(np.float32, copy=False)


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator, *, brown: bool = False) -> np.ndarray:
    """``audio`` plus Gaussian noise (white, or brown when ``brown``) at ``snr_db`` below its RMS."""
    noise = rng.standard_normal(len(audio))
    if brown:
        noise = np.cumsum(noise)
        noise -= np.linspace(noise[0], noise[-1], len(noise))  # no drift: ends where it starts
    power = float(np.mean(audio.astype(np.float64) ** 2))
    noise_power = float(np.mean(noise**2))
    if power <= 0 or noise_power <= 0:
        return audio
    scale = np.sqrt(power / (noise_power * 10 ** (snr_db / 10)))
    return (audio + scale * noise).astype(np.float32)

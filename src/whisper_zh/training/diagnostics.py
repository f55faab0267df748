"""Training diagnostics in plain words: the trainer feeds losses and eval results in, events come out.

- loss NaN/inf, or exploding (far above its best after warmup): an error; the trainer stops and says why.
- loss flat for ``flat_window`` steps: a warning (learning rate too low, or labels broken).
- eval CER rising while the train loss falls: a warning (overfitting; the best checkpoint is kept).
- word error rate near 100 % while the loss falls: an explanation (Chinese has no spaces, so whitespace WER
  counts each whole sentence as one word; CER is the metric).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from whisper_zh.errors import WhisperZhError
from whisper_zh.training.config import DiagnosticsSettings


class TrainingDivergedError(WhisperZhError):
    """The loss became NaN/inf or exploded; training stopped."""


@dataclass(frozen=True)
class Event:
    level: str  # "error" | "warning" | "info"
    code: str  # "nan_loss" | "exploding_loss" | "flat_loss" | "overfitting" | "wer_not_cer"
    step: int
    message: str

    def to_dict(self) -> dict:
        return {"event": self.code, "level": self.level, "step": self.step, "message": self.message}


class Diagnostics:
    """Stateful watcher of one run. ``observe_loss`` and ``observe_eval`` return new events (often none)."""

    def __init__(self, settings: DiagnosticsSettings | None = None, *, learning_rate: float = 0.0,
                 warmup_steps: int = 0) -> None:
        self.settings = settings or DiagnosticsSettings()
        self.learning_rate = learning_rate
        self.warmup_steps = warmup_steps
        self.losses: list[tuple[int, float]] = []
        self.evals: list[tuple[int, float]] = []
        self._smoothed: float | None = None
        self._best_smoothed = math.inf
        self._best_step = 0
        self._flat_warned_at = -1
        self._overfit_warned = False
        self._wer_explained = False

    # ------------------------------------------------------------------------------------------ train loss
    def observe_loss(self, step: int, loss: float, grad_norm: float | None = None) -> list[Event]:
        s = self.settings
        if not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
            what = "loss" if not math.isfinite(loss) else "gradient norm"
            return [Event("error", "nan_loss", step,
                          f"step {step}: the {what} is {loss if what == 'loss' else grad_norm}. Training stopped. "
                          f"The learning rate ({self.learning_rate:g}) is probably too high, or fp16 overflowed; "
                          "lower the learning rate, use bf16 or fp32, and check the data with `whisper-zh doctor`.")]
        self.losses.append((step, loss))
        self._smoothed = loss if self._smoothed is None else 0.8 * self._smoothed + 0.2 * loss
        events: list[Event] = []
        floor = min(v for _, v in self.losses)
        if step > max(self.warmup_steps, 3) and loss > s.explode_factor * max(floor, 1e-3) and loss > 1.0:
            events.append(Event("error", "exploding_loss", step,
                                f"step {step}: the loss is {loss:.3g}, {loss / max(floor, 1e-3):.0f}x its lowest "
                                f"value ({floor:.3g}): training is diverging. Training stopped. The learning rate "
                                f"({self.learning_rate:g}) is probably too high; try a tenth of it, or more "
                                "warmup steps."))
            return events
        if self._smoothed < self._best_smoothed * (1 - s.flat_tolerance):
            self._best_smoothed = self._smoothed
            self._best_step = step
        elif (step - self._best_step >= s.flat_window and len(self.losses) >= s.flat_window
              and step - self._flat_warned_at >= s.flat_window):
            self._flat_warned_at = step
            events.append(Event("warning", "flat_loss", step,
                                f"step {step}: the loss has not improved by {s.flat_tolerance:.0%} for "
                                f"{step - self._best_step} steps (about {self._smoothed:.3g}). The learning rate "
                                f"({self.learning_rate:g}) may be too low, or the labels may not match the audio "
                                "(run `whisper-zh doctor` on the data)."))
        return events

    def loss_falling(self) -> bool:
        """True when the recent train loss is below the loss a while ago."""
        if len(self.losses) < 4:
            return False
        values = [v for _, v in self.losses]
        quarter = max(1, len(values) // 4)
        return sum(values[-quarter:]) / quarter < sum(values[:quarter]) / quarter

    # ------------------------------------------------------------------------------------------ eval
    def observe_eval(self, step: int, cer: float, wer: float | None = None, *,
                     best_step: int | None = None) -> list[Event]:
        """``cer`` and ``wer`` are fractions (0.1 = 10 %). ``wer`` is the whitespace word error rate, if shown."""
        events: list[Event] = []
        self.evals.append((step, cer))
        if wer is not None and wer >= 0.9 and cer < 0.8 and not self._wer_explained:
            self._wer_explained = True
            events.append(Event("info", "wer_not_cer", step,
                                f"step {step}: WER is {wer:.0%} while CER is {cer:.1%}. That is the metric, not the "
                                "model: Chinese is written without spaces, so a whitespace-split WER treats each "
                                "sentence as one word and any error makes it 100 %. whisper-zh scores by CER "
                                "(and reports WER only after word segmentation)."))
        k = self.settings.overfit_patience
        if len(self.evals) > k and not self._overfit_warned:
            recent = [c for _, c in self.evals[-(k + 1):]]
            rising = all(b > a for a, b in zip(recent, recent[1:], strict=False))
            if rising and self.loss_falling():
                self._overfit_warned = True
                best = min(self.evals, key=lambda e: e[1])
                events.append(Event("warning", "overfitting", step,
                                    f"step {step}: eval CER rose for {k} evaluations in a row "
                                    f"({' -> '.join(f'{c:.1%}' for c in recent)}) while the train loss keeps "
                                    f"falling: the model is overfitting. The best checkpoint (step {best[0]}, "
                                    f"CER {best[1]:.1%}) is kept; more data, SpecAugment, fewer steps or a lower "
                                    "learning rate help."))
        return events

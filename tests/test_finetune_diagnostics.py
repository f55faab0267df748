"""Training diagnostics: hand-made loss and CER sequences in, plain-words events out."""

from __future__ import annotations

import math

from whisper_zh.training.config import DiagnosticsSettings
from whisper_zh.training.diagnostics import Diagnostics


def codes(events):
    return [e.code for e in events]


def test_nan_loss_is_an_error_naming_the_learning_rate():
    d = Diagnostics(learning_rate=1e-3)
    assert d.observe_loss(1, 2.0) == []
    events = d.observe_loss(2, math.nan)
    assert codes(events) == ["nan_loss"] and events[0].level == "error"
    assert "learning rate (0.001) is probably too high" in events[0].message
    assert codes(d.observe_loss(3, 1.0, grad_norm=math.inf)) == ["nan_loss"]


def test_exploding_loss_after_warmup_is_an_error():
    d = Diagnostics(DiagnosticsSettings(explode_factor=4.0), learning_rate=1e-2, warmup_steps=2)
    for step, loss in enumerate([3.0, 2.0, 1.0, 0.9, 0.8], 1):
        assert d.observe_loss(step, loss) == []
    events = d.observe_loss(6, 4.0)  # 5x the best loss
    assert codes(events) == ["exploding_loss"] and "diverging" in events[0].message
    # during warmup a high loss is not called exploding
    early = Diagnostics(learning_rate=1e-2, warmup_steps=10)
    early.observe_loss(1, 0.5)
    assert early.observe_loss(2, 5.0) == []


def test_flat_loss_warns_once_per_window():
    d = Diagnostics(DiagnosticsSettings(flat_window=5, flat_tolerance=0.02), learning_rate=1e-7)
    events = []
    for step in range(1, 13):
        events += d.observe_loss(step, 2.0 + 0.001 * (step % 2))
    assert codes(events) == ["flat_loss", "flat_loss"]  # at step 6 and again 5 steps later
    assert [e.step for e in events] == [6, 11]
    assert "may be too low, or the labels may not match" in events[0].message


def test_falling_loss_is_not_flat():
    d = Diagnostics(DiagnosticsSettings(flat_window=5), learning_rate=1e-5)
    events = []
    for step in range(1, 30):
        events += d.observe_loss(step, 3.0 * 0.9**step)
    assert events == []


def test_overfitting_warning_when_cer_rises_and_loss_falls():
    d = Diagnostics(DiagnosticsSettings(overfit_patience=2), learning_rate=1e-5)
    for step in range(1, 21):
        d.observe_loss(step, 1.0 / step)
    assert d.observe_eval(5, 0.20) == []
    assert d.observe_eval(10, 0.18) == []
    assert d.observe_eval(15, 0.19) == []
    events = d.observe_eval(20, 0.21)
    assert codes(events) == ["overfitting"]
    assert "step 10, CER 18.0%" in events[0].message and "18.0% -> 19.0% -> 21.0%" in events[0].message
    assert d.observe_eval(25, 0.25) == []  # said once


def test_rising_cer_with_rising_loss_is_not_overfitting():
    d = Diagnostics(learning_rate=1e-5)
    for step in range(1, 21):
        d.observe_loss(step, 0.1 * step)
    for step, c in ((5, 0.1), (10, 0.2), (15, 0.3)):
        assert "overfitting" not in codes(d.observe_eval(step, c))


def test_wer_near_100_with_good_cer_is_explained_as_the_metric():
    d = Diagnostics(learning_rate=1e-5)
    events = d.observe_eval(10, 0.12, wer=0.97)
    assert codes(events) == ["wer_not_cer"] and events[0].level == "info"
    assert "That is the metric, not the model" in events[0].message
    assert d.observe_eval(20, 0.10, wer=0.98) == []  # explained once
    assert Diagnostics().observe_eval(1, 0.95, wer=1.0) == []  # a bad CER is not the metric's fault

"""WiSE-FT arithmetic (training.wiseft): full weights interpolate; a LoRA update scales exactly by alpha."""

import pytest
import torch

from whisper_zh.training.wiseft import interpolate


def test_full_weights_move_the_given_share_of_the_way_from_start_to_tuned():
    start = {"w": torch.zeros(3), "b": torch.ones(2, dtype=torch.float16)}
    tuned = {"w": torch.tensor([2.0, -4.0, 1.0]), "b": torch.full((2,), 3.0, dtype=torch.float16)}
    merged = interpolate(start, tuned, 0.25)
    assert torch.allclose(merged["w"], torch.tensor([0.5, -1.0, 0.25]))
    assert merged["b"].dtype == torch.float16 and torch.allclose(merged["b"].float(), torch.full((2,), 1.5))
    assert torch.equal(interpolate(start, tuned, 1.0)["w"], tuned["w"])
    assert torch.equal(interpolate(start, tuned, 0.0)["w"], start["w"])


def test_a_lora_update_is_scaled_by_alpha_not_alpha_squared():
    torch.manual_seed(0)
    a0, a, b = torch.randn(4, 8), torch.randn(4, 8), torch.randn(8, 4)
    start = {"x.lora_A.default.weight": a0, "x.lora_B.default.weight": torch.zeros(8, 4)}
    tuned = {"x.lora_A.default.weight": a, "x.lora_B.default.weight": b}
    merged = interpolate(start, tuned, 0.5)
    update = merged["x.lora_B.default.weight"] @ merged["x.lora_A.default.weight"]
    assert torch.allclose(update, 0.5 * (b @ a), atol=1e-6)


def test_bad_alpha_and_mismatched_models_are_refused():
    with pytest.raises(ValueError, match="alpha"):
        interpolate({"w": torch.zeros(1)}, {"w": torch.ones(1)}, 1.5)
    with pytest.raises(ValueError, match="no tensor v"):
        interpolate({"w": torch.zeros(1)}, {"v": torch.ones(1)}, 0.5)

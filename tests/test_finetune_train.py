"""Fine-tuning end to end on a tiny random Whisper and real shared clips: a few optimizer steps each.

Covers: the logged loss equals a plain PyTorch loop's (no accumulation scaling), loss falls, generate-based CER
per eval, best checkpoint exported in Transformers layout with card and curves, kill -9 and --resume, divergence
stop, LoRA merged on export, CTranslate2 export usable by the Transcriber, and two-process DDP (gloo).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from whisper_zh.training import checkpoints as ckpt
from whisper_zh.training.config import build_config
from whisper_zh.training.features import Collator, ExampleBuilder, Featurizer, load_utterances, write_manifest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "aishell1-sample-S0150"
pytestmark = pytest.mark.skipif(
    not (DATA / "manifest.jsonl").is_file(), reason=f"shared clips not found at {DATA}"
)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.tiny_whisper import build_tiny_random_whisper

    root = tmp_path_factory.mktemp("ft")
    model = build_tiny_random_whisper(root / "tiny", seed=0, d_model=32, layers=1, heads=2, ffn_dim=64)
    items = load_utterances(DATA / "manifest.jsonl")
    train = write_manifest(items[201:203], root / "train.jsonl")  # 2 news clips: the same batch every step
    evalset = write_manifest(items[450:452], root / "eval.jsonl")
    return {"root": root, "model": str(model), "train": str(train), "eval": str(evalset), "items": items}


def _config(setup, out: Path, **overrides):
    values = dict(
        model=setup["model"],
        train=setup["train"],
        eval=setup["eval"],
        output_dir=str(out),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_steps=3,
        warmup_steps=0,
        eval_steps=3,
        save_steps=3,
        logging_steps=1,
        precision="fp32",
        learning_rate=1e-3,
        generation_max_length=8,
        lr_scheduler="constant",
        skip_doctor=True,
        # the product's decoder, but quick: a random model's garbage would send every window through the
        # temperature fallback (up to 448 tokens at six temperatures); tests/test_finetune_product.py runs the
        # default options on the real base
        num_beams=1,
        eval_fallback=False,
    )
    values.update(overrides)
    return build_config(overrides=values)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text(encoding="utf-8").splitlines()]


def test_finetune_end_to_end_exports_best_model_card_and_curves(setup, tmp_path):
    from whisper_zh.hf import load_transformers_whisper
    from whisper_zh.training.trainer import finetune

    out = tmp_path / "out"
    result = finetune(_config(setup, out, eval_steps=2, save_steps=1, save_total_limit=1), progress=False)
    rows = _rows(out)
    train_rows = [r for r in rows if "loss" in r and "event" not in r]
    eval_rows = [r for r in rows if "cer" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    assert [r["step"] for r in eval_rows] == [0, 2, 3]
    # Adam at lr 1e-3 on one repeated batch: the loss must fall every step
    losses = [r["loss"] for r in train_rows]
    assert losses[0] > losses[1] > losses[2]
    assert all(r["cer"] >= 0 for r in eval_rows) and eval_rows[0]["eval_utterances"] == 2
    assert result.best_cer == min(r["cer"] for r in eval_rows)
    assert result.best_step == min(eval_rows, key=lambda r: (r["cer"], r["step"]))["step"]
    # best + last kept, older ones pruned; everything kept is complete
    kept = {p.name for p in (out / "checkpoints").iterdir()}
    assert f"step-{result.best_step:06d}" in kept and "step-000003" in kept
    assert all(ckpt.is_complete(p) for _, p in ckpt.list_checkpoints(out / "checkpoints"))
    # the exported model is the best checkpoint, in Transformers layout, loadable offline
    model, processor = load_transformers_whisper(str(out))
    from safetensors.torch import load_file

    best = load_file(str(out / "checkpoints" / f"step-{result.best_step:06d}" / "trainable.safetensors"))
    params = dict(model.named_parameters())
    for name in ("model.decoder.layers.0.fc1.weight", "model.encoder.conv1.weight"):
        assert torch.equal(params[name], best[name])
    assert (out / "preprocessor_config.json").is_file()
    # card and curves
    card = (out / "README.md").read_text(encoding="utf-8")
    for needle in (
        "learning_rate: 0.001",
        "per_device_train_batch_size: 2",
        "gradient_accumulation_steps: 1",
        "betas=(0.9,0.999)",
        "| 3 |",
        "## Framework versions",
        "transformers:",
        "## Reproduce",
        "CER before fine-tuning",
        "utterances)",
    ):
        assert needle in card, needle
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert build_config(config_file=out / "finetune_config.yaml").learning_rate == 1e-3


def test_logged_loss_equals_plain_pytorch_loop(setup, tmp_path):
    """No gradient-accumulation scaling: with batch 1 x accumulation 2 the step loss is the mean per-clip loss."""
    from whisper_zh.hf import load_transformers_whisper
    from whisper_zh.training.trainer import finetune

    model, processor = load_transformers_whisper(setup["model"])
    builder = ExampleBuilder(processor.tokenizer, Featurizer(), prompt="以下是普通话的句子。")  # as the trainer does
    collate = Collator(processor.tokenizer.pad_token_id)
    reference = []
    with torch.no_grad():
        for item in load_utterances(setup["train"]):
            batch = collate([builder.single(item)])
            reference.append(
                float(
                    model(
                        input_features=batch["input_features"],
                        decoder_input_ids=batch["decoder_input_ids"],
                        labels=batch["labels"],
                    ).loss
                )
            )
    out = tmp_path / "out"
    finetune(
        _config(
            setup,
            out,
            per_device_train_batch_size=1,
            gradient_accumulation_steps=2,
            max_steps=1,
            eval_steps=1,
            save_steps=1,
            learning_rate=1e-5,
            prompt_dropout=0.0,
        ),
        progress=False,
    )
    first = next(r for r in _rows(out) if r.get("step") == 1 and "loss" in r)
    assert first["loss"] == pytest.approx(sum(reference) / 2, rel=1e-4)
    assert first["samples"] == 2


def _cli(setup, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "whisper_zh",
        "finetune",
        "--model",
        setup["model"],
        "--train",
        setup["train"],
        "--eval",
        setup["eval"],
        "-o",
        str(out),
        "--batch-size",
        "1",
        "--grad-accum",
        "1",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "0",
        "--precision",
        "fp32",
        "--logging-steps",
        "1",
        "--skip-doctor",
        "--no-progress",
        "--set",
        "generation_max_length=4",
        "--set",
        "lr_scheduler=constant",
        "--set",
        "num_beams=1",
        "--set",
        "eval_fallback=false",
        *extra,
    ]


def test_kill_9_then_resume_continues_from_last_complete_checkpoint(setup, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        _cli(setup, out, "--max-steps", "40", "--save-steps", "1", "--eval-steps", "100"),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            done = ckpt.latest_complete(out / "checkpoints")
            if done is not None and done.name >= "step-000002":
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint within 240 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = ckpt.latest_complete(out / "checkpoints")
    step = int(killed_at.name.split("-")[1])
    assert step >= 2 and not (out / "model.safetensors").exists()
    # resume to a few steps past the kill
    final = step + 2
    done = subprocess.run(
        _cli(setup, out, "--max-steps", str(final), "--save-steps", "1", "--eval-steps", "100", "--resume"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _rows(out)
    resumed = [r for r in rows if r.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] >= step
    start = resumed[0]["step"]
    train_steps = [r["step"] for r in rows if "loss" in r and "event" not in r]
    assert train_steps == list(range(1, final + 1))  # each step logged once: nothing lost, nothing repeated
    assert [r["step"] for r in rows if "cer" in r] == [0, final]
    assert (out / "model.safetensors").is_file() and "step" in (out / "README.md").read_text(encoding="utf-8")
    # the resumed run continues the same trajectory as an uninterrupted one (same data order, optimizer state)
    from whisper_zh.training.trainer import finetune

    straight = tmp_path / "straight"
    finetune(
        _config(
            setup,
            straight,
            per_device_train_batch_size=1,
            max_steps=start + 1,
            eval_steps=100,
            save_steps=100,
            generation_max_length=4,
        ),
        progress=False,
    )
    ref = {r["step"]: r["loss"] for r in _rows(straight) if "loss" in r and "event" not in r}
    got = {r["step"]: r["loss"] for r in rows if "loss" in r and "event" not in r}
    assert got[start + 1] == pytest.approx(ref[start + 1], rel=1e-4)


def test_diverging_run_stops_with_plain_words(setup, tmp_path):
    from whisper_zh.training.diagnostics import TrainingDivergedError
    from whisper_zh.training.trainer import finetune

    out = tmp_path / "out"
    with pytest.raises(TrainingDivergedError, match="learning rate .* too high"):
        finetune(
            _config(
                setup, out, learning_rate=5.0, max_steps=12, eval_steps=100, save_steps=100, max_grad_norm=1e9
            ),
            progress=False,
        )
    events = [r for r in _rows(out) if r.get("level") == "error"]
    assert events and events[0]["event"] in ("nan_loss", "exploding_loss")


def test_early_stopping_keeps_the_best_and_stops(setup, tmp_path):
    from whisper_zh.training.trainer import finetune

    out = tmp_path / "out"
    # lr 1e-9 cannot change a greedy transcript: no eval beats step 0, so patience 1 stops after the first eval
    result = finetune(_config(setup, out, learning_rate=1e-9, max_steps=10, eval_steps=1, save_steps=1,
                              early_stopping_patience=1), progress=False)
    assert result.final_step == 1 and result.best_step == 0
    stops = [r for r in _rows(out) if r.get("event") == "early_stopping"]
    assert len(stops) == 1 and "keeping step 0" in stops[0]["message"]
    assert "No evaluation improved on the starting model" in (out / "README.md").read_text(encoding="utf-8")


def test_lora_trains_adapters_only_and_merges_on_export(setup, tmp_path):
    from safetensors.torch import load_file

    from whisper_zh.hf import load_transformers_whisper
    from whisper_zh.training.trainer import finetune

    out = tmp_path / "out"
    result = finetune(
        _config(
            setup,
            out,
            max_steps=2,
            eval_steps=2,
            save_steps=2,
            learning_rate=1e-2,
            **{"lora.enabled": True, "lora.r": 4, "lora.alpha": 8},
        ),
        progress=False,
    )
    saved = load_file(str(out / "checkpoints" / "step-000002" / "trainable.safetensors"))
    assert saved and all("lora_" in name for name in saved)
    merged, _ = load_transformers_whisper(str(out))
    base, _ = load_transformers_whisper(setup["model"])
    assert not any("lora" in n for n, _ in merged.named_parameters())
    if result.best_step == 2:  # adapters trained and merged: the attention weights moved, the FFN did not
        mp, bp = dict(merged.named_parameters()), dict(base.named_parameters())
        assert not torch.equal(
            mp["model.decoder.layers.0.self_attn.q_proj.weight"],
            bp["model.decoder.layers.0.self_attn.q_proj.weight"],
        )
        assert torch.equal(mp["model.decoder.layers.0.fc1.weight"], bp["model.decoder.layers.0.fc1.weight"])
    assert "lora: r=4 alpha=8" in (out / "README.md").read_text(encoding="utf-8")


def test_export_ct2_is_transcribable(setup, tmp_path):
    import ctranslate2

    from whisper_zh.decoding import DecodeOptions
    from whisper_zh.models import resolve_model
    from whisper_zh.training.trainer import finetune
    from whisper_zh.transcriber import Transcriber

    out = tmp_path / "out"
    finetune(_config(setup, out, max_steps=1, eval_steps=1, save_steps=1, export_ct2=True, eval_at_start=False),
             progress=False)
    assert resolve_model(str(out)).layout == "transformers"
    assert resolve_model(str(out / "ctranslate2-float16")).layout == "ctranslate2"
    ctranslate2.models.Whisper(str(out / "ctranslate2-float16"), device="cpu", compute_type="int8")
    # stored float16 like the embedded base, quantised to int8 at load
    info = Transcriber(str(out / "ctranslate2-float16")).info
    assert info.storage_type == "float16" and info.compute_type.startswith("int8")  # int8_float32 on a CPU
    # `whisper-zh transcribe --model out/` path: the Transcriber takes the Transformers layout as is
    result = Transcriber(str(out)).transcribe(setup["items"][450].audio, DecodeOptions(temperature=0.0))
    assert isinstance(result.text, str)


# On a machine without GPUs `accelerate launch --cpu --num_processes 2` starts ONE process (accelerate's multi-CPU
# mode needs mpirun and a hostfile); `--multi_gpu` goes through torch.distributed.run, and without CUDA the
# Accelerator falls back to gloo on the CPU. On GPU machines the same line is the usual DDP launch.
LAUNCHERS = {
    "torchrun": ["torchrun", "--nproc_per_node", "2"],
    "accelerate": ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no"],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_cpu_processes_gloo(setup, tmp_path, launcher):
    """`torchrun ...` and `accelerate launch ...` in front of the unchanged finetune command (DDP on gloo)."""
    out = tmp_path / "out"
    program, *options = LAUNCHERS[launcher]
    command = [str(Path(sys.executable).with_name(program)), *options, "-m", "whisper_zh"] + _cli(
        setup, out, "--max-steps", "2", "--eval-steps", "2"
    )[3:]
    done = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    train_rows = [r for r in _rows(out) if "loss" in r and "event" not in r]
    # two processes x batch 1: two utterances per optimizer step, logged once (rank 0)
    assert [r["samples"] for r in train_rows] == [2, 4]
    assert (out / "model.safetensors").is_file()
    assert "num_processes: 2" in (out / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("frozen", ["encoder", "decoder"])
def test_freezing_trains_only_the_other_half(setup, tmp_path, frozen):
    """--freeze-encoder moves only the decoder's weights, --freeze-decoder only the encoder's (tied proj_out too)."""
    from whisper_zh.hf import load_transformers_whisper
    from whisper_zh.training.trainer import finetune

    out = tmp_path / "out"
    finetune(_config(setup, out, max_steps=1, eval_steps=1, save_steps=1, eval_at_start=False,
                     **{f"freeze_{frozen}": True}), progress=False)
    tuned = dict(load_transformers_whisper(str(out))[0].named_parameters())
    base = dict(load_transformers_whisper(setup["model"])[0].named_parameters())
    moved = {name.split(".")[1] for name in base if not torch.equal(tuned[name], base[name])}
    assert moved == ({"decoder"} if frozen == "encoder" else {"encoder"})
    assert f"freeze_{frozen}: True" in (out / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("frozen", ["encoder", "decoder"])
def test_lora_with_a_frozen_half_puts_adapters_in_the_other_half_only(setup, frozen):
    from whisper_zh.training.trainer import apply_model_options, load_model

    model = apply_model_options(load_model(setup["model"])[0], _config(
        setup, Path("unused"), **{f"freeze_{frozen}": True, "lora.enabled": True, "lora.r": 4}))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    other = "decoder" if frozen == "encoder" else "encoder"
    assert trainable and all("lora_" in name and f".{other}." in name for name in trainable)
    # the decoder's cross-attention (encoder_attn) belongs to the decoder
    assert any("encoder_attn" in name for name in trainable) == (other == "decoder")


def test_freezing_both_halves_is_refused():
    from whisper_zh.training.config import ConfigError

    with pytest.raises(ConfigError, match="nothing to train"):
        build_config(overrides={"freeze_encoder": True, "freeze_decoder": True})


def test_spec_augment_masks_features_in_training_only(setup):
    """With SpecAugment the same batch gives a different loss on each training forward pass, never in eval."""
    from whisper_zh.training.trainer import apply_model_options, load_model

    tokenizer = load_model(setup["model"])[1].tokenizer
    builder = ExampleBuilder(tokenizer, Featurizer())
    batch = Collator(tokenizer.pad_token_id)([builder.single(it) for it in load_utterances(setup["train"])])

    def losses(spec_augment: bool, training: bool) -> list[float]:
        torch.manual_seed(0)
        model = apply_model_options(load_model(setup["model"])[0], _config(setup, Path("unused"),
                                                                           spec_augment=spec_augment))
        model.train(training)
        with torch.no_grad():
            return [float(model(**{k: batch[k] for k in ("input_features", "decoder_input_ids", "labels")}).loss)
                    for _ in range(3)]

    assert len(set(losses(True, True))) > 1
    assert len(set(losses(False, True))) == 1
    assert len(set(losses(True, False))) == 1


def test_average_of_the_last_checkpoints_is_scored_and_exported_only_when_it_wins(setup, tmp_path):
    from safetensors.torch import load_file

    from whisper_zh.hf import load_transformers_whisper
    from whisper_zh.training.trainer import finetune

    out = tmp_path / "out"
    result = finetune(_config(setup, out, eval_steps=1, save_steps=1, save_total_limit=1, average_last=3),
                      progress=False)
    rows = _rows(out)
    (averaged,) = [r for r in rows if "averaged" in r and "cer" in r]
    assert averaged["averaged"] == [1, 2, 3]  # the last three evaluated steps, kept on disk despite the limit
    states = [load_file(str(out / "checkpoints" / f"step-{s:06d}" / "trainable.safetensors")) for s in (1, 2, 3)]
    best = min((r for r in rows if "cer" in r and "averaged" not in r), key=lambda r: (r["cer"], r["step"]))
    exported = dict(load_transformers_whisper(str(out))[0].named_parameters())
    name = "model.decoder.layers.0.fc1.weight"
    mean = torch.stack([st[name] for st in states]).mean(0)
    if averaged["cer"] < best["cer"]:
        assert result.averaged == [1, 2, 3] and torch.allclose(exported[name], mean)
        assert "the average of the weights of steps 1, 2, 3" in (out / "README.md").read_text(encoding="utf-8")
    else:
        assert result.averaged == [] and result.best_step == best["step"]
        if best["step"]:
            assert torch.equal(exported[name], states[best["step"] - 1][name])


def test_wise_ft_exports_the_chosen_checkpoint_moved_halfway_back_to_the_start(setup, tmp_path):
    from safetensors.torch import load_file

    from whisper_zh.hf import load_transformers_whisper
    from whisper_zh.training.trainer import finetune

    out = tmp_path / "out"
    result = finetune(_config(setup, out, eval_steps=1, save_steps=1, save_total_limit=1, wise_ft_alpha=0.5),
                      progress=False)
    assert result.interpolated == 0.5
    (row,) = [r for r in _rows(out) if "interpolated" in r and "cer" in r]
    assert row["step"] == (result.best_step or 0) and result.best_cer == row["cer"]
    chosen = load_file(str(out / "checkpoints" / f"step-{row['step']:06d}" / "trainable.safetensors"))
    start = dict(load_transformers_whisper(setup["model"])[0].named_parameters())
    exported = dict(load_transformers_whisper(str(out))[0].named_parameters())
    name = "model.decoder.layers.0.fc1.weight"
    assert torch.allclose(exported[name], (start[name] + chosen[name]) / 2, atol=1e-6)
    if row["step"]:  # training moved the weights, so the export is neither the start nor the checkpoint
        assert not torch.allclose(exported[name], chosen[name])
    assert "WiSE-FT" in (out / "README.md").read_text(encoding="utf-8")

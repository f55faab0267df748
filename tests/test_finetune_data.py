"""Fine-tuning data pipeline: real clips -> features, decoder inputs and labels; packing; collator; checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from whisper_zh.training import checkpoints as ckpt
from whisper_zh.training.features import (
    PACK_GAP_SECONDS,
    Collator,
    ExampleBuilder,
    Featurizer,
    Item,
    plan_windows,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "aishell1-sample-S0150"
needs_data = pytest.mark.skipif(
    not (DATA / "manifest.jsonl").is_file(), reason=f"shared clips not found at {DATA}"
)




@needs_data
def test_single_example_prefix_labels_and_simplified_target(base_tokenizer, training_clips):
    builder = ExampleBuilder(base_tokenizer, Featurizer())
    item = Item("t1", training_clips[0].audio, " 這是測試，好嗎？ ")  # Traditional with punctuation
    example = builder.single(item)
    ids = base_tokenizer.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|zh|>", "<|transcribe|>", "<|notimestamps|>"]
    )
    assert example.decoder_input_ids[:4] == ids
    assert example.labels[:3] == [-100, -100, -100]  # forced prefix carries no loss
    assert example.labels[-1] == base_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    # labels are the decoder inputs shifted by one
    assert example.labels[3:-1] == example.decoder_input_ids[4:]
    assert base_tokenizer.decode(example.labels[3:-1]) == "这是测试，好吗？"


@needs_data
def test_faster_whisper_features_pad_frames_not_audio(training_clips):
    item = training_clips[0]
    fw = Featurizer("faster-whisper")(np.asarray(load_audio_array(item)))
    hf = Featurizer("transformers")(np.asarray(load_audio_array(item)))
    assert fw.shape == hf.shape == (80, 3000)
    content = int(item.duration * 100)
    # faster-whisper style: log-mel of the clip, then zero frames; Transformers: log-mel of 30 s of audio
    assert np.all(fw[:, content + 1 :] == 0.0)
    assert np.abs(fw[:, : content - 1]).sum(axis=0).min() > 0
    assert not np.all(hf[:, content + 1 :] == 0.0)
    # the speech part agrees closely between the two pipelines (same filters, same normalisation max)
    assert np.abs(fw[:, 10 : content - 10] - hf[:, 10 : content - 10]).mean() < 0.05


def load_audio_array(item):
    from whisper_zh.audio import load_audio

    return load_audio(item.audio)


@needs_data
def test_packed_example_marks_each_utterance_with_timestamps(base_tokenizer, training_clips):
    builder = ExampleBuilder(base_tokenizer, Featurizer())
    example = builder.packed(training_clips[:2])
    t0 = base_tokenizer.convert_tokens_to_ids("<|0.00|>")
    stamps = [i - t0 for i in example.decoder_input_ids if i >= t0]
    d0, d1 = (len(load_audio_array(c)) / 16000 for c in training_clips[:2])
    expected = [0.0, d0, d0 + PACK_GAP_SECONDS, d0 + PACK_GAP_SECONDS + d1]
    assert stamps == [round(s / 0.02) for s in expected]
    prefix = base_tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|zh|>", "<|transcribe|>"])
    assert example.decoder_input_ids[:3] == prefix and example.labels[:2] == [-100, -100]
    text = base_tokenizer.decode([i for i in example.labels if i >= 0 and i < t0], skip_special_tokens=True)
    assert text == training_clips[0].text + training_clips[1].text
    assert example.n_utterances == 2
    # the window holds both clips' audio: frames after their end (+gap) are padding
    end_frame = int((d0 + PACK_GAP_SECONDS + d1) * 100)
    assert np.all(example.input_features[:, end_frame + 1 :] == 0.0)
    assert np.abs(example.input_features[:, end_frame - 50 : end_frame - 1]).sum() > 0


def test_plan_windows_packs_within_limits_and_is_deterministic():
    rng = np.random.default_rng(0)
    durations = list(rng.uniform(1.5, 9.0, size=60))
    tokens = [20] * 60
    single = plan_windows(durations, tokens, packing=False, max_seconds=29, seed=1, epoch=0)
    assert sorted(i for w in single for i in w) == list(range(60)) and all(len(w) == 1 for w in single)
    packed = plan_windows(durations, tokens, packing=True, max_seconds=29, seed=1, epoch=0)
    assert sorted(i for w in packed for i in w) == list(range(60))
    for window in packed:
        assert sum(durations[i] for i in window) + PACK_GAP_SECONDS * (len(window) - 1) <= 29
    assert len(packed) < 60 / 3  # mean 5.25 s clips: at least 3 per window on average
    assert packed == plan_windows(durations, tokens, packing=True, max_seconds=29, seed=1, epoch=0)
    assert packed != plan_windows(durations, tokens, packing=True, max_seconds=29, seed=1, epoch=1)
    # the 448-token decoder limit also closes windows
    long_text = plan_windows([1.0] * 10, [150] * 10, packing=True, max_seconds=29, seed=0, epoch=0)
    assert max(len(w) for w in long_text) == 2


@needs_data
def test_collator_pads_inputs_with_eot_and_labels_with_ignore(base_tokenizer, training_clips):
    builder = ExampleBuilder(base_tokenizer, Featurizer())
    a, b = builder.single(training_clips[0]), builder.single(Item("short", training_clips[1].audio, "好"))
    batch = Collator(base_tokenizer.pad_token_id)([a, b])
    assert tuple(batch["input_features"].shape) == (2, 80, 3000)
    width = len(a.labels)
    assert tuple(batch["labels"].shape) == (2, width)
    assert batch["labels"][1, len(b.labels) :].tolist() == [-100] * (width - len(b.labels))
    assert batch["decoder_input_ids"][1, len(b.decoder_input_ids) :].tolist() == [base_tokenizer.pad_token_id] * (
        width - len(b.decoder_input_ids)
    )
    assert batch["n_utterances"] == 2


# ---------------------------------------------------------------------------------------------- checkpoints


def _write(files: dict[str, bytes]):
    def writer(tmp: Path) -> None:
        for name, data in files.items():
            (tmp / name).write_bytes(data)

    return writer


def test_checkpoint_complete_only_with_marker_and_sizes(tmp_path):
    path = ckpt.write_checkpoint(tmp_path, 3, _write({"a.bin": b"x" * 100, "state.json": b"{}"}))
    assert path.name == "step-000003" and ckpt.is_complete(path)
    assert ckpt.latest_complete(tmp_path) == path
    (path / "a.bin").write_bytes(b"x" * 10)  # torn file
    assert not ckpt.is_complete(path) and ckpt.latest_complete(tmp_path) is None


def test_kill_during_checkpoint_write_leaves_previous_as_latest(tmp_path):
    good = ckpt.write_checkpoint(tmp_path, 1, _write({"a.bin": b"1" * 1000}))
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from whisper_zh.training import checkpoints as ckpt
        def writer(tmp):
            (tmp / "a.bin").write_bytes(b"2" * 500)
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the save
        ckpt.write_checkpoint(Path({str(tmp_path)!r}), 2, writer)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "step-000002").exists()
    assert ckpt.latest_complete(tmp_path) == good
    # a step directory without its marker (killed between rename and marker) does not count either
    (tmp_path / "step-000005").mkdir()
    (tmp_path / "step-000005" / "a.bin").write_bytes(b"5")
    assert ckpt.latest_complete(tmp_path) == good
    ckpt.prune(tmp_path, keep_last=1)
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
    assert not (tmp_path / "step-000005").exists() and good.exists()


def test_prune_keeps_last_and_protected(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.write_checkpoint(tmp_path, step, _write({"w": bytes([step])}))
    ckpt.prune(tmp_path, keep_last=2, protect=(ckpt.checkpoint_dir(tmp_path, 1),))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000001", "step-000003", "step-000004"]


def test_atomic_write_text_replaces_whole_file(tmp_path):
    target = tmp_path / "f.txt"
    ckpt.atomic_write_text(target, "old")
    ckpt.atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["f.txt"]

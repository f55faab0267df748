"""`whisper-zh doctor`: real clips made bad on purpose, each problem found with its count and example ids."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from whisper_zh.training.doctor import check_environment, estimate_memory_gb, model_shape, run_checks
from whisper_zh.training.features import load_utterances

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "aishell1-sample-S0150"
pytestmark = pytest.mark.skipif(
    not (DATA / "manifest.jsonl").is_file(), reason=f"shared clips not found at {DATA}"
)


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("doctor")
    items = load_utterances(DATA / "manifest.jsonl")
    good = items[200:208]
    audio, rate = sf.read(good[0].audio, dtype="float32")
    sf.write(root / "short.wav", audio[: int(0.2 * rate)], rate)
    sf.write(root / "long.wav", np.tile(audio, int(31 / (len(audio) / rate)) + 1), rate)
    (root / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 10)
    sf.write(root / "silent.wav", np.zeros(2 * rate, np.float32), rate)
    rows = [{"id": it.id, "audio": it.audio, "text": it.text} for it in good]
    rows += [
        {"id": "short", "audio": str(root / "short.wav"), "text": "好"},
        {"id": "long", "audio": str(root / "long.wav"), "text": good[0].text * 7},
        {"id": "broken", "audio": str(root / "broken.wav"), "text": "坏的"},
        {"id": "trad", "audio": items[210].audio, "text": "這個問題還沒有解決"},
        {"id": "dup_audio", "audio": good[1].audio, "text": "完全不同的句子"},
        {"id": "dup_text", "audio": items[211].audio, "text": good[2].text},
        {
            "id": "fast",
            "audio": items[212].audio,
            "text": "这是一段明显太长的转写文本它和这段音频根本对不上说话速度快得不可能" * 3,
        },
        {"id": "private", "audio": items[213].audio, "text": "私用区字符\ue000在这里"},
        {"id": "empty", "audio": items[214].audio, "text": "。，"},
        {"id": "silent", "audio": str(root / "silent.wav"), "text": "安静"},
        {"id": "gone", "audio": str(root / "gone.wav"), "text": "不见了"},
        {"id": "blank", "audio": items[215].audio, "text": ""},
        {"id": "english", "audio": items[216].audio, "text": "the quick brown fox jumps"},
        {"id": "kana", "audio": items[217].audio, "text": "これはペンです"},
    ]
    train = root / "train.jsonl"
    train.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    evalset = root / "eval.jsonl"
    eval_rows = [
        {"id": "eval_leak", "audio": good[3].audio, "text": good[3].text},
        {"id": items[400].id, "audio": items[400].audio, "text": items[400].text},
    ]
    evalset.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in eval_rows) + "\n", encoding="utf-8"
    )
    return train, evalset, good


@pytest.fixture(scope="module")
def report(bad_data):
    train, evalset, _ = bad_data
    return run_checks(train=str(train), eval=str(evalset), model="base")


def examples(report, code):
    finding = report.find(code)
    assert finding is not None, f"{code} not reported: {[f.code for f in report.findings]}"
    return finding


def test_audio_and_duration_problems(report):
    assert examples(report, "train:undecodable_audio").examples == ["broken"]
    assert examples(report, "train:undecodable_audio").level == "error"
    short = examples(report, "train:too_short")
    assert short.count == 1 and short.examples[0].startswith("short (0.20 s)")
    long = examples(report, "train:too_long")
    assert long.level == "error" and long.examples[0].startswith("long (")


def test_each_reason_is_named_and_counted_on_its_own(report):
    # one missing file and one empty transcript are two findings, not "2 rows (empty reference text)"
    missing = examples(report, "train:unusable_rows:missing_audio")
    assert missing.count == 1 and missing.examples[0].startswith("gone") and "audio file not found" in missing.message
    blank = examples(report, "train:unusable_rows:empty_text")
    assert blank.count == 1 and blank.examples[0].startswith("blank") and "empty reference text" in blank.message
    # a silent clip is not "audio that does not decode"
    silent = examples(report, "train:silent_audio")
    assert silent.examples == ["silent"] and "silent" in silent.message
    undecodable = [f for f in report.findings if f.code == "train:undecodable_audio"]
    assert [f.examples for f in undecodable] == [["broken"]]


def test_wrong_language_transcripts_are_flagged(report):
    assert examples(report, "train:no_chinese").examples == ["english ('the quick brown fox ')"]
    assert examples(report, "train:japanese_kana").examples == ["kana (これはペ)"]
    assert examples(report, "train:japanese_kana").level == "warning"


def test_speaking_rate_is_judged_against_the_data_itself():
    from whisper_zh.training.doctor import check_data

    items = load_utterances(DATA / "manifest.jsonl")
    window = [it for it in items if "W0227" <= it.id[-5:] <= "W0236"]
    assert len(window) == 10
    # W0230 (3.3 characters/s) among its neighbours was flagged on every run: it is ordinary read speech
    assert not [f.code for f in check_data(window) if f.code.endswith("speaking_rate")]
    longest = max(window, key=lambda it: it.duration)
    mispaired = dataclasses.replace(longest, id="mispaired", text="好的")  # a transcript from another clip
    [rate] = [f for f in check_data([*window, mispaired]) if f.code.endswith("speaking_rate")]
    assert rate.examples == [f"mispaired ({2 / longest.duration:.1f}/s)"]


def test_transcript_problems(report):
    assert examples(report, "train:empty_transcript").examples == ["empty"]
    assert examples(report, "train:unknown_characters").examples[0].startswith("private")
    trad = examples(report, "train:traditional_characters")
    assert trad.count == 1 and trad.examples[0].startswith("trad (這個問題")
    assert trad.level == "warning"


def test_duplicates_overlap_and_speaking_rate(report, bad_data):
    _, _, good = bad_data
    assert examples(report, "train:duplicate_audio").examples == [f"{good[1].id}=dup_audio"]
    assert examples(report, "train:duplicate_text").examples == [f"{good[2].id}=dup_text"]
    leak = examples(report, "overlap_audio")
    assert leak.level == "error" and leak.examples == [f"eval_leak={good[3].id}"]
    assert examples(report, "overlap_text").count == 1
    rate = examples(report, "train:speaking_rate")
    assert rate.examples[0].startswith("fast (")
    assert "wrong audio" in rate.message


def test_clean_data_has_no_errors(tmp_path):
    from whisper_zh.training.features import write_manifest

    train = write_manifest(load_utterances(DATA / "manifest.jsonl")[100:160], tmp_path / "clean.jsonl")
    rep = run_checks(train=str(train), model="base")
    assert rep.summary["train"]["utterances"] == 60
    assert [f.code for f in rep.errors] == []


def test_environment_versions_known_bug_and_memory():
    findings = {f.code: f for f in check_environment(model="base")}
    assert "env:known_bug_grad_accum" in findings
    assert "accepts_loss_kwargs = False" in findings["env:known_bug_grad_accum"].message
    assert findings["env:memory"].level == "info"
    # estimate against the measured peak RSS (stack-notes: batch 2 fp32, tiny 2.2 GB, base 2.5-2.8, small 5.7-6.7)
    assert 2.0 <= estimate_memory_gb(model_shape("tiny"), batch=2, precision="fp32", lora=False) <= 3.5
    assert 2.5 <= estimate_memory_gb(model_shape("base"), batch=2, precision="fp32", lora=False) <= 4.0
    assert 5.7 <= estimate_memory_gb(model_shape("small"), batch=2, precision="fp32", lora=False) <= 9.0
    large = estimate_memory_gb(model_shape("large-v3"), batch=2, precision="fp32", lora=False)
    # LoRA saves the gradients and AdamW state of the frozen weights (~16 of 16 bytes per parameter), not activations
    assert large - estimate_memory_gb(model_shape("large-v3"), batch=2, precision="fp32", lora=True) > 10


def test_memory_shortfall_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "whisper", "d_model": 20480, "encoder_layers": 64, "decoder_layers": 64})
    )
    finding = next(f for f in check_environment(model=str(tmp_path)) if f.code == "env:memory")
    assert finding.level == "error" and "Lower --batch-size" in finding.message


def _parser():
    from whisper_zh.commands import doctor, finetune

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    doctor.add_parser(sub)
    finetune.add_parser(sub)
    return parser


def test_doctor_cli_exit_status_and_finetune_refuses(bad_data, capsys, tmp_path):
    train, evalset, _ = bad_data
    args = _parser().parse_args(["doctor", "--train", str(train), "--eval", str(evalset), "--json"])
    assert args.func(args) == 1
    printed = json.loads(capsys.readouterr().out)
    assert any(f["code"] == "train:undecodable_audio" for f in printed["findings"])
    args = _parser().parse_args(
        ["finetune", "--train", str(train), "--eval", str(evalset), "-o", str(tmp_path / "o")]
    )
    assert args.func(args) == 1
    assert "refusing to train" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

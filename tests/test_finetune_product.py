"""The trainer scores checkpoints through the product's one decoding path, and an export of unchanged weights is
the base to the character.

One real run on the embedded base: learning rate 1e-12 for one step, so the best checkpoint is the starting
model (step 0) and the export holds the base's weights. Then ``whisper-zh evaluate`` runs on the export and on
the base, over the trainer's own eval clips.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from whisper_zh.cli import main
from whisper_zh.training.features import load_utterances, write_manifest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "aishell1-sample-S0150"
pytestmark = pytest.mark.skipif(not (DATA / "manifest.jsonl").is_file(), reason=f"shared clips not found at {DATA}")


@pytest.fixture(scope="module")
def unchanged_run(tmp_path_factory):
    """(output dir, FinetuneResult, eval manifest), with a private model cache that reuses the embedded base."""
    from whisper_zh.models import cache_dir, embedded_model_dir
    from whisper_zh.training.config import build_config
    from whisper_zh.training.trainer import finetune

    root = tmp_path_factory.mktemp("unchanged")
    embedded = embedded_model_dir()
    home = root / "home"
    (home / "models").mkdir(parents=True)
    # conversions of the export land in this test's cache, not the user's; the embedded base is linked in
    for name in (embedded.name, f"{embedded.name}-hf"):
        if (cache_dir() / "models" / name).is_dir():
            os.symlink(cache_dir() / "models" / name, home / "models" / name)
    items = load_utterances(DATA / "manifest.jsonl")
    train = write_manifest(items[300:302], root / "train.jsonl")
    evalset = write_manifest([items[i] for i in (130, 250, 330, 460)], root / "eval.jsonl")
    out = root / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WHISPER_ZH_HOME", str(home))
        config = build_config(overrides=dict(
            model="base", train=str(train), eval=str(evalset), output_dir=str(out), per_device_train_batch_size=1,
            gradient_accumulation_steps=1, max_steps=1, warmup_steps=0, eval_steps=1, save_steps=1,
            learning_rate=1e-12, lr_scheduler="constant", precision="fp32", skip_doctor=True, export_ct2=True))
        result = finetune(config, progress=False)
        reports = {}
        for name, model in (("export", str(out)), ("base", "base")):
            assert main(["evaluate", "--model", model, "--data", str(evalset), "--output-dir",
                         str(root / name), "--quiet", "--resamples", "200"]) == 0
            report = json.loads((root / name / "report.json").read_text(encoding="utf-8"))
            rows = [json.loads(line) for line in (root / name / "predictions.jsonl").read_text(encoding="utf-8")
                    .splitlines()]
            reports[name] = (report, rows)
    return out, result, reports


def test_trainer_eval_cer_is_what_evaluate_reports(unchanged_run):
    out, result, reports = unchanged_run
    evals = {row["step"]: row for row in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())
             if "cer" in row}
    assert result.best_step == 0 and set(evals) == {0, 1}
    report, _rows = reports["export"]
    # the selection metric is the number-normalised CER; the plain one is logged beside it
    assert evals[0]["cer"] == pytest.approx(report["metrics"]["numbers"]["cer"]["rate"], abs=1e-12)
    assert evals[0]["cer_plain"] == pytest.approx(report["metrics"]["plain"]["cer"]["rate"], abs=1e-12)
    assert evals[0]["eval_utterances"] == report["data"]["scored"] == 4
    model = report["model"]
    assert (evals[0]["engine"], evals[0]["storage_type"], evals[0]["compute_type"]) == (
        model["engine"], model["storage_type"], model["compute_type"])
    assert model["engine"] == "ctranslate2" and model["storage_type"] == "float16"
    assert 0 < evals[0]["cer"] < 0.5  # real speech through the real decoder, not a degenerate score


def test_export_of_unchanged_weights_evaluates_as_the_base_to_the_character(unchanged_run):
    from whisper_zh.convert import ct2_storage_type, read_ct2_model_bin
    from whisper_zh.models import embedded_model_dir

    out, _result, reports = unchanged_run
    (export, export_rows), (base, base_rows) = reports["export"], reports["base"]
    assert [r["hypothesis"] for r in export_rows] == [r["hypothesis"] for r in base_rows]
    assert export["metrics"] == base["metrics"]
    for report in (export, base):  # the report says how the weights were stored and what ran (int8 weights)
        assert report["model"]["storage_type"] == "float16" and report["model"]["compute_type"].startswith("int8")
    # --export-ct2 stores float16, as the embedded model: the same tensors, bit for bit
    copy = out / "ctranslate2-float16"
    assert ct2_storage_type(copy) == "float16"
    mine = read_ct2_model_bin(copy / "model.bin").variables
    theirs = read_ct2_model_bin(embedded_model_dir() / "model.bin").variables
    assert set(mine) == set(theirs)
    assert all(np.array_equal(mine[k], theirs[k]) for k in theirs)


# ---------------------------------------------------------------------------------------------- tiny random model
# The same two checks on a tiny random Whisper, fast enough for every run of the suite. Greedy without the
# temperature fallback on both sides: a random model sends every window through the fallback, whose sampling is
# not seeded, so only the deterministic options give a comparison to the character. The options are the product's
# (`DecodeOptions()`: packing, the Mandarin prompt, int8 CTranslate2) with those two changes, on both sides.


@pytest.fixture(scope="module")
def tiny_unchanged(tmp_path_factory):
    """(tiny model dir, output dir, FinetuneResult, {name: Evaluation}) for a run whose export is step 0."""
    from tests.tiny_whisper import build_tiny_random_whisper

    from whisper_zh.data import load_source
    from whisper_zh.evaluation import evaluate
    from whisper_zh.training.checkpoint_eval import decode_options
    from whisper_zh.training.config import build_config
    from whisper_zh.training.trainer import finetune
    from whisper_zh.transcriber import Transcriber

    root = tmp_path_factory.mktemp("tiny-unchanged")
    tiny = build_tiny_random_whisper(root / "tiny", seed=0, d_model=32, layers=1, heads=2, ffn_dim=64)
    items = load_utterances(DATA / "manifest.jsonl")
    train = write_manifest(items[201:203], root / "train.jsonl")
    evalset = write_manifest([items[i] for i in (130, 450)], root / "eval.jsonl")
    out = root / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WHISPER_ZH_HOME", str(root / "home"))  # conversions land in this test's cache
        config = build_config(overrides=dict(
            model=str(tiny), train=str(train), eval=str(evalset), output_dir=str(out), per_device_train_batch_size=1,
            gradient_accumulation_steps=1, max_steps=1, warmup_steps=0, eval_steps=1, save_steps=1,
            learning_rate=1e-12, lr_scheduler="constant", precision="fp32", skip_doctor=True, export_ct2=True,
            num_beams=1, eval_fallback=False, generation_max_length=16))
        result = finetune(config, progress=False)
        options = decode_options("zh", "transcribe", "simplified", beam_size=1, max_new_tokens=16, fallback=False)
        evaluations = {name: evaluate(Transcriber(model), load_source(str(evalset)), options, n_resamples=200,
                                      progress=False)
                       for name, model in (("export", str(out)), ("start", str(tiny)))}
    return tiny, out, result, evaluations


def test_tiny_trainer_eval_cer_is_what_evaluate_reports(tiny_unchanged):
    _tiny, out, result, evaluations = tiny_unchanged
    evals = {row["step"]: row for row in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())
             if "cer" in row}
    assert result.best_step == 0 and set(evals) == {0, 1}
    report = evaluations["export"].report
    for step in (0, 1):  # lr 1e-12 leaves float32 weights unchanged: both evals are of the starting weights
        assert evals[step]["cer"] == pytest.approx(report["metrics"]["numbers"]["cer"]["rate"], abs=1e-12)
        assert evals[step]["cer_plain"] == pytest.approx(report["metrics"]["plain"]["cer"]["rate"], abs=1e-12)
    assert evals[0]["eval_utterances"] == report["data"]["scored"] == 2
    assert (evals[0]["engine"], evals[0]["storage_type"], evals[0]["compute_type"]) == (
        "ctranslate2", "float16", report["model"]["compute_type"])
    assert evals[0]["cer"] > 0  # a random model: real errors, counted


def test_tiny_export_of_unchanged_weights_evaluates_as_the_start_to_the_character(tiny_unchanged):
    from whisper_zh.convert import ct2_storage_type, read_ct2_model_bin, transformers_to_ct2_dir

    tiny, out, _result, evaluations = tiny_unchanged
    export, start = evaluations["export"], evaluations["start"]
    assert [p["hypothesis"] for p in export.predictions] == [p["hypothesis"] for p in start.predictions]
    assert export.report["metrics"] == start.report["metrics"]
    assert export.report["model"]["storage_type"] == start.report["model"]["storage_type"] == "float16"
    # --export-ct2 stores float16, the same bytes as converting the starting model
    copy = out / "ctranslate2-float16"
    assert ct2_storage_type(copy) == "float16"
    reference = transformers_to_ct2_dir(tiny, out.parent / "start-ct2", quantization="float16")
    mine = read_ct2_model_bin(copy / "model.bin").variables
    theirs = read_ct2_model_bin(reference / "model.bin").variables
    assert set(mine) == set(theirs)
    assert all(np.array_equal(mine[k], theirs[k]) for k in theirs)

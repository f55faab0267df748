"""Fine-tuning configuration: reference defaults, recipes, config files and CLI overrides."""

from __future__ import annotations

import dataclasses

import pytest

from whisper_zh.training.config import (
    ConfigError,
    FinetuneConfig,
    apply_overrides,
    available_recipes,
    build_config,
    parse_set_options,
    read_config_file,
    save_config,
)


def test_defaults_are_the_reference_recipe():
    config = FinetuneConfig()
    assert (config.learning_rate, config.per_device_train_batch_size, config.gradient_accumulation_steps) == (
        1e-5,
        2,
        16,
    )
    assert config.total_batch_size == 32
    assert config.lr_scheduler == "linear" and config.warmup_steps > 0
    assert config.script == "simplified"


def test_medium_recipe_is_shipped_and_matches_reference():
    assert "whisper-medium-zh-cn" in available_recipes()
    config = build_config(recipe="whisper-medium-zh-cn")
    assert config.model == "medium"
    assert config.learning_rate == 1e-5
    assert config.per_device_train_batch_size == 2
    assert config.gradient_accumulation_steps == 16
    assert (config.adam_beta1, config.adam_beta2, config.adam_epsilon) == (0.9, 0.999, 1e-8)


def test_every_shipped_recipe_loads_and_validates():
    for name in available_recipes():
        build_config(recipe=name)


def test_precedence_recipe_then_file_then_flags(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(
        "learning_rate: 3.0e-5\nmax_steps: 7\nlora:\n  enabled: true\n  r: 8\n", encoding="utf-8"
    )
    config = build_config(recipe="whisper-medium-zh-cn", config_file=yaml_file, overrides={"max_steps": 9})
    assert config.model == "medium"  # from the recipe
    assert config.learning_rate == 3e-5  # file beats recipe
    assert config.max_steps == 9  # flag beats file
    assert config.lora.enabled and config.lora.r == 8


def test_toml_config_and_set_overrides(tmp_path):
    toml_file = tmp_path / "c.toml"
    toml_file.write_text(
        'model = "tiny"\ngradient_accumulation_steps = 4\n[diagnostics]\nflat_window = 3\n', encoding="utf-8"
    )
    sets = parse_set_options(["lora.r=4", "packing=true", "max_eval_samples=12", "lr_scheduler=cosine"])
    config = build_config(config_file=toml_file, overrides=sets)
    assert config.model == "tiny" and config.gradient_accumulation_steps == 4
    assert config.diagnostics.flat_window == 3
    assert config.lora.r == 4 and config.packing is True and config.max_eval_samples == 12
    assert config.lr_scheduler == "cosine"


def test_saved_config_reads_back_identically(tmp_path):
    config = build_config(overrides={"learning_rate": 2e-5, "lora.enabled": True, "packing": True})
    save_config(config, tmp_path / "run.yaml")
    again = build_config(config_file=tmp_path / "run.yaml")
    assert again == config


@pytest.mark.parametrize(
    "values, message",
    [
        ({"learnig_rate": 1}, "unknown setting 'learnig_rate'"),
        ({"max_steps": "many"}, "not a valid int"),
        ({"learning_rate": -1.0}, "learning_rate must be > 0"),
        ({"precision": "fp8"}, "precision 'fp8'"),
        ({"lora.rank": 3}, "unknown setting 'lora.rank'"),
    ],
)
def test_bad_settings_give_one_line_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(FinetuneConfig(), values).validate()


def test_unknown_recipe_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown recipe 'nope'.*whisper-medium-zh-cn"):
        build_config(recipe="nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: [1, \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot parse"):
        read_config_file(bad)
    with pytest.raises(ConfigError, match="--set x: expected KEY=VALUE"):
        parse_set_options(["x"])


def test_cli_print_config_applies_flags(capsys):
    import argparse

    from whisper_zh.commands import finetune

    parser = argparse.ArgumentParser()
    finetune.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        [
            "finetune",
            "--recipe",
            "whisper-medium-zh-cn",
            "--lr",
            "2e-5",
            "--batch-size",
            "4",
            "--lora",
            "--set",
            "warmup_steps=10",
            "--print-config",
        ]
    )
    assert args.func(args) == 0
    import yaml

    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["learning_rate"] == 2e-5
    assert printed["per_device_train_batch_size"] == 4
    assert printed["gradient_accumulation_steps"] == 16
    assert printed["warmup_steps"] == 10
    assert printed["lora"]["enabled"] is True


@pytest.mark.parametrize("kind", ["linear", "constant", "cosine"])
def test_scheduler_matches_transformers(kind):
    import torch
    from transformers import get_scheduler

    from whisper_zh.training.trainer import make_scheduler

    hf_kind = "constant_with_warmup" if kind == "constant" else kind
    ours, theirs = [], []
    for schedule, out in ((lambda o: make_scheduler(o, kind, 3, 10), ours),
                          (lambda o: get_scheduler(hf_kind, o, num_warmup_steps=3, num_training_steps=10), theirs)):
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2e-5)
        scheduler = schedule(optimizer)
        for _ in range(10):
            out.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert ours[0] == 0.0 and ours[3] == pytest.approx(2e-5)


def test_settings_that_did_nothing_are_gone_and_old_files_still_load(tmp_path, caplog):
    # min_duration, max_duration, dataloader_workers and optimizer were accepted and never read
    names = {f.name for f in dataclasses.fields(FinetuneConfig)}
    assert not names & {"min_duration", "max_duration", "dataloader_workers", "optimizer"}
    old = tmp_path / "finetune_config.yaml"  # as saved by an earlier version
    old.write_text("learning_rate: 2.0e-5\noptimizer: adamw\ndataloader_workers: 4\nmin_duration: 1.0\n")
    with caplog.at_level("WARNING"):
        config = build_config(config_file=old)
    assert config.learning_rate == 2e-5
    assert "setting 'dataloader_workers' is ignored" in caplog.text and "'optimizer' is ignored" in caplog.text


def test_small_data_recipe_is_the_variant_the_accuracy_bench_measured(tmp_path):
    """The shipped small-data recipe must resolve to the settings bench/finetune_accuracy.py trained and scored
    (bench/RESULTS.md), so that a change to either one is seen here."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "finetune_accuracy.py"
    spec = importlib.util.spec_from_file_location("finetune_accuracy_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    measured = bench.variant_config(bench.SHIPPED_RECIPE, tmp_path, tmp_path / "out", {})
    shipped = build_config(recipe="whisper-base-zh-cn-small-data").to_dict()
    run_only = {"train", "eval", "output_dir", "skip_doctor"}  # where the bench's data and run go
    differ = {k: (v, shipped[k]) for k, v in measured.items() if k not in run_only and shipped[k] != v}
    assert differ == {}
    assert shipped["learning_rate"] == 1e-5


def test_a_folder_that_holds_a_run_is_refused_unless_resume_or_overwrite(tmp_path, capsys):
    """Two runs into one folder mixed their checkpoints and logs (the best checkpoint could be the old run's)."""
    from whisper_zh.cli import main
    from whisper_zh.training.checkpoints import check_output_dir

    out = tmp_path / "run"
    (out / "checkpoints" / "step-000010").mkdir(parents=True)
    (out / "train_log.jsonl").write_text('{"step": 10}\n')
    (out / "model.safetensors").write_bytes(b"old")
    manifest = tmp_path / "none.jsonl"  # never read: the folder is refused first
    argv = ["finetune", "--train", str(manifest), "--eval", str(manifest), "-o", str(out), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds a fine-tuning run (checkpoints, train_log.jsonl, model.safetensors)" in err
    assert "--resume" in err and "--overwrite" in err
    check_output_dir(out, resume=True, overwrite=False)  # continuing it is what --resume is for
    assert (out / "checkpoints" / "step-000010").is_dir()
    check_output_dir(out, resume=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]  # replaced whole by the new export
    check_output_dir(tmp_path / "fresh", resume=False, overwrite=False)

"""Accuracy of fine-tuning the embedded base on one speaker, measured as users will meet it.

Data: ``bench/finetune_data.py`` (run it first) splits the 500 AISHELL-1 S0150 utterances with a fixed seed into
train 350 / dev 50 / test 100, drawn across the whole corpus, and puts the base's punctuation into the train and
dev references. Each variant is one ``whisper-zh finetune`` run (its own process; wall and CPU seconds recorded)
that picks its checkpoint on dev by the product's number-normalised CER. Every model, the base included, is then
scored by ``whisper-zh evaluate --model OUT`` (CTranslate2 int8, default decoding) on:

- the S0150 test set (number-normalised CER first, plain beside it; paired bootstrap against the base);
- other speakers, never trained on: aishell3-30-speakers and dspspeech20-keywords (paired bootstrap of the
  increase over both sets' utterances pooled, and per set);
- punctuation on the test transcripts (sentence-final rate and marks per 100 characters, against the base's);
- long form: the test clips joined end to end (``longform-test.wav``), transcribed whole (VAD, streams,
  timestamps): CER and the segments' timestamps.

Runs and scores are cached under ``--runs``: a variant is trained only when its model is missing, and scored only
when its scores are missing, so the same command rebuilds the table. The winner (the variant with the lowest dev
CER, so the test set never picks it; or the variant named by ``--recipe``, with the dev winner recorded beside it)
is written to ``bench/results/finetune_accuracy.json`` and the table to ``bench/results/finetune_accuracy.md``.

    .venv/bin/python bench/finetune_data.py --cache /work/ft-cache/data
    .venv/bin/python bench/finetune_accuracy.py --data /work/ft-cache/data --runs /work/ft-cache/runs \\
        --variants plain speed specaug
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
OTHER_SETS = {"aishell3": SHARED / "aishell3-30-speakers" / "manifest.jsonl",
              "dspspeech": SHARED / "dspspeech20-keywords" / "manifest.jsonl"}
RESULTS = REPO / "bench" / "results"

# Every variant starts from these settings (whisper-zh finetune config keys); train and eval are filled in.
COMMON: dict[str, Any] = {
    "model": "base", "packing": True, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2,
    "learning_rate": 2e-5, "lr_scheduler": "linear", "warmup_steps": 4, "max_steps": 40, "eval_steps": 8,
    "save_steps": 8, "logging_steps": 4, "precision": "auto", "seed": 42, "skip_doctor": True,
    "save_total_limit": 1, "early_stopping_patience": 2,
}
VARIANTS: dict[str, dict[str, Any]] = {
    # full fine-tuning, prompt-conditioned, punctuated targets, no augmentation: the reference for the others
    "plain": {},
    "speed": {"speed_perturbation": [0.9, 1.0, 1.1]},
    "noise": {"noise_probability": 0.5, "noise_snr_db": [10.0, 30.0]},
    "specaug": {"spec_augment": True},
    "tts": {"train": "{data}/tts-train.jsonl"},
    "bare-targets": {"train": "{data}/train-bare.jsonl"},  # AISHELL's unpunctuated references
    "no-prompt": {"prompt": None},  # windows without the product's prompt
    "lr1e-5": {"learning_rate": 1e-5},
    "lr5e-5": {"learning_rate": 5e-5},
    "encoder-only": {"freeze_decoder": True, "learning_rate": 3e-5},
    "lora": {"lora.enabled": True, "learning_rate": 1e-4},
    # a longer schedule (about 3 epochs of the 350 training utterances), patient early stopping on dev, and the
    # average of the last three evaluated checkpoints exported when it beats the best one on dev
    "long": {"max_steps": 60, "eval_steps": 10, "save_steps": 10, "warmup_steps": 6,
             "early_stopping_patience": 3, "average_last": 3},
    # WiSE-FT: the chosen weights moved halfway back to the base's at export (changes nothing during training,
    # so `--from RUN` can finish it from another run's checkpoints)
    "wise": {"wise_ft_alpha": 0.5},
    # the same recipe with another seed (data order, augmentation draws, prompt dropout): is a result the recipe's?
    "seed2": {"seed": 2},
    "seed3": {"seed": 3},
}

# The variant that recipes/whisper-base-zh-cn-small-data.yaml ships (tests/test_finetune_config.py checks that the
# recipe resolves to it): pass it as --recipe to write its row as the JSON.
SHIPPED_RECIPE = "speed+specaug+long+lr1e-5"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def variant_config(name: str, data: Path, out: Path, extra: dict[str, Any]) -> dict[str, Any]:
    parts = [VARIANTS[part] for part in name.split("+")]  # "speed+specaug" combines two variants
    config = {**COMMON, "train": str(data / "train.jsonl"), "eval": str(data / "dev.jsonl"), "output_dir": str(out)}
    for part in parts:
        config.update({k: v.format(data=data) if isinstance(v, str) else v for k, v in part.items()})
    return {**config, **extra}


def train(name: str, data: Path, runs: Path, extra: dict[str, Any], start_from: str | None = None) -> dict[str, Any]:
    """Train ``name`` with `whisper-zh finetune --config` unless its model exists; returns its run record.
    ``start_from``: a run under ``runs`` whose checkpoints and log a new run starts from (resumed)."""
    import yaml

    out = runs / name
    record_path = out / "run.json"
    if record_path.is_file() and (out / "model.safetensors").is_file():
        return json.loads(record_path.read_text(encoding="utf-8"))
    if start_from and not (out / "checkpoints").is_dir():
        shutil.copytree(runs / start_from / "checkpoints", out / "checkpoints")
        shutil.copyfile(runs / start_from / "train_log.jsonl", out / "train_log.jsonl")
    out.mkdir(parents=True, exist_ok=True)
    config = variant_config(name, data, out, extra)
    (out / "variant.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    command = [sys.executable, "-m", "whisper_zh", "finetune", "--config", str(out / "variant.yaml"), "--no-progress"]
    resumed = (out / "checkpoints").is_dir()  # a run that was stopped: continue it (wall/CPU then cover this part)
    if resumed:
        command.append("--resume")
    print(f"[{name}] training: {' '.join(command)}", flush=True)
    started, cpu = time.perf_counter(), cpu_seconds()
    with open(out / "finetune.log", "a" if resumed else "w", encoding="utf-8") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, check=False)
    if done.returncode:
        sys.exit(f"[{name}] finetune failed ({done.returncode}); see {out / 'finetune.log'}")
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text(encoding="utf-8").splitlines()]
    best = exported_row(rows)
    trained = [r for r in rows if "loss" in r and "event" not in r]
    record = {
        "variant": name, "config": config, "wall_seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(cpu_seconds() - cpu, 1), "train_seconds": round(trained[-1]["elapsed"], 1),
        "steps": trained[-1]["step"], "samples": trained[-1]["samples"], "best_step": best["step"],
        "dev_cer": best["cer"], "dev_cer_plain": best.get("cer_plain"),
        "dev_curve": [(r["step"], r["cer"]) for r in rows if "cer" in r],
        "load_average": os.getloadavg(), "resumed": resumed,
    }
    record_path.write_text(json.dumps(record, indent=1), encoding="utf-8")
    return record


def exported_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The dev evaluation of the weights a run exported: a WiSE-FT interpolation whatever its CER, else the lowest
    CER (an average of checkpoints included; the earliest of equals)."""
    evals = [r for r in rows if "cer" in r]
    interpolated = [r for r in evals if "interpolated" in r]
    return interpolated[-1] if interpolated else min(evals, key=lambda r: (r["cer"], r["step"]))


def exported_label(run: dict[str, Any]) -> str:
    """"step 40", "average of steps 40, 50, 60" or "WiSE-FT 0.5 of step 40", read from the run's train log."""
    from whisper_zh.training.modelcard import weights_kind

    log = Path(run["config"]["output_dir"]) / "train_log.jsonl"
    row = exported_row([json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()])
    kind = weights_kind(row)
    if kind == "interpolated":
        return f"WiSE-FT {row['interpolated']:g} of step {row['step']}"
    if kind == "averaged":
        return "average of steps " + ", ".join(str(step) for step in row["averaged"])
    return f"step {row['step']}"


def evaluate(model: str, data_file: Path, out: Path) -> Path:
    """`whisper-zh evaluate --model MODEL --data DATA` (default decoding) unless its report exists."""
    if not (out / "report.json").is_file():
        command = [sys.executable, "-m", "whisper_zh", "evaluate", "--model", model, "--data", str(data_file),
                   "--output-dir", str(out), "--quiet"]
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
        if done.returncode:
            sys.exit(f"evaluate failed for {model} on {data_file}:\n{done.stderr[-2000:]}")
    return out


def long_form(model: str, data: Path, out: Path) -> dict[str, Any]:
    """Transcribe the joined test clips whole; CER against the joined references, and the segments' times."""
    path = out / "longform.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    from whisper_zh.evaluation import default_scorings
    from whisper_zh.metrics import cer
    from whisper_zh.transcriber import Transcriber

    meta = json.loads((data / "longform-test.json").read_text(encoding="utf-8"))
    reference = "".join(clip["text"] for clip in meta["clips"])
    started = time.perf_counter()
    result = Transcriber(model).transcribe(str(data / "longform-test.wav"))
    seconds = time.perf_counter() - started
    scorings = default_scorings()
    segments = result.segments
    record = {
        "cer": cer([reference], [result.text], normalizer=scorings["numbers"]).rate,
        "cer_plain": cer([reference], [result.text], normalizer=scorings["plain"]).rate,
        "segments": len(segments),
        "timestamps_valid": all(0 <= s.start < s.end <= meta["seconds"] + 0.05 for s in segments)
        and all(a.end <= b.start + 1e-6 for a, b in zip(segments, segments[1:], strict=False)),
        "last_end": segments[-1].end if segments else 0.0, "audio_seconds": meta["seconds"],
        "wall_seconds": round(seconds, 1), "text": result.text,
    }
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, ensure_ascii=False, indent=1), encoding="utf-8")
    return record


def score(model: str, data: Path, out: Path) -> dict[str, Any]:
    """Every measurement of one model (cached in ``out``)."""
    from whisper_zh.data.punctuation import punctuation_rates

    reports = {"test": evaluate(model, data / "test.jsonl", out / "eval-test")}
    for name, manifest in OTHER_SETS.items():
        reports[name] = evaluate(model, manifest, out / f"eval-{name}")
    test = json.loads((reports["test"] / "report.json").read_text(encoding="utf-8"))
    hyps = [json.loads(line).get("hypothesis") or "" for line in
            (reports["test"] / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    rates = punctuation_rates(hyps)
    return {"reports": {k: str(v) for k, v in reports.items()}, "test": test["metrics"],
            "model": test["model"], "punctuation": {"sentence_final": rates.sentence_final,
                                                     "per_100_chars": rates.per_100_chars},
            "long_form": long_form(model, data, out)}


def errors(report_dir: str, scoring: str = "numbers") -> dict[str, tuple[int, int]]:
    rows = [json.loads(line) for line in (Path(report_dir) / "predictions.jsonl").read_text(encoding="utf-8")
            .splitlines()]
    return {r["id"]: (r["scores"][scoring]["errors"], r["scores"][scoring]["ref_len"]) for r in rows if "scores" in r}


def paired(base_dirs: list[str], model_dirs: list[str], scoring: str = "numbers") -> Any:
    """Paired bootstrap (B = the model minus the base) over the utterances of all the given reports pooled."""
    from whisper_zh.metrics import paired_bootstrap

    a: dict[str, tuple[int, int]] = {}
    b: dict[str, tuple[int, int]] = {}
    for base_dir, model_dir in zip(base_dirs, model_dirs, strict=True):
        a.update({f"{base_dir}:{k}": v for k, v in errors(base_dir, scoring).items()})
        b.update({f"{base_dir}:{k}": v for k, v in errors(model_dir, scoring).items()})
    shared = [k for k in a if k in b]
    return paired_bootstrap([a[k][0] for k in shared], [b[k][0] for k in shared], [a[k][1] for k in shared],
                            n_resamples=2000)


def compare(base: dict[str, Any], mine: dict[str, Any]) -> dict[str, Any]:
    """The target quantities of one model against the base."""
    test = paired([base["reports"]["test"]], [mine["reports"]["test"]])
    others = paired([base["reports"][k] for k in OTHER_SETS], [mine["reports"][k] for k in OTHER_SETS])
    per_set = {k: paired([base["reports"][k]], [mine["reports"][k]]) for k in OTHER_SETS}
    retention = min(mine["punctuation"][k] / base["punctuation"][k] for k in ("sentence_final", "per_100_chars")
                    if base["punctuation"][k] > 0)
    return {"test": test, "others": others, "per_set": per_set, "retention": retention}


def pct(value: float) -> str:
    return f"{100 * value:.2f}"


def table(base: dict[str, Any], rows: list[tuple[str, dict, dict, dict]]) -> str:
    """Markdown: one row per model (the base first)."""
    head = ("| model | dev CER (numbers) | test CER numbers [95% CI] | vs base, points [95% CI], p | test CER plain | "
            "other speakers, increase [95% CI] (aishell3; dspspeech) | punctuation retained (final; per 100) | "
            "long form CER (segments) | train min (CPU min) |")
    lines = [head, "|" + "---|" * 9]
    t = base["test"]["numbers"]["cer"]
    lf = base["long_form"]
    lines.append(f"| base | - | {pct(t['rate'])} [{pct(t['ci_low'])}, {pct(t['ci_high'])}] | - | "
                 f"{pct(base['test']['plain']['cer']['rate'])} | - | "
                 f"{base['punctuation']['sentence_final']:.0%}; {base['punctuation']['per_100_chars']:.1f} per 100 | "
                 f"{pct(lf['cer'])} ({lf['segments']}) | - |")
    for name, run, mine, cmp in rows:
        t, d, o = mine["test"]["numbers"]["cer"], cmp["test"], cmp["others"]
        sets = "; ".join(f"{100 * p.delta:+.2f}" for p in cmp["per_set"].values())
        lf = mine["long_form"]
        lines.append(
            f"| {name} ({exported_label(run)}) | {pct(run['dev_cer'])} | {pct(t['rate'])} [{pct(t['ci_low'])}, "
            f"{pct(t['ci_high'])}] | {100 * d.delta:+.2f} [{100 * d.ci_low:+.2f}, {100 * d.ci_high:+.2f}], "
            f"p={d.p_value:.3f} | {pct(mine['test']['plain']['cer']['rate'])} | {100 * o.delta:+.2f} "
            f"[{100 * o.ci_low:+.2f}, {100 * o.ci_high:+.2f}] ({sets}) | {cmp['retention']:.0%} "
            f"({mine['punctuation']['sentence_final']:.0%}; {mine['punctuation']['per_100_chars']:.1f}) | "
            f"{pct(lf['cer'])} ({lf['segments']}) | {run['train_seconds'] / 60:.1f} ({run['cpu_seconds'] / 60:.1f}) |")
    return "\n".join(lines)


def dev_curves(runs: Path) -> str:
    """Markdown: the dev evaluations (number-normalised CER through the product decoder) of every run under
    ``runs``, finished or stopped, read from each run's train_log.jsonl: the measurements that chose the winner."""
    from whisper_zh.training.modelcard import weights_kind

    lines = ["| run | dev CER (numbers) by step | best | training wall s to the last eval (evals excluded; shared machine) |",
             "|---|---|---|---:|"]
    for log in sorted(runs.glob("*/train_log.jsonl")):
        rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
        by_kind: dict[str, list[dict]] = {"step": [], "averaged": [], "interpolated": []}
        for r in rows:
            if "cer" in r:
                by_kind[weights_kind(r)].append(r)
        evals, averaged, interpolated = by_kind["step"], by_kind["averaged"], by_kind["interpolated"]
        if not evals:
            continue
        curve = ", ".join(f"{r['step']}: {pct(r['cer'])}" for r in evals)
        curve += "".join(f"; average of {r['averaged']}: {pct(r['cer'])}" for r in averaged)
        curve += "".join(f"; WiSE-FT {r['interpolated']:g} of {r['step']}: {pct(r['cer'])}" for r in interpolated)
        best = min(evals + averaged, key=lambda r: r["cer"])
        trained = [r["elapsed"] for r in rows if "elapsed" in r and r["step"] <= evals[-1]["step"]]
        lines.append(f"| {log.parent.name} | {curve} | {pct(best['cer'])} | {trained[-1] if trained else 0:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="/work/ft-cache/data", help="bench/finetune_data.py's output")
    parser.add_argument("--runs", default="/work/ft-cache/runs", help="where runs and their scores are kept")
    parser.add_argument("--variants", nargs="+", default=["plain"],
                        help=f"variants ({', '.join(VARIANTS)}; join with + to combine)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="settings for every variant")
    parser.add_argument("--train-only", action="store_true", help="train the missing variants, score nothing")
    parser.add_argument("--recipe", default=None, metavar="VARIANT",
                        help="write this variant's row as the JSON: the recipe the README ships (default: the "
                        "variant with the lowest dev CER)")
    parser.add_argument("--from", dest="start_from", default=None, metavar="RUN",
                        help="start missing variants from a copy of this run's checkpoints and log (resumed): for "
                        "variants that change only what follows training, such as wise")
    args = parser.parse_args()
    data, runs = Path(args.data), Path(args.runs)
    if not (data / "test.jsonl").is_file():
        sys.exit(f"{data}: run bench/finetune_data.py first")
    for name in args.variants:
        unknown = [part for part in name.split("+") if part not in VARIANTS]
        if unknown:
            sys.exit(f"unknown variant {unknown[0]}: choose from {', '.join(VARIANTS)}")
    import yaml

    extra = {key: yaml.safe_load(value) for key, value in (kv.split("=", 1) for kv in args.set)}  # typed, as in YAML
    records = {name: train(name, data, runs, extra, args.start_from) for name in args.variants}
    if args.train_only:
        return
    base = score("base", data, runs / "base")
    rows = []
    for name, run in records.items():
        mine = score(str(runs / name), data, runs / name)
        rows.append((name, run, mine, compare(base, mine)))
        print(f"[{name}] scored", flush=True)
    text = table(base, rows) + "\n\nDev curves of every run under --runs:\n\n" + dev_curves(runs)
    print(text)
    write_results(args, base, rows, text)


def write_results(args: argparse.Namespace, base: dict, rows: list, text: str) -> None:
    """The table as Markdown and the winner (lowest dev CER) as JSON under bench/results/."""
    RESULTS.mkdir(exist_ok=True)
    command = "python bench/finetune_accuracy.py " + " ".join(sys.argv[1:])
    (RESULTS / "finetune_accuracy.md").write_text(f"`{command}`\n\n{text}\n", encoding="utf-8")
    by_dev = min(rows, key=lambda r: r[1]["dev_cer"])
    chosen = [r for r in rows if r[0] == args.recipe] if args.recipe else [by_dev]
    if not chosen:
        sys.exit(f"--recipe {args.recipe}: not among the variants scored")
    name, run, mine, cmp = chosen[0]
    winner = {
        "variant": name,
        "selected_by": "--recipe (the recipe shipped)" if args.recipe else "lowest dev CER",
        "lowest_dev_cer_variant": by_dev[0],
        "base_cer": base["test"]["numbers"]["cer"]["rate"],
        "finetuned_cer": mine["test"]["numbers"]["cer"]["rate"],
        "relative_reduction": 1 - mine["test"]["numbers"]["cer"]["rate"] / base["test"]["numbers"]["cer"]["rate"],
        "p_value": cmp["test"].p_value,
        "test_delta_ci": [cmp["test"].ci_low, cmp["test"].ci_high],
        "other_speakers_delta_ci_high": 100 * cmp["others"].ci_high,
        "other_speakers_delta": 100 * cmp["others"].delta,
        "other_speakers_per_set_ci_high": {k: 100 * p.ci_high for k, p in cmp["per_set"].items()},
        "punctuation_retention": cmp["retention"],
        "long_form_cer": {"base": base["long_form"]["cer"], "finetuned": mine["long_form"]["cer"]},
        "long_form_segments": mine["long_form"]["segments"],
        "long_form_timestamps_valid": mine["long_form"]["timestamps_valid"],
        "train_minutes": run["train_seconds"] / 60,
        "finetune_wall_minutes": run["wall_seconds"] / 60,
        "finetune_cpu_minutes": run["cpu_seconds"] / 60,
        "dev_cer": run["dev_cer"],
        "model": mine["model"],
        "command": command,
        "finetune_config": run["config"],
    }
    (RESULTS / "finetune_accuracy.json").write_text(json.dumps(winner, ensure_ascii=False, indent=1) + "\n",
                                                    encoding="utf-8")


if __name__ == "__main__":
    main()

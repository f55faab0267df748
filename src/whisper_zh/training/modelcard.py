"""The run's human-facing outputs: ``out/README.md`` (a Hugging Face style model card) and ``out/curves.png``."""

from __future__ import annotations

import json
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from whisper_zh.training.checkpoints import atomic_write_text

FRAMEWORKS = ("whisper-zh", "transformers", "torch", "accelerate", "peft", "tokenizers", "datasets", "ctranslate2",
              "faster-whisper")


def framework_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in FRAMEWORKS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def plot_curves(log_path: Path, png_path: Path) -> Path | None:
    """Train loss and eval CER against steps, from train_log.jsonl. None when there is nothing to plot."""
    rows = _read_log(Path(log_path))
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r and "event" not in r]
    evals = [(r["step"], r["cer"]) for r in rows if "cer" in r]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), color="tab:blue", label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss", color="tab:blue")
    if evals:
        ax2 = ax.twinx()
        steps, cers = zip(*evals, strict=True)
        ax2.plot(steps, [100 * c for c in cers], "o-", color="tab:red", label="eval CER")
        ax2.set_ylabel("eval CER (%)", color="tab:red")
    ax.set_title("whisper-zh finetune")
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(png_path)
    return png_path


def _data_summary(spec: str | None) -> dict[str, Any]:
    from whisper_zh.training.features import load_utterances

    if not spec:
        return {"source": None}
    try:
        items = load_utterances(spec)
    except Exception as exc:  # noqa: BLE001 - a card is still written without the summary
        return {"source": spec, "error": str(exc)}
    seconds = sum(float(it.duration or 0.0) for it in items)
    return {"source": spec, "utterances": len(items), "hours": seconds / 3600}


def _lora_text(lora: Any) -> str:
    if not lora.enabled:
        return "no"
    return f"r={lora.r} alpha={lora.alpha} dropout={lora.dropout:g} on {', '.join(lora.target_modules)} (merged on export)"


def weights_kind(row: dict) -> str:
    """What weights a log row (or a result's fields) describes: a training step's, an average's, an interpolation's."""
    if row.get("interpolated"):
        return "interpolated"
    return "averaged" if row.get("averaged") else "step"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def write_model_card(config: Any, result: Any, out_dir: Path, *, exported_step: int, command: str | None) -> Path:
    """Write ``out_dir/README.md``: base model, data, hyperparameters, per-eval results, versions, command."""
    rows = _read_log(Path(out_dir) / "train_log.jsonl")
    evals = [r for r in rows if "cer" in r]
    wanted = weights_kind({k: getattr(result, k, None) for k in ("averaged", "interpolated")})
    final = next((r for r in reversed(evals) if r["step"] == exported_step and weights_kind(r) == wanted),
                 evals[-1] if evals else None)
    lines = _summary(config, result, out_dir, exported_step, final)
    lines += _data_section(config, out_dir)
    lines += _hyperparameters(config, result)
    lines += _results(rows, evals)
    lines += ["", "## Framework versions", ""]
    lines += [f"- {name}: {version}" for name, version in framework_versions().items()]
    cmd = command or " ".join(shlex.quote(a) for a in sys.argv)
    lines += [
        "",
        "## Reproduce",
        "",
        "```bash",
        cmd,
        "```",
        "",
        "The resolved configuration is in `finetune_config.yaml` (`whisper-zh finetune --config "
        "finetune_config.yaml` runs it again); the per-step log is `train_log.jsonl`, plotted in `curves.png`.",
        "",
    ]
    path = Path(out_dir) / "README.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _summary(config: Any, result: Any, out_dir: Path, exported_step: int, final: dict | None) -> list[str]:
    lines = [
        "---",
        "language: zh",
        "license: mit",
        f"base_model: {config.model}",
        "tags: [whisper, automatic-speech-recognition, zh-CN, whisper-zh]",
        "metrics: [cer]",
        "---",
        "",
        f"# {Path(out_dir).resolve().name}",
        "",
        f"This model is a fine-tuned version of `{config.model}` for Mandarin Chinese (zh-CN) made with whisper-zh.",
        f"Exported checkpoint: step {exported_step} (the best eval CER)"
        + (f", the average of the weights of steps {', '.join(map(str, result.averaged))}" if getattr(
            result, "averaged", None) else "")
        + (f", interpolated with the starting model (WiSE-FT): {result.interpolated:g} of the fine-tuned weights, "
           f"{1 - result.interpolated:g} of the starting ones." if getattr(result, "interpolated", None) else "."),
        "",
    ]
    if exported_step == 0:
        lines += ["**No evaluation improved on the starting model, so the exported weights are the starting "
                  "model's.** Check `train_log.jsonl` for diagnostics (learning rate, data).", ""]
    if final:
        ci = final.get("cer_ci") or [None, None]
        lines += [
            f"- **CER (numbers normalised): {_pct(final['cer'])} %** (95 % bootstrap CI {_pct(ci[0])}–{_pct(ci[1])} %, "
            f"{final.get('eval_utterances', '?')} utterances); plain CER {_pct(final.get('cer_plain'))} %",
            f"- CER before fine-tuning: {_pct(result.initial_cer)} %",
            f"- WER on jieba-segmented words: {_pct(final.get('wer_segmented'))} %",
            f"- Sentence-final punctuation on {_pct(final.get('punctuation_final'))} % of the eval transcripts",
            "",
        ]
    return lines + ["## Usage", "", "```bash", f"whisper-zh transcribe --model {out_dir} audio.wav", "```", ""]


def _data_section(config: Any, out_dir: Path) -> list[str]:
    lines = ["## Data", "", "| split | source | utterances | hours |", "|---|---|---|---|"]
    for name, info in (("train", _data_summary(config.train)), ("eval", _data_summary(config.eval))):
        hours = f"{info['hours']:.3f}" if "hours" in info else "?"
        lines.append(f"| {name} | `{info.get('source')}` | {info.get('utterances', '?')} | {hours} |")
    prompt = f"`<|startofprev|>{config.prompt}` before it" if config.prompt else "no prompt"
    return lines + [
        "",
        "Targets: converted to Simplified characters, punctuation kept; decoder prefix "
        f"`<|startoftranscript|><|zh|><|transcribe|><|notimestamps|>` with {prompt}"
        + (f" (dropped on {config.prompt_dropout:.0%} of the windows)" if config.prompt else "")
        + (f"; {config.pack_timestamps:.0%} of the packed windows use timestamp tokens instead of "
           "`<|notimestamps|>`." if config.packing else "."),
        "CER is what `whisper-zh evaluate --model OUT` reports: the weights converted to CTranslate2 (float16, int8 "
        "at load), decoded with the product's default options, scored after whisper-zh's normaliser (width, script, "
        "numbers, punctuation, whitespace).",
        "",
    ]


def _hyperparameters(config: Any, result: Any) -> list[str]:
    world = int(__import__("os").environ.get("WORLD_SIZE", "1"))
    return [
        "## Training hyperparameters",
        "",
        f"- learning_rate: {config.learning_rate:g}",
        f"- per_device_train_batch_size: {config.per_device_train_batch_size}",
        f"- gradient_accumulation_steps: {config.gradient_accumulation_steps}",
        f"- num_processes: {world}",
        f"- total_train_batch_size: {config.total_batch_size * world}"
        + (" (windows; each packs several utterances)" if config.packing else ""),
        f"- per_device_eval_batch_size: {config.per_device_eval_batch_size}",
        f"- optimizer: AdamW with betas=({config.adam_beta1},{config.adam_beta2}), epsilon={config.adam_epsilon:g}, "
        f"weight_decay={config.weight_decay:g}",
        f"- lr_scheduler_type: {config.lr_scheduler}",
        f"- lr_scheduler_warmup_steps: {config.warmup_steps}",
        f"- training_steps: {result.final_step} (max_steps {config.max_steps})",
        f"- max_grad_norm: {config.max_grad_norm:g}",
        f"- precision: {config.precision}",
        f"- seed: {config.seed}",
        f"- feature_pipeline: {config.feature_pipeline}",
        f"- packing: {config.packing}",
        f"- prompt: {config.prompt!r} (dropout {config.prompt_dropout:g})",
        f"- spec_augment: {config.spec_augment}",
        f"- speed_perturbation: {list(config.speed_perturbation) or 'no'}",
        f"- noise: {config.noise_probability:.0%} of utterances at {config.noise_snr_db} dB SNR",
        f"- freeze_encoder: {config.freeze_encoder}",
        f"- freeze_decoder: {config.freeze_decoder}",
        f"- lora: {_lora_text(config.lora)}",
        f"- average_last: {config.average_last}",
        f"- wise_ft_alpha: {config.wise_ft_alpha:g}",
        "",
    ]


def _results(rows: list[dict], evals: list[dict]) -> list[str]:
    train_loss = {r["step"]: r["loss"] for r in rows if "loss" in r and "event" not in r}
    lines = [
        "## Training results",
        "",
        "| step | train loss | eval loss | CER numbers (%) | CER plain (%) | segmented WER (%) |",
        "|---|---|---|---|---|---|",
    ]
    for r in evals:
        loss = train_loss.get(r["step"])
        eval_loss = r.get("eval_loss")
        step = {"averaged": f"average of {', '.join(map(str, r.get('averaged') or []))}",
                "interpolated": f"{r['step']}, WiSE-FT {r.get('interpolated')}"}.get(weights_kind(r), r["step"])
        lines.append(f"| {step} | {'-' if loss is None else f'{loss:.4f}'} | "
                     f"{'-' if eval_loss is None else f'{eval_loss:.4f}'} | {_pct(r['cer'])} | "
                     f"{_pct(r.get('cer_plain'))} | {_pct(r.get('wer_segmented'))} |")
    warnings = [r for r in rows if r.get("level") in ("warning", "error")]
    if warnings:
        lines += ["", "## Diagnostics during training", ""]
        lines += [f"- step {r['step']}: {r['message']}" for r in warnings]
    return lines

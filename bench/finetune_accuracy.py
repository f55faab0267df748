"""Accuracy: fine-tune the embedded base on AISHELL-1 S0150 news clips, held-out CER before and after.

Split (documented, no sentence overlap): train on news utterances W0121-W0400, hold out W0401-W0496 (the first
``--heldout`` of them are scored, 40 by default as in the issue's reference point). Each variant is one
``whisper-zh finetune`` run with the reference optimiser (AdamW, lr 1e-5, 32 samples or windows per step)
plus the variant's options; the best eval checkpoint is what counts (early stopping on held-out CER).

    .venv/bin/python bench/finetune_accuracy.py --variants packed --steps 6 --eval-steps 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_speed import news_split  # noqa: E402

VARIANTS = {
    "reference": {},  # every clip padded to 30 s, as the plain recipe
    "packed": {"packing": True},
    "packed-specaug": {"packing": True, "spec_augment": True},
    "packed-freeze-encoder": {"packing": True, "freeze_encoder": True},
    "packed-lora": {"packing": True, "lora.enabled": True, "learning_rate": 1e-4},
}


def product_cer(model: str, held: Path) -> float:
    """CER through the product path (`whisper-zh transcribe --model MODEL`: faster-whisper, default options)."""
    from whisper_zh.metrics import cer
    from whisper_zh.normalize import TextNormalizer
    from whisper_zh.training.features import load_utterances
    from whisper_zh.transcriber import Transcriber

    items = load_utterances(held)
    results = Transcriber(model).transcribe_batch([it.audio for it in items])
    hyps = [r.text if hasattr(r, "text") else "" for r in results]
    return cer([it.text for it in items], hyps, normalizer=TextNormalizer()).rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="base")
    parser.add_argument("--variants", nargs="+", default=["packed"], choices=sorted(VARIANTS))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--eval-steps", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--accum", type=int, default=16)
    parser.add_argument("--heldout", type=int, default=40)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--keep", help="keep the runs in this directory")
    parser.add_argument("--product-only", action="store_true",
                        help="only score the base and the kept runs (--keep) through the product path")
    args = parser.parse_args()

    from whisper_zh.training.config import build_config
    from whisper_zh.training.trainer import finetune

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ft-acc-"))
    root.mkdir(parents=True, exist_ok=True)
    train, held = news_split(root)
    lines = held.read_text(encoding="utf-8").splitlines()[: args.heldout]
    held.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = []
    if args.product_only:
        print(f"product path (faster-whisper, default DecodeOptions), {args.heldout} held-out utterances")
        for name in ["base"] + [v for v in args.variants if (root / v / "model.safetensors").is_file()]:
            model = args.model if name == "base" else str(root / name)
            print(f"{name:24} CER {100 * product_cer(model, held):6.2f}%")
        return
    for name in args.variants:
        overrides = dict(model=args.model, train=str(train), eval=str(held), output_dir=str(root / name),
                         per_device_train_batch_size=args.batch, gradient_accumulation_steps=args.accum,
                         max_steps=args.steps, warmup_steps=0, eval_steps=args.eval_steps,
                         save_steps=args.eval_steps, logging_steps=1, precision=args.precision,
                         lr_scheduler="constant", skip_doctor=True, save_total_limit=1)
        overrides.update(VARIANTS[name])
        start = time.perf_counter()
        result = finetune(build_config(overrides=overrides), progress=True)
        wall = time.perf_counter() - start
        evals = [r for r in result.history if "cer" in r]
        train_rows = [r for r in result.history if "loss" in r and "event" not in r]
        best = min(evals, key=lambda r: r["cer"])
        rows.append({"variant": name, "before": result.initial_cer, "best": best["cer"], "best_step": best["step"],
                     "best_samples": next((r["samples"] for r in train_rows if r["step"] == best["step"]), 0),
                     "curve": [(r["step"], round(r["cer"], 4)) for r in evals],
                     "loss": [(r["step"], round(r["loss"], 3)) for r in train_rows],
                     "samples_per_second": result.samples_per_second, "train_seconds": result.train_seconds,
                     "wall_seconds": wall})
        print(json.dumps(rows[-1]))
    print(f"\nheld-out CER on {args.heldout} utterances (W0401-...), model {args.model}")
    print(f"{'variant':24} {'before':>7} {'best':>7} {'rel.':>6} {'step':>5} {'samples':>8} {'train s':>8}")
    for r in rows:
        rel = (r["before"] - r["best"]) / r["before"] if r["before"] else float("nan")
        print(f"{r['variant']:24} {100 * r['before']:6.2f}% {100 * r['best']:6.2f}% {rel:6.1%} {r['best_step']:5d} "
              f"{r['best_samples']:8d} {r['train_seconds']:8.0f}")
    print(f"\nproduct path (faster-whisper, default DecodeOptions): base CER {100 * product_cer(args.model, held):.2f}%")
    for r in rows:
        print(f"  {r['variant']:22} CER {100 * product_cer(str(root / r['variant']), held):.2f}%")


if __name__ == "__main__":
    main()

"""Accuracy: fine-tune the embedded base on AISHELL-1 S0150 news clips, held-out CER before and after.

Split (documented, no sentence overlap): train on news utterances W0121-W0400, hold out W0401-W0496. The first
``--heldout`` held-out utterances (40 by default, as in the issue's reference point) are the test set, scored only
at the end; the next ``--dev`` of them are the dev set the trainer evaluates to pick its best checkpoint, so the
choice of checkpoint never sees the test set. Each variant is one ``whisper-zh finetune`` run (AdamW, the
variant's learning rate and schedule); its best dev checkpoint is exported and scored on the test set through
the product path (``whisper-zh transcribe`` defaults: CTranslate2 int8, packing, beam 5, the Mandarin prompt).

    .venv/bin/python bench/finetune_accuracy.py --variants packed --steps 6 --eval-steps 2
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
    # base-sized learning rate (Whisper's pre-training lr / 40 is 2.5e-5 for base), linear decay, SpecAugment
    "packed-specaug-lr5e-5": {"packing": True, "spec_augment": True, "learning_rate": 5e-5,
                              "lr_scheduler": "linear", "warmup_steps": 2},
    "packed-lr5e-5": {"packing": True, "learning_rate": 5e-5, "lr_scheduler": "linear", "warmup_steps": 2},
    "packed-specaug-freeze-decoder-lr3e-5": {"packing": True, "spec_augment": True, "freeze_decoder": True,
                                             "learning_rate": 3e-5, "lr_scheduler": "linear", "warmup_steps": 2},
    "packed-specaug-freeze-decoder-lr5e-5": {"packing": True, "spec_augment": True, "freeze_decoder": True,
                                             "learning_rate": 5e-5, "lr_scheduler": "linear", "warmup_steps": 2},
    "packed-freeze-encoder-lr1e-4": {"packing": True, "freeze_encoder": True, "learning_rate": 1e-4,
                                     "lr_scheduler": "linear", "warmup_steps": 2},
}


def transcripts(model: str, items: list, *, prompt: bool = True) -> list[str]:
    """The product path (`whisper-zh transcribe --model MODEL`: faster-whisper, default DecodeOptions)."""
    from whisper_zh.decoding import DecodeOptions
    from whisper_zh.transcriber import Transcriber

    options = DecodeOptions() if prompt else DecodeOptions(initial_prompt=None)
    results = Transcriber(model).transcribe_batch([it.audio for it in items], options)
    return [r.text if hasattr(r, "text") else "" for r in results]


def product_cer(model: str, held: Path) -> float:
    """CER of ``model`` on the manifest ``held`` through the product path."""
    from whisper_zh.metrics import cer
    from whisper_zh.normalize import TextNormalizer
    from whisper_zh.training.features import load_utterances

    items = load_utterances(held)
    return cer([it.text for it in items], transcripts(model, items), normalizer=TextNormalizer()).rate


def score_kept(models: dict[str, str], test: Path, dev: Path) -> None:
    """Test and dev CER with and without the default prompt, and a paired bootstrap against the first model on
    test + dev together (the product path throughout)."""
    from whisper_zh.metrics import cer, paired_bootstrap
    from whisper_zh.normalize import TextNormalizer
    from whisper_zh.training.features import load_utterances

    normalizer = TextNormalizer()
    n_test = len(load_utterances(test))
    items = load_utterances(test) + load_utterances(dev)
    refs = [it.text for it in items]
    print(f"{'model':40} {'test':>7} {'test np':>7} {'dev':>7} {'dev np':>7} {'test+dev':>8}  vs {next(iter(models))}")
    baseline = None
    for name, model in models.items():
        columns, per_utterance = [], None
        for prompt in (True, False):
            hyps = transcripts(model, items, prompt=prompt)
            for part in (slice(0, n_test), slice(n_test, None)):
                columns.append(cer(refs[part], hyps[part], normalizer=normalizer).rate)
            if prompt:
                per_utterance = [cer([r], [h], normalizer=normalizer) for r, h in zip(refs, hyps, strict=True)]
        errors, lengths = [e.errors for e in per_utterance], [e.ref_len for e in per_utterance]
        both = sum(errors) / sum(lengths)
        comparison = ""
        if baseline is None:
            baseline = errors
        else:
            pc = paired_bootstrap(baseline, errors, lengths, n_resamples=2000)
            comparison = (f"{100 * pc.delta:+.2f} points [{100 * pc.ci_low:+.2f}, {100 * pc.ci_high:+.2f}], "
                          f"p = {pc.p_value:.2f}")
        test_p, dev_p, test_np, dev_np = columns
        print(f"{name:40} {100 * test_p:6.2f}% {100 * test_np:6.2f}% {100 * dev_p:6.2f}% {100 * dev_np:6.2f}% "
              f"{100 * both:7.2f}%  {comparison}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="base")
    parser.add_argument("--variants", nargs="+", default=["packed"], choices=sorted(VARIANTS))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--eval-steps", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--accum", type=int, default=16)
    parser.add_argument("--heldout", type=int, default=40, help="test utterances (scored at the end)")
    parser.add_argument("--dev", type=int, default=20, help="dev utterances (checkpoint selection)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra settings for every variant (e.g. learning_rate=3e-5)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--keep", help="keep the runs in this directory")
    parser.add_argument("--product-only", action="store_true",
                        help="only score the base and the kept runs (--keep): test and dev CER with and without "
                             "the prompt, and a paired bootstrap against the base")
    args = parser.parse_args()

    from whisper_zh.training.config import build_config
    from whisper_zh.training.trainer import finetune

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ft-acc-"))
    root.mkdir(parents=True, exist_ok=True)
    train, held = news_split(root)
    lines = held.read_text(encoding="utf-8").splitlines()
    test, dev = root / "test.jsonl", root / "dev.jsonl"
    test.write_text("\n".join(lines[: args.heldout]) + "\n", encoding="utf-8")
    dev.write_text("\n".join(lines[args.heldout: args.heldout + args.dev]) + "\n", encoding="utf-8")
    rows = []
    if args.product_only:
        kept = {v: str(root / v) for v in args.variants if (root / v / "model.safetensors").is_file()}
        score_kept({args.model: args.model, **kept}, test, dev)
        return
    base_cer = product_cer(args.model, test)
    print(f"test CER of {args.model} before fine-tuning (product path): {100 * base_cer:.2f}%", flush=True)
    for name in args.variants:
        overrides = dict(model=args.model, train=str(train), eval=str(dev), output_dir=str(root / name),
                         per_device_train_batch_size=args.batch, gradient_accumulation_steps=args.accum,
                         max_steps=args.steps, warmup_steps=0, eval_steps=args.eval_steps,
                         save_steps=args.eval_steps, logging_steps=1, precision=args.precision,
                         lr_scheduler="constant", skip_doctor=True, save_total_limit=1)
        overrides.update(VARIANTS[name])
        overrides.update(dict(kv.split("=", 1) for kv in args.set))
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
                     "wall_seconds": wall, "test_cer": product_cer(str(root / name), test)})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\ndev CER ({args.dev} utterances, the trainer's greedy generate(); picks the checkpoint)")
    print(f"{'variant':30} {'before':>7} {'best':>7} {'step':>5} {'samples':>8} {'train s':>8}")
    for r in rows:
        before = f"{100 * r['before']:6.2f}%" if r["before"] is not None else "    n/a"
        print(f"{r['variant']:30} {before} {100 * r['best']:6.2f}% {r['best_step']:5d} {r['best_samples']:8d} "
              f"{r['train_seconds']:8.0f}")
    print(f"\ntest CER ({args.heldout} utterances, product path: faster-whisper int8, default DecodeOptions)")
    print(f"{'base (before)':30} {100 * base_cer:6.2f}%")
    for r in rows:
        after = r["test_cer"]
        print(f"{r['variant']:30} {100 * after:6.2f}%  relative {(after - base_cer) / base_cer:+.1%}")


if __name__ == "__main__":
    main()

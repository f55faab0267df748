"""Training speed: whisper-zh finetune (packed and unpacked) against the plain Hugging Face recipe, one run.

The peer is the recipe a new user copies: Seq2SeqTrainer, WhisperFeatureExtractor padding every clip to 30 s,
batch B x accumulation A, AdamW, same model and clips (with ``model.accepts_loss_kwargs = False``, see
shared/docs/stack-notes.md). Each contender runs in its own process so peak RSS is its own. Samples are
utterances; packed windows hold several. Prints samples/s, peak RSS and the ratio to the peer
(``--only ... whisper-zh-packed-lora`` adds LoRA next to full fine-tuning).

    .venv/bin/python bench/finetune_speed.py --model base --steps 3 --batch 2 --accum 4

``--shape tiny|small|medium`` times a randomly initialised model of OpenAI's dimensions for that size (no such
weights are available offline; speed and memory do not depend on the weights' values), with the real tokenizer.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "aishell1-sample-S0150"
# OpenAI's model dimensions: d_model, layers (encoder = decoder), attention heads; FFN is 4 x d_model
SHAPES = {"tiny": (384, 4, 6), "base": (512, 6, 8), "small": (768, 12, 12), "medium": (1024, 24, 16)}


def news_split(root: Path) -> tuple[Path, Path]:
    """Train: news utterances W0121-W0400; held out: W0401-W0496 (no shared sentences)."""
    from whisper_zh.training.features import load_utterances, write_manifest

    items = load_utterances(DATA / "manifest.jsonl")
    train = [it for it in items if "W0121" <= it.id[-5:] <= "W0400"]
    held = [it for it in items if "W0401" <= it.id[-5:] <= "W0496"]
    return write_manifest(train, root / "train.jsonl"), write_manifest(held, root / "heldout.jsonl")


def run_hf(args: argparse.Namespace, train: Path, out: Path) -> dict:
    import numpy as np
    import torch
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    from whisper_zh.hf import load_transformers_whisper
    from whisper_zh.training.features import item_audio, load_utterances

    model, processor = load_transformers_whisper(args.model)
    model.accepts_loss_kwargs = False
    processor.tokenizer.set_prefix_tokens(language="zh", task="transcribe", predict_timestamps=False)
    items = load_utterances(train)

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(items)

        def __getitem__(self, i):
            it = items[i]
            features = processor.feature_extractor(item_audio(it), sampling_rate=16000).input_features[0]
            return {"input_features": features, "labels": processor.tokenizer(it.text).input_ids}

    def collate(rows):
        feats = torch.tensor(np.stack([r["input_features"] for r in rows]))
        labels = processor.tokenizer.pad({"input_ids": [r["labels"] for r in rows]}, return_tensors="pt")
        ids = labels["input_ids"].masked_fill(labels.attention_mask.ne(1), -100)
        if (ids[:, 0] == model.config.decoder_start_token_id).all():
            ids = ids[:, 1:]
        return {"input_features": feats, "labels": ids}

    targs = Seq2SeqTrainingArguments(
        output_dir=str(out), per_device_train_batch_size=args.batch, gradient_accumulation_steps=args.accum,
        learning_rate=1e-5, warmup_steps=0, max_steps=args.steps, logging_steps=1, save_strategy="no",
        eval_strategy="no", report_to=[], use_cpu=True, seed=42, dataloader_num_workers=0,
        bf16=args.precision == "bf16", remove_unused_columns=False)
    trainer = Seq2SeqTrainer(model=model, args=targs, train_dataset=DS(), data_collator=collate)
    start = time.perf_counter()
    metrics = trainer.train().metrics
    seconds = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"samples": args.steps * args.batch * args.accum, "train_seconds": seconds,
            "runtime_reported": metrics.get("train_runtime"), "losses": losses}


def run_ours(args: argparse.Namespace, train: Path, held: Path, out: Path, packing: bool, lora: bool = False) -> dict:
    from whisper_zh.training.config import build_config
    from whisper_zh.training.trainer import finetune

    config = build_config(overrides=dict(
        model=args.model, train=str(train), eval=str(held), output_dir=str(out), learning_rate=1e-5,
        per_device_train_batch_size=args.batch, gradient_accumulation_steps=args.accum, max_steps=args.steps,
        warmup_steps=0, eval_steps=10_000, save_steps=10_000, logging_steps=1, precision=args.precision,
        packing=packing, max_eval_samples=1, generation_max_length=8, skip_doctor=True, eval_at_start=False,
        **{"lora.enabled": lora}))
    result = finetune(config, overwrite=True, progress=False)  # a repeat replaces the last measurement's run
    losses = [r["loss"] for r in result.history if "loss" in r and "event" not in r]
    return {"samples": int(result.samples_per_second * result.train_seconds), "train_seconds": result.train_seconds,
            "losses": losses}


def child(args: argparse.Namespace) -> None:
    root = Path(args.workdir)
    train, held = root / "train.jsonl", root / "heldout.jsonl"
    out = root / args.child
    if args.child == "hf-padded":
        row = run_hf(args, train, out)
    else:
        row = run_ours(args, train, held, out, packing="packed" in args.child, lora=args.child.endswith("-lora"))
    row["samples_per_second"] = row["samples"] / row["train_seconds"]
    row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print("RESULT " + json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="base")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--accum", type=int, default=4)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--shape", choices=sorted(SHAPES), help="time a random model of this size instead of --model")
    parser.add_argument("--only", nargs="*", default=["hf-padded", "whisper-zh-unpacked", "whisper-zh-packed"],
                        choices=["hf-padded", "whisper-zh-unpacked", "whisper-zh-packed", "whisper-zh-packed-lora",
                                 "whisper-zh-unpacked-lora"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="ft-speed-") as tmp:
        news_split(Path(tmp))
        if args.shape:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for tests/
            from tests.tiny_whisper import (
                build_tiny_random_whisper,  # random weights: a test helper, not the package
            )

            d_model, layers, heads = SHAPES[args.shape]
            args.model = str(build_tiny_random_whisper(Path(tmp) / f"random-{args.shape}", d_model=d_model,
                                                       layers=layers, heads=heads, ffn_dim=4 * d_model))
        results = {}
        for name in args.only:
            cmd = [sys.executable, __file__, "--child", name, "--workdir", tmp, "--model", args.model, "--steps",
                   str(args.steps), "--batch", str(args.batch), "--accum", str(args.accum), "--precision",
                   args.precision]
            done = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"{name}: failed\n{done.stderr[-3000:]}")
                continue
            results[name] = json.loads(line[7:])
    peer = results.get("hf-padded")
    shown = f"{args.shape} (random weights)" if args.shape else args.model
    print(f"model {shown}, {args.steps} steps of batch {args.batch} x accumulation {args.accum}, "
          f"{args.precision}, 2-core CPU")
    print(f"{'contender':22} {'samples/s':>10} {'x peer':>7} {'peak RSS GB':>12} {'first/last loss':>18}")
    for name, row in results.items():
        ratio = row["samples_per_second"] / peer["samples_per_second"] if peer else float("nan")
        losses = row["losses"]
        print(f"{name:22} {row['samples_per_second']:10.3f} {ratio:7.2f} {row['peak_rss_gb']:12.2f} "
              f"{losses[0]:8.3f}/{losses[-1]:<8.3f}")


if __name__ == "__main__":
    main()

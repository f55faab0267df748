"""`whisper-zh finetune`: fine-tune Whisper on Chinese data with the reference recipe (see training.config)."""

from __future__ import annotations

import argparse
import shlex
import sys

from whisper_zh.errors import UsageError

# CLI flag -> config field (flags left unset do not override the recipe or config file)
FLAG_FIELDS = {
    "model": "model", "train": "train", "eval": "eval", "output_dir": "output_dir", "lr": "learning_rate",
    "batch_size": "per_device_train_batch_size", "grad_accum": "gradient_accumulation_steps",
    "max_steps": "max_steps", "warmup_steps": "warmup_steps", "eval_steps": "eval_steps",
    "save_steps": "save_steps", "logging_steps": "logging_steps", "precision": "precision", "seed": "seed",
    "max_eval_samples": "max_eval_samples", "packing": "packing", "spec_augment": "spec_augment",
    "freeze_encoder": "freeze_encoder", "freeze_decoder": "freeze_decoder", "lora": "lora.enabled",
    "export_ct2": "export_ct2",
    "skip_doctor": "skip_doctor", "feature_pipeline": "feature_pipeline",
    "early_stopping_patience": "early_stopping_patience",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune Whisper on Chinese speech (checks the data first)",
        description="Fine-tune Whisper on zh-CN data. Defaults reproduce the reference recipe (AdamW, lr 1e-5, "
        "batch 2 x accumulation 16, linear warmup, eval and save by CER). Precedence: defaults < --recipe < "
        "--config < flags < --set.",
    )
    p.add_argument("--model", help="starting point: 'base' (embedded), a local model directory, or a hub id")
    p.add_argument("--train", help="training data source (manifest.jsonl or anything the data loader reads)")
    p.add_argument("--eval", help="held-out evaluation source")
    p.add_argument("--output-dir", "-o", help="where checkpoints, log, curves, card and final model go (default out)")
    p.add_argument("--recipe", help="a shipped recipe name (e.g. whisper-medium-zh-cn) or a recipe file")
    p.add_argument("--config", help="YAML or TOML file with any FinetuneConfig settings")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any setting (repeatable)")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--batch-size", type=int, help="per-device training batch size")
    p.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    p.add_argument("--max-steps", type=int, help="optimizer steps")
    p.add_argument("--warmup-steps", type=int, help="steps of linear learning-rate warmup")
    p.add_argument("--eval-steps", type=int, help="evaluate the CER every N steps")
    p.add_argument("--save-steps", type=int, help="save a checkpoint every N steps")
    p.add_argument("--logging-steps", type=int, help="log the loss every N steps")
    p.add_argument("--max-eval-samples", type=int, help="evaluate on at most N utterances of --eval (the first N)")
    p.add_argument("--early-stopping-patience", type=int, help="stop after N evals without a better CER")
    p.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"),
                   help="training precision; auto: bf16 where the hardware has it, fp16 on older GPUs, else fp32")
    p.add_argument("--seed", type=int, help="random seed of the run (data order, augmentation, dropout)")
    p.add_argument("--feature-pipeline", choices=("faster-whisper", "transformers"),
                   help="log-mel features as faster-whisper computes them at inference (default) or as "
                   "Transformers' WhisperFeatureExtractor does")
    p.add_argument("--packing", action=argparse.BooleanOptionalAction, default=None,
                   help="pack several utterances into each 30 s window (timestamp tokens)")
    p.add_argument("--spec-augment", action=argparse.BooleanOptionalAction, default=None,
                   help="mask random time and frequency bands of the features (SpecAugment)")
    p.add_argument("--freeze-encoder", action=argparse.BooleanOptionalAction, default=None,
                   help="train the decoder only")
    p.add_argument("--freeze-decoder", action=argparse.BooleanOptionalAction, default=None,
                   help="train the encoder only (speaker adaptation; keeps the decoder's language model)")
    p.add_argument("--lora", action=argparse.BooleanOptionalAction, default=None,
                   help="train LoRA adapters (PEFT) instead of all weights; merged on export")
    p.add_argument("--export-ct2", action=argparse.BooleanOptionalAction, default=None,
                   help="also export a CTranslate2 copy for faster-whisper (float16 storage, as the embedded base; "
                   "quantised to int8 at load on a CPU)")
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an output directory that holds an earlier run (its checkpoints and log "
                   "are deleted); without it or --resume such a directory is refused")
    p.add_argument("--skip-doctor", action=argparse.BooleanOptionalAction, default=None,
                   help="train even when `whisper-zh doctor` reports errors")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from whisper_zh.training.config import build_config, parse_set_options

    overrides = {field: getattr(args, flag) for flag, field in FLAG_FIELDS.items()
                 if getattr(args, flag, None) is not None}
    overrides.update(parse_set_options(args.set))
    config = build_config(recipe=args.recipe, config_file=args.config, overrides=overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True), end="")
        return 0
    if not config.train or not config.eval:
        raise UsageError("--train and --eval are required (or set them in --config)")
    if _rank() == 0:  # before the doctor's checks: a refused folder should not cost them
        from whisper_zh.training.checkpoints import check_output_dir

        check_output_dir(config.output_dir, resume=args.resume, overwrite=args.overwrite)
    if not config.skip_doctor and _rank() == 0:
        from whisper_zh.training.doctor import print_report, run_checks

        report = run_checks(train=config.train, eval=config.eval, model=config.model, config=config)
        print_report(report, file=sys.stderr)
        if report.errors:
            print(f"whisper-zh finetune: refusing to train: `whisper-zh doctor` found {len(report.errors)} "
                  "error(s) above. Fix the data, or pass --skip-doctor to train anyway.", file=sys.stderr)
            return 1
    from whisper_zh.training.trainer import finetune

    command = "whisper-zh " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    result = finetune(config, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                      command=command)
    if _rank() == 0:
        before = "" if result.initial_cer is None else f" (before: {result.initial_cer:.2%})"
        print(f"best CER {result.best_cer:.2%} at step {result.best_step}{before}; "
              f"model, card and curves in {result.output_dir}/")
    return 0


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


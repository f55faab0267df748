"""`whisper-zh doctor`: data and environment checks before fine-tuning (exit 1 on errors)."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="check training data and the environment before fine-tuning",
        description="Report unusable rows, bad or silent audio, bad transcripts (empty, too long, untokenizable, "
        "Traditional characters, no Chinese characters, Japanese kana), duplicates, train/eval overlap, "
        "speaking-rate outliers against the data's own distribution, untested library versions and memory "
        "shortfalls, each reason counted on its own. Exit status 1 when there are errors.",
    )
    p.add_argument("--train", help="training data source")
    p.add_argument("--eval", help="evaluation data source")
    p.add_argument("--model", default=None, help="model to estimate memory for (default: the config's, or base)")
    p.add_argument("--recipe", help="recipe whose batch size and precision to check against")
    p.add_argument("--config", help="finetune config file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from whisper_zh.training.config import build_config
    from whisper_zh.training.doctor import print_report, run_checks

    config = build_config(recipe=args.recipe, config_file=args.config,
                          overrides={"train": args.train, "eval": args.eval, "model": args.model})
    report = run_checks(config=config)
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=1))
    else:
        print_report(report)
    return 1 if report.errors else 0

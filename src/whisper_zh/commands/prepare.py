"""`whisper-zh prepare INPUT -o FOLDER`: a dataset as users have it -> train/dev/test manifests for finetune."""

from __future__ import annotations

import argparse
import json

from whisper_zh.data import FORMATS
from whisper_zh.data.prepare import MAX_SECONDS, PUNCTUATE, PrepareOptions

DEFAULTS = PrepareOptions()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="turn recordings with transcripts into train/dev/test manifests for finetune",
        description="Read a manifest (JSONL or CSV), a Kaldi or AISHELL folder, a Common Voice TSV or a folder of "
        "audio with one .txt transcript per file; check every clip (decodes, not silent, at most 30 s, duration "
        "measured, 16 kHz or converted), convert Traditional characters, put punctuation back where the "
        "transcripts have none, and write FOLDER/train.jsonl, dev.jsonl and test.jsonl (split by speaker when "
        "there are at least 3, else by utterance; no utterance in two splits), dropped.jsonl and summary.json.",
    )
    p.add_argument("input", metavar="INPUT", help="the data: a manifest, a Kaldi/AISHELL/Common Voice folder or TSV, "
                   "or a folder of audio files with same-named .txt transcripts")
    p.add_argument("-o", "--output", required=True, metavar="FOLDER", help="folder to write the manifests into")
    p.add_argument("--dev-fraction", type=float, default=DEFAULTS.dev_fraction,
                   help=f"share of the utterances held out for dev (default: {DEFAULTS.dev_fraction})")
    p.add_argument("--test-fraction", type=float, default=DEFAULTS.test_fraction,
                   help=f"share of the utterances held out for test (default: {DEFAULTS.test_fraction}; 0 for none)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of the split (default: 0)")
    p.add_argument("--format", choices=FORMATS, help="the input's format (default: detected)")
    p.add_argument("--split", help="the input's own split to read (AISHELL wav/<split>, Common Voice <split>.tsv)")
    p.add_argument("--script", choices=("simplified", "traditional", "as-is"), default=DEFAULTS.script,
                   help="script of the targets (default: simplified; Traditional characters are converted)")
    p.add_argument("--max-seconds", type=float, default=DEFAULTS.max_seconds,
                   help=f"drop clips longer than this (default and most: {MAX_SECONDS:.0f}, Whisper's window)")
    p.add_argument("--punctuate", choices=PUNCTUATE, default=DEFAULTS.punctuate,
                   help="put punctuation back into train and dev targets: auto (when the transcripts have almost "
                   "none, as AISHELL's), always or never (default: auto)")
    p.add_argument("--punctuation-model", default=DEFAULTS.punctuation_model,
                   help="model whose transcripts lend their punctuation (default: base, the embedded model)")
    p.add_argument("--overwrite", action="store_true", help="replace manifests already in FOLDER")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from whisper_zh.data.prepare import prepare

    options = PrepareOptions(
        dev_fraction=args.dev_fraction, test_fraction=args.test_fraction, seed=args.seed, format=args.format,
        split=args.split, script=args.script, max_seconds=args.max_seconds, punctuate=args.punctuate,
        punctuation_model=args.punctuation_model, overwrite=args.overwrite,
    )
    summary = prepare(args.input, args.output, options, progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary.to_dict(), ensure_ascii=False, indent=1))
    else:
        print("\n".join(summary.lines()))
        out = args.output
        print(f"next: whisper-zh doctor --train {out}/train.jsonl --eval {out}/dev.jsonl")
    return 0

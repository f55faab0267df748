"""`whisper-zh convert SRC OUT --to ctranslate2|transformers`: convert a Whisper model between engine layouts."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from whisper_zh.errors import UsageError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a model between CTranslate2 (fast serving) and Transformers (fine-tuning) layouts",
        description="Convert a Whisper model: Transformers -> CTranslate2 to serve a fine-tuned model fast, "
        "CTranslate2 -> Transformers (e.g. the embedded 'base') to fine-tune it. CTranslate2 -> CTranslate2 "
        "re-quantizes.",
    )
    p.add_argument("src", help="model directory, or 'base' for the embedded model")
    p.add_argument("out", type=Path, help="output directory (must not exist unless --force)")
    p.add_argument("--to", required=True, choices=("ctranslate2", "transformers"), help="target layout")
    p.add_argument(
        "--quantization",
        choices=("int8", "float16", "float32"),
        default=None,
        help="CTranslate2 weight type (default float16; int8 is smallest and fastest on CPU)",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from whisper_zh.models import resolve_model

    if args.out.exists() and not args.force:
        raise UsageError(f"{args.out}: already exists (use --force to replace it)")
    if args.to == "transformers" and args.quantization:
        raise UsageError("--quantization applies to --to ctranslate2 only (Transformers weights are float32)")
    resolved = resolve_model(args.src)
    if args.out.resolve() in (resolved.path.resolve(), *resolved.path.resolve().parents):
        raise UsageError(f"{args.out}: output directory is (or holds) the source model")
    if args.to == "transformers" and resolved.layout == "transformers":
        raise UsageError(f"{args.src}: already a Transformers model")
    start = time.perf_counter()
    try:
        _convert(resolved.path, resolved.layout, args)
    except OSError as exc:  # an unwritable or full output folder: nothing was published
        raise UsageError(f"{args.out}: cannot write the converted model ({exc.strerror or exc})") from exc
    quant = f", {args.quantization or 'float16'}" if args.to == "ctranslate2" else ""
    print(f"{args.src} ({resolved.layout}) -> {args.out} ({args.to}{quant}) in {time.perf_counter() - start:.1f} s")
    return 0


def _convert(src: Path, layout: str, args: argparse.Namespace) -> None:
    from whisper_zh.convert import ct2_to_transformers_dir, transformers_to_ct2_dir

    if args.to == "transformers":
        ct2_to_transformers_dir(src, args.out)
    elif layout == "transformers":
        transformers_to_ct2_dir(src, args.out, args.quantization or "float16")
    else:  # CTranslate2 -> CTranslate2: re-quantize through a temporary Transformers copy
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".convert-", dir=args.out.parent) as tmp:
            hf_dir = ct2_to_transformers_dir(src, Path(tmp) / "hf")
            transformers_to_ct2_dir(hf_dir, args.out, args.quantization or "float16")

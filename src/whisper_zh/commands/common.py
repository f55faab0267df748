"""What the commands share: the model and decoding flags, and one reader of them.

Flag defaults come from ``DecodeOptions()``, so the CLI, the server and the Python API start from the same
values. Commands raise :class:`~whisper_zh.errors.WhisperZhError` for anything a user can fix; ``cli.main``
turns it into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from whisper_zh.decoding import DEFAULT_ZH_PROMPT, SCRIPTS, DecodeOptions
from whisper_zh.engines import ENGINES
from whisper_zh.errors import UsageError

DEFAULTS = DecodeOptions()


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Model, engine and decoding flags shared by transcribe, evaluate and serve."""
    parser.add_argument("--model", default="base", help="model directory, 'base' (embedded), size name or hub id")
    parser.add_argument(
        "--engine", choices=ENGINES, default=ENGINES[0],
        help="ctranslate2 (fast, default) or transformers (runs a Transformers checkpoint unconverted; "
        "no clip packing or word timestamps)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument(
        "--compute-type", default="int8",
        help="int8 (default), int8_float32 or float32 on a CPU; float16, int8_float16 or bfloat16 on a GPU",
    )
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: CTranslate2's default)")
    parser.add_argument(
        "--language", default=DEFAULTS.language, help="language code, or 'auto' to detect (default: zh)"
    )
    parser.add_argument("--beam-size", type=int, default=DEFAULTS.beam_size,
                        help=f"beam search width; 1 decodes greedily (default: {DEFAULTS.beam_size})")
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULTS.batch_size,
        help=f"windows decoded together (default: {DEFAULTS.batch_size})",
    )
    parser.add_argument(
        "--initial-prompt", default=DEFAULTS.initial_prompt,
        help=f"text that conditions the decoder (default: '{DEFAULT_ZH_PROMPT}', for Mandarin only; '' for none)",
    )
    parser.add_argument("--hotwords", default=DEFAULTS.hotwords, help="domain terms to favour, e.g. '深度学习 张三'")
    parser.add_argument("--script", choices=SCRIPTS, default=DEFAULTS.script,
                        help=f"Chinese script of the output, converted with OpenCC (default: {DEFAULTS.script})")
    parser.add_argument(
        "--no-vad", action="store_true", help="decode long audio straight through instead of cutting it at pauses"
    )
    parser.add_argument(
        "--no-pack", action="store_true",
        help="decode each short clip on its own window: its text then never depends on the other inputs "
        "(2.5-3.5x the CPU time on many short clips)",
    )


def decode_options(args: argparse.Namespace, **extra: Any) -> DecodeOptions:
    """The DecodeOptions the shared flags (and ``extra`` fields) ask for."""
    if args.threads < 0:
        raise UsageError(f"--threads {args.threads}: give a number of CPU threads, or 0 for CTranslate2's default")
    try:
        flags = dict(
            language=None if args.language == "auto" else args.language,
            beam_size=args.beam_size,
            batch_size=args.batch_size,
            initial_prompt=args.initial_prompt or None,
            hotwords=args.hotwords,
            script=args.script,
            vad=not args.no_vad,
            pack=not args.no_pack,
        )
        return DEFAULTS.with_(**{**flags, **extra})  # a command's own choices (``extra``) win over the flags
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def load_transcriber(args: argparse.Namespace, options: DecodeOptions, *, workers: int = 1) -> Any:
    """The Transcriber the shared flags ask for, checked against ``options`` (loading is slow: call it after
    cheap checks). ``workers``: decodes it may run at once, from as many threads."""
    from whisper_zh.transcriber import Transcriber

    transcriber = Transcriber(args.model, engine=args.engine, device=args.device, compute_type=args.compute_type,
                              cpu_threads=args.threads, workers=workers)
    transcriber.check(options)
    return transcriber


def ensure_writable(directory: Path) -> None:
    """Create ``directory`` if needed and check a file can be written in it (fail now, not after an hour)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UsageError(f"{directory}: output directory cannot be written ({exc.strerror or exc})") from exc

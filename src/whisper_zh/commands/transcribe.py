"""`whisper-zh transcribe`: files, directories or manifests in; one output file per input, text on stdout."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from whisper_zh.audio import audio_duration
from whisper_zh.decoding import DEFAULT_ZH_PROMPT, DecodeOptions
from whisper_zh.errors import AudioError, WhisperZhError
from whisper_zh.files import atomic_write_text
from whisper_zh.inputs import expand_inputs
from whisper_zh.writers import FORMATS, format_transcription


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Model and decoding flags shared by transcribe, evaluate and serve."""
    parser.add_argument(
        "--model", default="base", help="model directory, 'base' (embedded), size name or hub id"
    )
    parser.add_argument(
        "--engine", choices=("ctranslate2", "transformers"), default="ctranslate2",
        help="ctranslate2 (fast, default) or transformers (runs a Transformers checkpoint unconverted)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument(
        "--compute-type", default="int8", help="int8, float16, float32, int8_float16... (default: int8)"
    )
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: CTranslate2's default)")
    parser.add_argument("--language", default="zh", help="language code, or 'auto' to detect (default: zh)")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8, help="chunks decoded together (default: 8)")
    parser.add_argument(
        "--initial-prompt",
        default=DEFAULT_ZH_PROMPT,
        help=f"text that conditions the decoder (default: '{DEFAULT_ZH_PROMPT}'; '' for none)",
    )
    parser.add_argument("--hotwords", default=None, help="domain terms to favour, e.g. '深度学习 张三'")
    parser.add_argument("--script", choices=("simplified", "traditional", "as-is"), default="simplified")
    parser.add_argument(
        "--no-vad", action="store_true", help="split long audio every 30 s instead of by voice activity"
    )


def decode_options_from_args(args: argparse.Namespace, **extra: object) -> DecodeOptions:
    return DecodeOptions(
        language=None if args.language == "auto" else args.language,
        beam_size=args.beam_size,
        batch_size=args.batch_size,
        initial_prompt=args.initial_prompt or None,
        hotwords=args.hotwords,
        script=args.script,
        vad=not args.no_vad,
        **extra,  # type: ignore[arg-type]
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("transcribe", help="transcribe audio or video files to text")
    p.add_argument(
        "inputs", nargs="+", help="audio/video files, directories, or JSONL manifests with 'audio'"
    )
    add_model_arguments(p)
    p.add_argument("--format", choices=FORMATS, default="txt", help="output file format (default: txt)")
    p.add_argument("--output-dir", default=None, help="write one file per input here (default: stdout only)")
    p.add_argument("--word-timestamps", action="store_true", help="character/word timestamps (json, tsv)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from whisper_zh.transcriber import Transcriber

    try:
        sources = expand_inputs(args.inputs)
        options = decode_options_from_args(args, word_timestamps=args.word_timestamps)
    except (WhisperZhError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not sources:
        print("error: no audio files found in the given inputs", file=sys.stderr)
        return 2
    output_dir = Path(args.output_dir) if args.output_dir else None
    if output_dir is not None and (problem := _unwritable(output_dir)):
        print(f"error: {output_dir}: output directory cannot be written ({problem})", file=sys.stderr)
        return 2
    try:
        transcriber = Transcriber(
            args.model, engine=args.engine, device=args.device, compute_type=args.compute_type, cpu_threads=args.threads
        )
    except WhisperZhError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    total_seconds = sum(_safe_duration(s) for s in sources)
    names = _output_names(sources)
    bar = tqdm(
        total=round(total_seconds, 1),
        unit="s",
        unit_scale=True,
        desc=f"0/{len(sources)} files",
        disable=args.quiet,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    failures = done = 0
    audio_seconds = 0.0
    multiple = len(sources) > 1
    for index, result in transcriber.transcribe_iter(
        sources, options, on_progress=lambda s: bar.update(round(s, 1))
    ):
        source = sources[index]
        done += 1
        bar.set_description(f"{done}/{len(sources)} files")
        if isinstance(result, AudioError):
            failures += 1
            tqdm.write(f"error: {result}", file=sys.stderr)
            continue
        audio_seconds += result.duration
        tqdm.write(f"[{source}] {result.text}" if multiple else result.text, file=sys.stdout)
        if output_dir is not None:
            try:
                atomic_write_text(
                    output_dir / f"{names[index]}.{args.format}", format_transcription(result, args.format)
                )
            except OSError as exc:
                failures += 1
                tqdm.write(f"error: {source}: cannot write output ({exc.strerror or exc})", file=sys.stderr)
    bar.close()
    wall = time.perf_counter() - started
    if not args.quiet:
        rtf = wall / audio_seconds if audio_seconds else float("nan")
        print(
            f"{len(sources) - failures}/{len(sources)} files, {audio_seconds / 60:.2f} min of audio, "
            f"{wall:.1f} s wall, real-time factor {rtf:.3f}" + (f", {failures} failed" if failures else ""),
            file=sys.stderr,
        )
    return 1 if failures else 0


def _unwritable(directory: Path) -> str | None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _safe_duration(source: str) -> float:
    try:
        return audio_duration(source)
    except (AudioError, OSError):
        return 0.0


def _output_names(sources: list[str]) -> list[str]:
    """Output file stems: the input's stem, made unique with a numeric suffix where two inputs share it."""
    seen: dict[str, int] = {}
    names = []
    for source in sources:
        stem = Path(source).stem or "audio"
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        names.append(stem if count == 0 else f"{stem}-{count}")
    return names

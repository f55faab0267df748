"""`whisper-zh transcribe`: files, directories or manifests in; one output file per input, text on stdout."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from whisper_zh.audio import audio_duration
from whisper_zh.commands.common import add_model_arguments, decode_options, ensure_writable, load_transcriber
from whisper_zh.commands.ray_jobs import RAY_FORMATS, add_ray_arguments, transcribe_with_ray
from whisper_zh.errors import AudioError, UsageError
from whisper_zh.files import atomic_write_text
from whisper_zh.inputs import expand_inputs
from whisper_zh.writers import FORMATS, format_transcription


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("transcribe", help="transcribe audio or video files to text")
    p.add_argument(
        "inputs", nargs="+", help="audio/video files, directories, or JSONL manifests with 'audio'"
    )
    add_model_arguments(p)
    p.add_argument("--format", choices=FORMATS + RAY_FORMATS, default="txt",
                   help="output file format (default: txt); with --ray also jsonl (shards only) or manifest "
                   "(pseudo-labels for finetune)")
    p.add_argument("--output-dir", default=None, help="write one file per input here (default: stdout only)")
    p.add_argument("--word-timestamps", action="store_true", help="character/word timestamps (json, tsv)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_ray_arguments(p, manifest=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sources = expand_inputs(args.inputs)
    options = decode_options(args, word_timestamps=args.word_timestamps)
    if not sources:
        raise UsageError("no audio files found in the given inputs")
    if args.ray is not None:  # many machines: the job runs on Ray (whisper_zh.commands.ray_jobs)
        return transcribe_with_ray(args, sources, _output_names(sources), options)
    if args.format in RAY_FORMATS:
        raise UsageError(f"--format {args.format} needs --ray (it is the format of a Ray job's results)")
    output_dir = Path(args.output_dir) if args.output_dir else None
    if output_dir is not None:
        ensure_writable(output_dir)
    transcriber = load_transcriber(args)

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

"""`whisper-zh transcribe`: files, directories or manifests in; one output file per input, text on stdout.

Output files mirror the inputs under ``--output-dir`` with names that are distinct by construction (see
:mod:`whisper_zh.inputs`); an input that is refused (not a regular file, an unreadable manifest row) or fails to
decode gets one line on stderr, the others are still transcribed, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from whisper_zh.audio import audio_duration
from whisper_zh.commands.common import add_model_arguments, decode_options, ensure_writable, load_transcriber
from whisper_zh.commands.ray_jobs import RAY_FORMATS, add_ray_arguments, transcribe_with_ray
from whisper_zh.diarize import DiarizeOptions
from whisper_zh.errors import AudioError, UsageError
from whisper_zh.files import atomic_write_text
from whisper_zh.inputs import expand_inputs
from whisper_zh.subtitles import CueOptions
from whisper_zh.writers import CUE_FORMATS, FORMATS, format_transcription

CUE_DEFAULTS = CueOptions()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("transcribe", help="transcribe audio or video files to text")
    p.add_argument(
        "inputs", nargs="+", help="audio/video files, directories, or JSONL manifests with 'audio'"
    )
    add_model_arguments(p)
    p.add_argument("--format", choices=FORMATS + RAY_FORMATS, default="txt",
                   help="output file format (default: txt); with --ray also jsonl (shards only) or manifest "
                   "(pseudo-labels for finetune)")
    p.add_argument(
        "--output-dir", default=None,
        help="write one file per input here, mirroring the inputs' folders where names would clash "
        "(default: stdout only)",
    )
    p.add_argument(
        "--word-timestamps", action="store_true", help="character/word timestamps (in the json format only)"
    )
    p.add_argument(
        "--numbers", action="store_true",
        help="write dates, amounts, percentages and phone numbers in Arabic digits (二〇二三年 -> 2023年)",
    )


    speakers = p.add_argument_group("speakers (diarization: who spoke when)")
    speakers.add_argument("--diarize", action="store_true",
                          help="label each segment with its speaker (SPEAKER_1, ...) and split segments where the "
                          "speaker changes; the number of speakers is found unless given")
    speakers.add_argument("--speakers", type=int, default=None, metavar="N", help="exactly N speakers (with --diarize)")
    speakers.add_argument("--min-speakers", type=int, default=None, metavar="N", help="at least N speakers")
    speakers.add_argument("--max-speakers", type=int, default=None, metavar="N", help="at most N speakers")
    cues = p.add_argument_group("subtitle cues (srt, vtt)")
    cues.add_argument("--max-line-chars", type=int, default=CUE_DEFAULTS.max_line_chars,
                      help=f"characters per line (default: {CUE_DEFAULTS.max_line_chars})")
    cues.add_argument("--max-lines", type=int, default=CUE_DEFAULTS.max_lines,
                      help=f"lines per cue (default: {CUE_DEFAULTS.max_lines})")
    cues.add_argument("--max-cue-seconds", type=float, default=CUE_DEFAULTS.max_cue_seconds,
                      help=f"longest time a cue stays on screen (default: {CUE_DEFAULTS.max_cue_seconds:g})")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument(
        "--allow-truncated", action="store_true",
        help="transcribe the part of a file cut short that decodes (with a warning) instead of failing on it",
    )
    add_ray_arguments(p, manifest=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    inputs = expand_inputs(args.inputs)
    # Subtitle cues are cut at word times: srt and vtt ask for them.
    options = decode_options(args, word_timestamps=args.word_timestamps or args.format in CUE_FORMATS,
                             numbers=args.numbers, diarize=diarize_options(args))
    cues = _cue_options(args)
    for rejected in inputs.rejected:
        print(f"error: {rejected}", file=sys.stderr)
    for path in inputs.repeated:
        print(f"note: {path} is given more than once; transcribed once", file=sys.stderr)
    if not inputs.files:
        if inputs.rejected:
            return 1
        raise UsageError("no audio files found in the given inputs")
    sources = inputs.paths
    if args.ray is not None and options.diarize is not None:
        raise UsageError("--diarize does not run with --ray yet: transcribe on this machine")
    if args.ray is not None:  # many machines: the job runs on Ray (whisper_zh.commands.ray_jobs)
        return transcribe_with_ray(args, sources, [f.output for f in inputs.files], options)
    if args.format in RAY_FORMATS:
        raise UsageError(f"--format {args.format} needs --ray (it is the format of a Ray job's results)")
    output_dir = Path(args.output_dir) if args.output_dir else None
    if output_dir is not None:
        ensure_writable(output_dir)
    transcriber = load_transcriber(args, options)

    total_seconds = sum(_safe_duration(s) for s in sources)
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
    failures, done = len(inputs.rejected), 0
    written = _Outputs()
    audio_seconds = 0.0
    multiple = len(sources) > 1
    # Warnings logged while the bar is drawn (a truncated file) go above it, on a line of their own.
    with logging_redirect_tqdm():
        for index, result in _in_batches(transcriber, sources, options, SecondsProgress(bar), args.allow_truncated):
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
                    written.write(source, output_dir / f"{inputs.files[index].output}.{args.format}",
                                  format_transcription(result, args.format, cues))
                except (OSError, UsageError) as exc:
                    failures += 1
                    reason = exc.strerror or exc if isinstance(exc, OSError) else exc
                    tqdm.write(f"error: {source}: cannot write output ({reason})", file=sys.stderr)
    bar.close()
    wall = time.perf_counter() - started
    if not args.quiet:
        rtf = wall / audio_seconds if audio_seconds else float("nan")
        total = len(sources) + len(inputs.rejected)
        print(
            f"{total - failures}/{total} files, {audio_seconds / 60:.2f} min of audio, "
            f"{wall:.1f} s wall, real-time factor {rtf:.3f}" + (f", {failures} failed" if failures else ""),
            file=sys.stderr,
        )
    return 1 if failures else 0


# Files handed to the transcriber at once. The transcriber decodes a group (up to GROUP_SECONDS of audio) before it
# yields any of its results, so 1,000 clips of 0.1 s were one group and no output was written until all were done.
# Clips of 4.7 s or more (AISHELL's are 4.75 s on average) fill GROUP_SECONDS before this count, so their
# grouping and packing are unchanged; shorter clips are written every FILES_PER_CALL files.
FILES_PER_CALL = 256


def _in_batches(transcriber: Any, sources: list[str], options: Any, progress: Callable[[float], None],
                allow_truncated: bool) -> Iterator[tuple[int, Any]]:
    """(index into ``sources``, result) as each batch of at most FILES_PER_CALL files finishes."""
    for first in range(0, len(sources), FILES_PER_CALL):
        for index, result in transcriber.transcribe_iter(
            sources[first:first + FILES_PER_CALL], options, on_progress=progress, allow_truncated=allow_truncated,
        ):
            yield first + index, result


def diarize_options(args: argparse.Namespace) -> DiarizeOptions | None:
    """What --diarize and the speaker-count flags ask for (None: no diarization); bad values are UsageErrors."""
    counts = {"speakers": args.speakers, "min_speakers": args.min_speakers, "max_speakers": args.max_speakers}
    given = [name for name, value in counts.items() if value is not None]
    if not args.diarize:
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} needs --diarize")
        return None
    try:
        return DiarizeOptions(**counts)
    except ValueError as exc:
        raise UsageError(re.sub(r"(?<![\w-])(min-speakers|max-speakers|speakers)\b", r"--\1", str(exc))) from exc


def _cue_options(args: argparse.Namespace) -> CueOptions:
    try:
        return CueOptions(max_line_chars=args.max_line_chars, max_lines=args.max_lines,
                          max_cue_seconds=args.max_cue_seconds)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


class SecondsProgress:
    """Moves a bar counted in seconds of audio: the exact seconds are summed and shown to 0.1 s, never past the
    bar's total (rounding each update on its own added up to 927 s of a 926 s total)."""

    def __init__(self, bar: tqdm) -> None:
        self.bar, self.seconds = bar, 0.0

    def __call__(self, seconds: float) -> None:
        self.seconds += seconds
        shown = round(self.seconds, 1)
        if self.bar.total is not None:
            shown = min(shown, self.bar.total)
        if shown > self.bar.n:
            self.bar.update(round(shown - self.bar.n, 1))
            self.bar.n = shown  # no float drift from the sum of differences


def _safe_duration(source: str) -> float:
    try:
        return audio_duration(source)
    except (AudioError, OSError):
        return 0.0


class _Outputs:
    """Writes output files, and refuses to replace one it wrote earlier in this run (two names that are equal
    on a case-insensitive file system, say): a collision never overwrites a transcript."""

    def __init__(self) -> None:
        self._written: dict[tuple[int, int], str] = {}

    def write(self, source: str, path: Path, text: str) -> None:
        try:
            existing = path.stat()
        except FileNotFoundError:
            existing = None
        if existing is not None and (existing.st_dev, existing.st_ino) in self._written:
            other = self._written[(existing.st_dev, existing.st_ino)]
            raise UsageError(f"{path} already holds the transcript of {other}; not overwritten")
        atomic_write_text(path, text)
        done = path.stat()
        self._written[(done.st_dev, done.st_ino)] = source

"""`whisper-zh live`: play a recording into a live session and print the text as it commits.

The same streaming core as the server's ``/v1/realtime`` (:mod:`whisper_zh.live`), in this process: with
``--realtime`` the file arrives as a microphone would deliver it, so what is printed when is what a live listener
would see. Committed text goes to stdout as it commits (never taken back), one line per utterance; ``--partials``
also shows the unstable text on stderr.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from whisper_zh.audio import SAMPLE_RATE, load_audio
from whisper_zh.commands.common import add_model_arguments, decode_options, load_transcriber
from whisper_zh.errors import UsageError
from whisper_zh.files import atomic_write_text
from whisper_zh.live import Committed, Completed, LiveSession, Partial, play
from whisper_zh.writers import FORMATS, format_transcription

# Beyond this the clock adds nothing: the file is fed as fast as it is decoded (leave --speed out for that).
MAX_SPEED = 1000.0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "live",
        help="play an audio file into a live session and print the text as it commits",
        description="Play FILE into a live-transcription session (the one behind `serve`'s /v1/realtime) and "
        "print committed text as it becomes stable, one line per utterance. Without --realtime or --speed the file "
        "is fed as fast as decoding allows.",
    )
    p.add_argument("file", help="audio or video file")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--realtime", action="store_true", help="play the file at real-time speed")
    pace.add_argument("--speed", type=float, default=None, help="play the file this many times faster than real time")
    add_model_arguments(p)
    p.add_argument("--workers", type=int, default=1,
                   help="decodes run at once, each on --threads threads: overlapping them lowers the latency "
                   "(on 2 cores: --workers 2 --threads 1) (default: %(default)s)")
    p.add_argument("--partials", action="store_true", help="also show the partial (unstable) text on stderr")
    p.add_argument("--output", default=None,
                   help=f"write the final transcript here; the format follows the suffix ({', '.join(FORMATS)})")
    p.add_argument("--quiet", action="store_true", help="no summary on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    speed = 1.0 if args.realtime else args.speed
    if speed is not None and not (math.isfinite(speed) and 0 < speed <= MAX_SPEED):  # NaN fails every comparison
        raise UsageError(f"--speed {args.speed}: must be a number above 0 and at most {MAX_SPEED:g}; leave it out "
                         "to feed the file as fast as it is decoded")
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be at least 1")
    if args.engine != "ctranslate2":
        raise UsageError(f"--engine {args.engine}: live transcription needs word times, which only ctranslate2 gives")
    output = Path(args.output) if args.output else None
    if output is not None and output.suffix.lstrip(".") not in FORMATS:
        raise UsageError(f"--output {output}: the suffix must be one of {', '.join('.' + f for f in FORMATS)}")
    options = decode_options(args)
    audio = load_audio(args.file)
    # the session decodes with word times (what local agreement compares): check the model and engine give them
    transcriber = load_transcriber(args, options.with_(word_timestamps=True), workers=args.workers)
    session = LiveSession(options)
    started = time.perf_counter()
    _print_events(play(session, audio, lambda r: transcriber.transcribe_batch([r.audio], r.options)[0], speed=speed,
                       parallel=args.workers), partials=args.partials)
    wall = time.perf_counter() - started
    result = session.transcription()
    if output is not None:
        try:
            atomic_write_text(output, format_transcription(result, output.suffix.lstrip(".")))  # type: ignore[arg-type]
        except OSError as exc:
            raise UsageError(f"--output {output}: cannot write ({exc.strerror or exc})") from exc
    if not args.quiet:
        seconds = len(audio) / SAMPLE_RATE
        count = len(result.segments)
        print(f"{count} utterance{'' if count == 1 else 's'}, {seconds:.1f} s of audio in {wall:.1f} s "
              f"({'as fast as possible' if speed is None else f'played at {speed:g}x'})", file=sys.stderr)
    return 0


def _print_events(events, *, partials: bool) -> None:  # noqa: ANN001 - an iterator of live events
    line_open = False
    for event in events:
        if isinstance(event, Committed):
            print(event.text, end="", flush=True)
            line_open = True
        elif isinstance(event, Completed) and line_open:
            print(flush=True)
            line_open = False
        elif isinstance(event, Partial) and partials and event.text:
            print(f"  … {event.text}", file=sys.stderr, flush=True)
    if line_open:
        print(flush=True)

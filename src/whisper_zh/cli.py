"""Command-line entry point: `whisper-zh <command>`. Each command lives in whisper_zh.commands.<name>.

Exit status, for every command: 0 done; 1 done, but some inputs failed (or the checks found errors);
2 nothing done, because of something the user can fix (the one-line message says what); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from whisper_zh import __version__
from whisper_zh.errors import WhisperZhError

# Each module defines `add_parser(subparsers) -> None` (which sets `func=run`) and `run(args) -> int`.
COMMANDS = (
    "whisper_zh.commands.transcribe",
    "whisper_zh.commands.convert",
    "whisper_zh.commands.prepare",
    "whisper_zh.commands.finetune",
    "whisper_zh.commands.doctor",
    "whisper_zh.commands.evaluate",
    "whisper_zh.commands.serve",
    "whisper_zh.commands.live",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whisper-zh",
        description="Mandarin Chinese speech recognition with Whisper: transcribe, evaluate, fine-tune, serve.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug information")
    parser.add_argument("--version", action="version", version=f"whisper-zh {__version__}",
                        help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMANDS:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except WhisperZhError as exc:  # anything the user can fix: one line, exit status 2, for every command
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

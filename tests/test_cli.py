"""The command line as a whole: every flag explains itself, and the version is one flag away."""

from __future__ import annotations

import argparse
import subprocess
import sys

from whisper_zh import __version__
from whisper_zh.cli import build_parser


def _parsers(parser: argparse.ArgumentParser, name: str = "whisper-zh"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {choice.dest for choice in action._choices_actions if choice.help}
            assert helped == set(action.choices), f"{name}: commands without help: {set(action.choices) - helped}"
            for command, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {command}")


def test_every_option_of_every_command_has_help():
    missing = [f"{name} {'/'.join(action.option_strings) or action.dest}"
               for name, parser in _parsers(build_parser()) for action in parser._actions
               if not isinstance(action, argparse._SubParsersAction) and not action.help]
    assert missing == []
    names = [name for name, _ in _parsers(build_parser())]
    assert "whisper-zh prepare" in names and "whisper-zh finetune" in names


def test_version():
    done = subprocess.run([sys.executable, "-m", "whisper_zh", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"whisper-zh {__version__}"

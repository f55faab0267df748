"""The benchmark scripts the README tells users to run start what they say they start (cheap checks of the
command lines they build; the benchmarks themselves take minutes and are run by hand)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from whisper_zh.cli import build_parser
from whisper_zh.commands.serve import _live_limits

REPO = Path(__file__).resolve().parents[1]


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serve_load_starts_a_server_that_the_serve_command_accepts():
    # The README's command is `bench/serve_load.py ... --queue 4`. The server's default --max-streams is 4 and must
    # stay below --max-queue, so the bench's server used to exit at start-up with a usage error.
    argv = _bench("serve_load").serve_arguments("base", 8000, 4, 8)
    args = build_parser().parse_args(argv)
    assert argv[0] == "serve" and args.max_queue == 4
    _live_limits(args)  # raises UsageError when the server would refuse to start


def test_coverage_bench_joins_120_shared_clips_in_an_order_set_by_its_seed():
    coverage = _bench("coverage")
    audio, refs = coverage.build(0)
    again, same = coverage.build(0)
    other, shuffled = coverage.build(1)
    assert len(refs) == 120 and 7.0 * 60 < len(audio) / 16000 < 8.5 * 60
    assert same == refs and np.array_equal(again, audio) and shuffled != refs

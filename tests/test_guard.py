"""`make guard` judges a run against main's stored predictions: it passes the same predictions, and fails a run
that is worse on one set in one order only, that writes Traditional characters, or that is slower than the peer
says it should be. (Decoding itself is what the guard is for; here its verdicts are checked on stored texts.)"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def guard():
    spec = importlib.util.spec_from_file_location("bench_guard", REPO / "bench" / "guard.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while the file is run
    spec.loader.exec_module(module)
    if not (module.DATA / module.SETS["S0252"] / "manifest.jsonl").is_file():
        pytest.skip("shared data not found beside the repository")
    return module


@pytest.fixture(scope="module")
def baseline(guard) -> dict:
    return json.loads(guard.BASELINE.read_text(encoding="utf-8"))


def test_the_baseline_holds_every_shared_clip_in_both_orders(guard, baseline):
    clips = guard.load_clips(list(guard.SETS))
    assert baseline["sets"] == list(guard.SETS)
    for order in ("grouped", "shuffled"):
        assert set(baseline["passes"][order]["texts"]) == {c.id for c in clips}
    assert all(baseline["passes"][o]["cpu_s"] > 0 for o in ("grouped", "shuffled")) and baseline["peer"]["cpu_s"] > 0


def test_the_same_predictions_pass(guard, baseline, capsys):
    assert guard.report(copy.deepcopy(baseline), baseline) == 0
    assert "guard passed" in capsys.readouterr().out


def test_a_loss_on_one_set_in_one_order_fails_and_is_named(guard, baseline, capsys):
    run = copy.deepcopy(baseline)
    texts = run["passes"]["shuffled"]["texts"]
    for clip in guard.load_clips(["S0252"]):
        texts[clip.id] = texts[clip.id][2:]  # every S0252 clip loses its first two characters, shuffled only
    texts[guard.load_clips(["keywords"])[0].id] = "數字"  # one Traditional character more
    assert guard.report(run, baseline) == 1
    out = capsys.readouterr().out
    assert "shuffled S0252 numbers" in out and "shuffled pool" in out and "grouped S0252" not in out.split("FAILED")[1]
    old = guard.traditional_count(list(baseline["passes"]["shuffled"]["texts"].values()))
    assert f"shuffled: {old + 1} Traditional characters, baseline {old}" in out


def test_more_cpu_than_the_peer_allows_fails(guard, baseline):
    run = copy.deepcopy(baseline)
    for result in run["passes"].values():
        result["cpu_s"] *= 1.15  # 15 % slower, the peer as fast as before
    _lines, failed = guard.speed(run, baseline)
    assert failed and "rose 15.0 %" in failed[0]
    run["peer"]["cpu_s"] *= 1.15  # the machine, not the code, got slower
    assert guard.speed(run, baseline)[1] == []

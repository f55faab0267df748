"""`make guard`: does a change to decoding make any shared speech worse, or decoding slower?

Decodes every shared set with the code in this tree, twice, each pass in a subprocess of its own:
  grouped   the sets one after another, each in its natural (manifest) order, as a user's folders are
  shuffled  all clips of all sets in one seeded random order (neighbours that have nothing to do with each other)
and a peer in the same run (plain faster-whisper, beam 5, int8, clip by clip, on PEER_CLIPS clips), whose CPU
seconds make the speed check independent of how fast this machine is today.

Each set and the pool, in each order, is scored (CER with numbers normalised, the primary score here, and plain
CER) and compared clip by clip with the predictions stored in bench/guard/baseline.json (made by main's code)
with a paired bootstrap (10,000 resamples). The guard fails when
  - any set or pool, in either order, is worse with p < 0.05 (either scoring),
  - more Traditional characters come out than in the baseline,
  - decoding CPU seconds, relative to the peer's, rise by more than 10 %.
The baseline is predictions committed in the repository, so a run needs no old code. A change that trades
accuracy for something else updates the baseline in the same commit (`--update`) and says why.

Run: .venv/bin/python bench/guard.py [--update] [--sets S0150,S0252,...] [--save out/guard/run.json]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
BASELINE = REPO / "bench" / "guard" / "baseline.json"
SETS = {
    "S0150": "aishell1-sample-S0150",
    "S0252": "aishell1-sample-S0252-176",
    "narrator": "taiwan-narrator-131",
    "aishell3": "aishell3-30-speakers",
    "keywords": "dspspeech20-keywords",
}
SHUFFLE_SEED = 2026
PEER_CLIPS = 30  # every 40th clip of the pool: about 45 CPU seconds of faster-whisper
RESAMPLES = 10_000
ALPHA = 0.05
SPEED_TOLERANCE = 1.10


@dataclass(frozen=True)
class Clip:
    set: str
    id: str
    path: str
    text: str


def load_clips(names: list[str]) -> list[Clip]:
    """Every clip of the named sets, each set in its manifest's order, the sets in SETS order."""
    clips = []
    for name in names:
        folder = DATA / SETS[name]
        if not (folder / "manifest.jsonl").is_file():
            sys.exit(f"error: shared data not found at {folder}")
        for line in (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                clips.append(Clip(name, row["id"], str(folder / row["audio"]), row["text"]))
    return clips


def orders(clips: list[Clip]) -> dict[str, list[Clip]]:
    shuffled = list(clips)
    random.Random(SHUFFLE_SEED).shuffle(shuffled)
    return {"grouped": clips, "shuffled": shuffled}


def usage() -> tuple[float, float]:
    """(CPU seconds of this process and its finished children, peak RSS in MB of this process)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime, own.ru_maxrss / 1024


def run_pass(kind: str, paths: list[str]) -> dict:
    """Inside the subprocess: decode ``paths`` with whisper-zh (defaults) or the peer; texts, CPU s, wall s, RSS."""
    if kind == "peer":
        from faster_whisper import WhisperModel

        from whisper_zh.decoding import DEFAULT_ZH_PROMPT
        from whisper_zh.models import embedded_model_dir

        model = WhisperModel(str(embedded_model_dir()), compute_type="int8")
        decode = lambda: ["".join(s.text for s in model.transcribe(  # noqa: E731
            p, language="zh", beam_size=5, initial_prompt=DEFAULT_ZH_PROMPT,
            condition_on_previous_text=False)[0]) for p in paths]
    else:
        from whisper_zh import DecodeOptions, Transcriber

        transcriber = Transcriber("base")
        decode = lambda: [getattr(r, "text", "") for r in transcriber.transcribe_batch(paths, DecodeOptions())]  # noqa: E731
    return timed(decode)


def timed(decode) -> dict:  # noqa: ANN001 - a callable returning the texts
    """The texts ``decode()`` returns, with its CPU seconds, wall seconds and this process's peak RSS."""
    cpu0, wall0 = usage()[0], time.perf_counter()
    texts = decode()
    cpu1, rss = usage()
    return {"texts": texts, "cpu_s": cpu1 - cpu0, "wall_s": time.perf_counter() - wall0, "peak_rss_mb": rss}


def spawn(kind: str, clips: list[Clip], script: str = __file__) -> dict:
    """Run one pass of ``script`` (this one, or a bench built on it) in a fresh process (its own peak RSS, no state
    carried between passes): clip paths on its stdin, one JSON line with texts and costs out."""
    command = [sys.executable, script, "--pass", kind]
    proc = subprocess.run(command, input=json.dumps([c.path for c in clips]), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: the {kind} pass failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.splitlines()[-1])
    result["texts"] = {c.id: t for c, t in zip(clips, result["texts"], strict=True)}
    return result


def decode_all(names: list[str]) -> dict:
    clips = load_clips(names)
    run = {"sets": names, "passes": {}}
    for order, ordered in orders(clips).items():
        print(f"decoding {len(ordered)} clips, {order} ...", file=sys.stderr, flush=True)
        run["passes"][order] = spawn(order, ordered)
    peer = orders(clips)["shuffled"][:: max(1, len(clips) // PEER_CLIPS)][:PEER_CLIPS]
    print(f"peer: faster-whisper on {len(peer)} clips ...", file=sys.stderr, flush=True)
    run["peer"] = {k: v for k, v in spawn("peer", peer).items() if k != "texts"}
    return run


def traditional_count(texts: list[str]) -> int:
    """Characters that OpenCC's Traditional-to-Simplified conversion changes."""
    from whisper_zh.normalize import convert_script

    return sum(a != b for t in texts for a, b in zip(t, convert_script(t, "simplified"), strict=False))


def errors(clips: list[Clip], texts: dict[str, str], scoring) -> dict[str, tuple[int, int]]:
    """Each clip's (errors, reference length) under ``scoring``."""
    from whisper_zh.metrics import align_texts

    aligned = {c.id: align_texts(c.text, texts.get(c.id, ""), normalizer=scoring) for c in clips}
    return {key: (a.errors, a.ref_len) for key, a in aligned.items()}


def compare(run: dict, base: dict) -> tuple[list[str], list[str]]:
    """Table rows and the reasons to fail."""
    from whisper_zh.metrics import paired_bootstrap
    from whisper_zh.normalize import TextNormalizer

    clips = load_clips(run["sets"])
    groups = {name: [c for c in clips if c.set == name] for name in run["sets"]} | {"pool": clips}
    scorings = {"numbers": TextNormalizer(numbers="arabic"), "plain": TextNormalizer()}
    rows, failures = [], []
    for order, result in run["passes"].items():
        stored = base["passes"][order]["texts"]
        cells: dict[str, list[str]] = {group: [] for group in groups}
        for scoring_name, scoring in scorings.items():
            new, old = errors(clips, result["texts"], scoring), errors(clips, stored, scoring)  # each clip once
            for group, members in groups.items():
                c = paired_bootstrap([old[m.id][0] for m in members], [new[m.id][0] for m in members],
                                     [new[m.id][1] for m in members], n_resamples=RESAMPLES)
                cells[group].append(f"{100 * c.rate_b:.2f} % ({100 * c.delta:+.2f} [{100 * c.ci_low:+.2f}, "
                                    f"{100 * c.ci_high:+.2f}], p={c.p_value:.3f})")
                if c.delta > 0 and c.p_value < ALPHA:
                    failures.append(f"{order} {group} {scoring_name}: {100 * c.rate_a:.2f} % -> "
                                    f"{100 * c.rate_b:.2f} % (p = {c.p_value:.3f})")
        rows += [f"| {order} | {group} | {len(groups[group])} | {a} | {b} |" for group, (a, b) in cells.items()]
        new_trad = traditional_count([result["texts"][c.id] for c in clips])
        old_trad = traditional_count([stored.get(c.id, "") for c in clips])
        rows.append(f"| {order} | Traditional characters | | {new_trad} (baseline {old_trad}) | |")
        if new_trad > old_trad:
            failures.append(f"{order}: {new_trad} Traditional characters, baseline {old_trad}")
    return rows, failures


def speed(run: dict, base: dict) -> tuple[list[str], list[str]]:
    def relative(r: dict) -> float:
        return sum(p["cpu_s"] for p in r["passes"].values()) / r["peer"]["cpu_s"]

    now, then = relative(run), relative(base)
    lines = [f"| {order} | {p['cpu_s']:.0f} | {p['wall_s']:.0f} | {p['peak_rss_mb']:.0f} | "
             f"{base['passes'][order]['cpu_s']:.0f} | {base['passes'][order]['peak_rss_mb']:.0f} |"
             for order, p in run["passes"].items()]
    lines.append(f"| peer (faster-whisper, {PEER_CLIPS} clips) | {run['peer']['cpu_s']:.0f} | "
                 f"{run['peer']['wall_s']:.0f} | {run['peer']['peak_rss_mb']:.0f} | {base['peer']['cpu_s']:.0f} | |")
    lines.append(f"\ndecoding CPU / peer CPU: {now:.2f} now, {then:.2f} in the baseline ({now / then:.3f}x)")
    failed = [f"speed: decoding CPU relative to the peer rose {100 * (now / then - 1):.1f} %"] \
        if now > then * SPEED_TOLERANCE else []
    return lines, failed


def report(run: dict, base: dict) -> int:
    if base["sets"] != run["sets"]:
        sys.exit(f"error: the baseline holds sets {base['sets']}; compare the same sets")
    rows, failures = compare(run, base)
    print("| order | set | clips | CER, numbers normalised (change [95 % CI], p) | plain CER (change [95 % CI], p) |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    lines, slow = speed(run, base)
    print("\n| pass | CPU s | wall s | peak RSS MB | baseline CPU s | baseline peak RSS MB |\n|---|---|---|---|---|---|")
    print("\n".join(lines))
    failures += slow
    print(f"\nbaseline: {base.get('commit', '?')}")
    if failures:
        print("guard FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("guard passed")
    return 0


def commit() -> str:
    out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="store this run as the new baseline")
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated subset of " + ",".join(SETS))
    parser.add_argument("--save", help="also write this run (texts, CPU seconds) to this JSON file")
    parser.add_argument("--from-run", help="compare a run saved with --save instead of decoding again")
    parser.add_argument("--baseline", default=str(BASELINE), help="the run to compare with (default: bench/guard/baseline.json)")
    parser.add_argument("--pass", dest="kind", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.kind:  # a subprocess: paths on stdin, one JSON line out
        print(json.dumps(run_pass(args.kind, json.loads(sys.stdin.read()))))
        return 0
    names = [n.strip() for n in args.sets.split(",") if n.strip()]
    if unknown := [n for n in names if n not in SETS]:
        sys.exit(f"error: unknown set {unknown[0]}: use {', '.join(SETS)}")
    names = [n for n in SETS if n in names]
    run = json.loads(Path(args.from_run).read_text()) if args.from_run else decode_all(names)
    run["commit"] = commit()
    if args.save:
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        Path(args.save).write_text(json.dumps(run, ensure_ascii=False, indent=1), encoding="utf-8")
    if args.update:
        BASELINE.parent.mkdir(parents=True, exist_ok=True)
        BASELINE.write_text(json.dumps(run, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"baseline written: {BASELINE.relative_to(REPO)} ({run['commit']})")
        return 0
    if not Path(args.baseline).is_file():
        sys.exit(f"error: no baseline at {args.baseline}: run with --update on main first")
    return report(run, json.loads(Path(args.baseline).read_text(encoding="utf-8")))


if __name__ == "__main__":
    sys.exit(main())

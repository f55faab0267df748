"""Does a clip's transcript depend on the clips it is packed with? Each shared clip decoded alone and packed.

whisper-zh packs short clips several to a 30 s window (most of its speed on many short files). A clip's words
must not cross or fall out at a pack boundary. For each clip this compares the packed transcript with the same
clip decoded on its own (both through Transcriber, default options otherwise, word times on):
  differ        clips whose text differs at all (after the scoring normaliser)
  lost/gained   reference characters within 1 s of the clip's start or end that the packed transcript drops
                and the alone one keeps (or extra characters packing adds at the clip's edges)
  CER           against the references, alone and packed, with 95 % CIs and the paired difference
Run: .venv/bin/python bench/packing.py [--clips 500] [--first 0]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "aishell1-sample-S0150"
EDGE = 1.0  # seconds from a clip's start or end that count as "at the boundary"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def edge_errors(ref: str, hyp: str, chars_per_second: float) -> tuple[set[int], int]:
    """(reference positions deleted within EDGE seconds of either end, characters inserted before the first or
    after the last reference character); positions near an end are the first/last EDGE * rate characters."""
    import jiwer

    if not ref:
        return set(), len(hyp)
    near = max(1, round(EDGE * chars_per_second))
    deleted, inserted = set(), 0
    for chunk in jiwer.process_characters(ref, hyp or "-").alignments[0]:
        if chunk.type == "delete":
            deleted |= {i for i in range(chunk.ref_start_idx, chunk.ref_end_idx) if i < near or i >= len(ref) - near}
        elif chunk.type == "insert" and (chunk.ref_start_idx == 0 or chunk.ref_start_idx >= len(ref)):
            inserted += chunk.hyp_end_idx - chunk.hyp_start_idx
    return deleted, inserted


def boundary_changes(ref: str, alone: str, packed: str, duration: float) -> tuple[int, int]:
    """Reference characters within EDGE s of the clip's edges that packing loses (deleted packed, not alone), and
    characters it adds at the edges (inserted packed beyond what alone inserts)."""
    rate = len(ref) / max(duration, 0.1)
    lost_packed, added_packed = edge_errors(ref, packed, rate)
    lost_alone, added_alone = edge_errors(ref, alone, rate)
    return len(lost_packed - lost_alone), max(0, added_packed - added_alone)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=500)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--save", help="write per-clip texts to this JSON file")
    args = parser.parse_args()
    from whisper_zh import DecodeOptions, Transcriber
    from whisper_zh.metrics import align_texts, cer, paired_bootstrap
    from whisper_zh.normalize import TextNormalizer

    rows = [json.loads(line) for line in (DATA / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = rows[args.first : args.first + args.clips]
    paths = [str(DATA / r["audio"]) for r in rows]
    transcriber = Transcriber("base")
    runs: dict = {}
    for name, pack in (("alone", False), ("packed", True)):
        started, cpu = time.perf_counter(), cpu_seconds()
        runs[name] = transcriber.transcribe_batch(paths, DecodeOptions(pack=pack))
        runs[name + "_cost"] = (time.perf_counter() - started, cpu_seconds() - cpu)
        bad = [r for r in runs[name] if not hasattr(r, "segments")]
        if bad:
            sys.exit(f"{name}: {bad[0]}")
    normalize = TextNormalizer()
    refs = [r["text"] for r in rows]
    alone = [r.text for r in runs["alone"]]
    packed = [r.text for r in runs["packed"]]
    differ = sum(normalize(a) != normalize(p) for a, p in zip(alone, packed, strict=True))
    changes = [boundary_changes(normalize(r["text"]), normalize(a), normalize(p), r["duration"])
               for a, p, r in zip(alone, packed, rows, strict=True)]
    lost, gained = sum(c[0] for c in changes), sum(c[1] for c in changes)
    a_cer, p_cer = (cer(refs, texts, normalizer=normalize, n_resamples=1000) for texts in (alone, packed))
    scored = {name: [align_texts(r, h, "char", normalizer=normalize) for r, h in zip(refs, texts, strict=True)]
              for name, texts in (("alone", alone), ("packed", packed))}
    paired = paired_bootstrap([a.errors for a in scored["alone"]], [a.errors for a in scored["packed"]],
                              [a.ref_len for a in scored["alone"]])
    print(f"# {len(rows)} clips from {rows[0]['id']}, each decoded alone and packed (base, int8, beam 5)\n")
    print("| decode | CER [95% CI] | wall s | CPU s |\n|---|---|---|---|")
    for name, score in (("alone", a_cer), ("packed", p_cer)):
        wall, cpu = runs[name + "_cost"]
        print(f"| {name} | {score.rate:.2%} [{score.ci_low:.2%}, {score.ci_high:.2%}] | {wall:.0f} | {cpu:.0f} |")
    print(f"\nclips whose text differs: {differ} of {len(rows)}; characters lost within {EDGE:g} s of a boundary: "
          f"{lost}, gained: {gained} (in {sum(1 for c in changes if c[0])} and {sum(1 for c in changes if c[1])} clips)")
    print(f"paired CER, packed minus alone: {paired.delta:+.2%} [{paired.ci_low:+.2%}, {paired.ci_high:+.2%}], "
          f"p = {paired.p_value:.3f}")
    if args.save:
        Path(args.save).write_text(json.dumps(
            [{"id": r["id"], "ref": r["text"], "alone": a, "packed": p, "lost": c[0], "gained": c[1]}
             for r, a, p, c in zip(rows, alone, packed, changes, strict=True)], ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What each rule of the packed path costs and gives (issue 28): every variant decodes the same clips of every shared
set, grouped and shuffled, and is compared clip by clip with the defaults by a paired bootstrap.

    .venv/bin/python bench/ablation.py --fraction 0.3 --save ablation.json

``--fraction`` keeps the first part of each set in its manifest's order (so a grouped pass still hears consecutive
sentences); the shuffled pass shuffles those clips with the guard's seed. Each pass runs in a process of its own.
A variant is either decoding options (``DecodeOptions``) or one rule of the packed path switched off for that
process: the rules are module constants and functions of :mod:`whisper_zh.chunking` and :mod:`whisper_zh.transcriber`,
which a bench may set in its own subprocess (the product never changes them at run time).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from guard import SETS, SHUFFLE_SEED, Clip, errors, load_clips, spawn, timed  # noqa: E402

VARIANTS: dict[str, str] = {
    "defaults": "the code as it is",
    "alone": "no packing: every clip in a window of its own (DecodeOptions(pack=False))",
    "in-order": "clips packed in input order, a new window where the next does not fit (the first turn's rule, "
                "a30bdc4), not first-fit decreasing",
    "no-timestamps": "packs decoded without timestamp tokens (words still split back by alignment)",
    "split-by-segments": "a pack's words split back by their segment's end, not their own, with no-redo's rule off "
                         "too (segment times cannot tell whether words cover a clip's speech)",
    "no-redo": "no clip given back for its words not covering its speech (chunking._covers always true)",
    "no-repack": "clips a pack gives back decoded one to a window at once, not packed again among themselves",
    "no-prompt": "no initial prompt (DecodeOptions(initial_prompt=None))",
    "window-24": "packs of at most 24 s (chunking.PACK_WINDOW = 24)",
    "gap-0.4": "0.4 s of silence between packed clips (chunking.PACK_GAP = 0.4)",
    "batch-1": "one window per decoder call (DecodeOptions(batch_size=1))",
    "batch-8": "eight windows per decoder call (DecodeOptions(batch_size=8))",
}


# split-by-segments is left out of the default run: its packs' words land in the wrong clips, and the safety net
# then decodes most of them again (52 CPU s for 13 clips, 8x the defaults); run it with --variants.
DEFAULT_VARIANTS = [v for v in VARIANTS if v != "split-by-segments"]


def configure(variant: str):  # noqa: ANN201 - returns DecodeOptions; imported late, inside the pass
    """Inside the pass's process: switch ``variant``'s rule off; returns the decoding options to use."""
    from whisper_zh import DecodeOptions, chunking, transcriber

    options = DecodeOptions()
    if variant == "alone":
        return options.with_(pack=False)
    if variant == "in-order":
        transcriber.make_packs = _in_order(chunking)
    elif variant == "no-timestamps":
        transcriber._Pack.timestamps = False
    elif variant == "split-by-segments":
        transcriber.unpack = _by_segments(chunking.unpack)
        chunking._covers = lambda member, words: True
    elif variant == "no-redo":
        chunking._covers = lambda member, words: True
    elif variant == "no-repack":
        transcriber.make_packs = _repack_alone(chunking.make_packs, chunking._pack)
    elif variant == "no-prompt":
        return options.with_(initial_prompt=None)
    elif variant == "window-24":
        chunking.PACK_WINDOW = 24.0
    elif variant == "gap-0.4":
        chunking.PACK_GAP = 0.4
        chunking._GAP_SAMPLES = round(0.4 * chunking.SAMPLE_RATE)
    elif variant.startswith("batch-"):
        return options.with_(batch_size=int(variant.split("-")[1]))
    return options


def _in_order(chunking):  # noqa: ANN001, ANN202
    def packs(files):  # noqa: ANN001, ANN202
        windows: list[list] = []
        filled = 0.0
        for file in sorted(files, key=lambda f: f.index):
            if windows and windows[-1][0].language == file.language and \
                    filled + chunking.PACK_GAP + file.duration <= chunking.PACK_WINDOW:
                windows[-1].append(file)
                filled += chunking.PACK_GAP + file.duration
            else:
                windows.append([file])
                filled = file.duration
        return [chunking._pack(members) for members in windows]

    return packs


def _by_segments(unpack):  # noqa: ANN001, ANN202
    from dataclasses import replace

    def split(pack, segments):  # noqa: ANN001, ANN202
        coarse = [replace(s, words=tuple(replace(w, start=s.end - 0.01, end=s.end) for w in s.words or ()))
                  for s in segments]
        return unpack(pack, coarse)

    return split


def _repack_alone(make_packs, pack):  # noqa: ANN001, ANN202
    seen: set[int] = set()

    def packs(files):  # noqa: ANN001, ANN202 - a group's first round as it is; clips seen before one to a window
        if all(id(f) in seen for f in files):
            return [pack([f]) for f in files]
        seen.update(id(f) for f in files)
        return make_packs(files)

    return packs


def run_pass(variant: str, paths: list[str]) -> dict:
    from whisper_zh import Transcriber

    options = configure(variant)
    transcriber = Transcriber("base")
    return timed(lambda: [getattr(r, "text", "") for r in transcriber.transcribe_batch(paths, options)])


def subset(fraction: float) -> dict[str, list[Clip]]:
    """The first ``fraction`` of each set, grouped and shuffled."""
    clips = load_clips(list(SETS))
    kept = [c for name in SETS for c in [c for c in clips if c.set == name][: max(1, round(fraction * sum(
        1 for c in clips if c.set == name)))]]
    shuffled = list(kept)
    random.Random(SHUFFLE_SEED).shuffle(shuffled)
    return {"grouped": kept, "shuffled": shuffled}


def table(runs: dict[str, dict], clips: list[Clip]) -> list[str]:
    """One row per variant, order and set (and the pool): CER numbers-normalised, the change against the defaults
    with its paired 95 % interval, CPU seconds and peak RSS."""
    from whisper_zh.metrics import paired_bootstrap
    from whisper_zh.normalize import TextNormalizer

    scoring = TextNormalizer(numbers="arabic")
    groups = {"pool": clips} | {name: [c for c in clips if c.set == name] for name in SETS}
    rows = ["| variant | order | " + " | ".join(groups) + " | CPU s | peak RSS MB |",
            "|---|---|" + "---|" * (len(groups) + 2)]
    for variant, run in runs.items():
        for order, result in run.items():
            base = errors(clips, runs["defaults"][order]["texts"], scoring)
            new = errors(clips, result["texts"], scoring)
            cells = []
            for members in groups.values():
                c = paired_bootstrap([base[m.id][0] for m in members], [new[m.id][0] for m in members],
                                     [new[m.id][1] for m in members], n_resamples=10_000)
                cells.append(f"{100 * c.rate_b:.2f}" + ("" if variant == "defaults" else
                             f" ({100 * c.delta:+.2f} [{100 * c.ci_low:+.2f}, {100 * c.ci_high:+.2f}])"))
            rows.append(f"| {variant} | {order} | " + " | ".join(cells)
                        + f" | {result['cpu_s']:.0f} | {result['peak_rss_mb']:.0f} |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated: " + ", ".join(VARIANTS))
    parser.add_argument("--fraction", type=float, default=0.3, help="share of each set, from its start (0-1]")
    parser.add_argument("--save", help="write (and resume from) the runs in this JSON file")
    parser.add_argument("--pass", dest="variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # a subprocess: paths on stdin, one JSON line out
        print(json.dumps(run_pass(args.variant, json.loads(sys.stdin.read()))))
        return 0
    names = ["defaults"] + [v for v in args.variants.split(",") if v and v != "defaults"]
    if unknown := [v for v in names if v not in VARIANTS]:
        sys.exit(f"error: unknown variant {unknown[0]}: use {', '.join(VARIANTS)}")
    saved = Path(args.save) if args.save else None
    runs: dict[str, dict] = json.loads(saved.read_text()) if saved and saved.is_file() else {}
    ordered = subset(args.fraction)
    for variant in names:
        for order, clips in ordered.items():
            if order in runs.get(variant, {}):
                continue
            print(f"{variant}: {len(clips)} clips, {order} ...", file=sys.stderr, flush=True)
            runs.setdefault(variant, {})[order] = spawn(variant, clips, script=__file__)
            if saved:
                saved.write_text(json.dumps(runs, ensure_ascii=False), encoding="utf-8")
    for name in names:
        print(f"- {name}: {VARIANTS[name]}")
    print("\n".join(table({v: runs[v] for v in names}, ordered["grouped"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())

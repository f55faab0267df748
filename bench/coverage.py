"""Stress bench for lost speech (issue 30, defect 9): shared clips joined in many orders, uncovered speech counted.

Each recording joins 30 clips drawn from each of four shared sets (S0150 news, S0252, the Taiwan narrator,
AISHELL-3: 120 clips, about 7.7 minutes; voices change from one sentence to the next, as in a podcast or a
compilation), shuffled with its seed, end to end with only the clips' own silences. `--narrator` adds the narrator's
131 clips in their own order (5.5 minutes of one voice). Each is transcribed with `Transcriber("base")` and the CLI's
decoding defaults (word timestamps, as `--format srt` asks for), in this process, one after the other.

Reported per recording: CER against the joined references (plain normaliser) with its deletions, substitutions and
insertions; the stretches of speech that voice activity detection hears (its regions less their padding) and no
segment covers, at least 1 s long, counted here from the output's segments (the transcriber's own report,
`Transcription.uncovered`, beside it); CPU seconds. `--fw` runs faster-whisper with its VAD (beam 5) on the same
audio for the deletions to compare with. Target: no uncovered speech.

Run: .venv/bin/python bench/coverage.py [--orders 5] [--first-seed 0] [--narrator] [--fw] [--batch-size N]
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SETS = ("aishell1-sample-S0150", "aishell1-sample-S0252-176", "taiwan-narrator-131", "aishell3-30-speakers")
PER_SET = 30


def rows(folder: str) -> list[dict]:
    manifest = DATA / folder / "manifest.jsonl"
    if not manifest.is_file():
        sys.exit(f"shared data not found at {manifest}")
    out = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in out:
        row["path"] = DATA / folder / row["audio"]
    return [r for r in out if r.get("domain", "news") == "news"]  # S0150's commands are not read speech


def build(seed: int | None) -> tuple[np.ndarray, list[str]]:
    """The recording of one order (None: the narrator's clips in their own order) and its references."""
    import soundfile as sf

    if seed is None:
        chosen = rows("taiwan-narrator-131")
    else:
        rng = random.Random(seed)
        chosen = [r for folder in SETS for r in rng.sample(rows(folder), PER_SET)]
        rng.shuffle(chosen)
    pieces = []
    for row in chosen:
        audio, rate = sf.read(row["path"], dtype="float32")
        assert rate == 16000, row["path"]
        pieces.append(audio)
    return np.concatenate(pieces), [r["text"] for r in chosen]


def score(refs: list[str], hyp: str) -> dict:
    import jiwer

    from whisper_zh.normalize import TextNormalizer

    normalize = TextNormalizer()
    out = jiwer.process_characters("".join(normalize(r) for r in refs), normalize(hyp) or "-")
    return {"cer": out.cer, "deletions": out.deletions, "substitutions": out.substitutions,
            "insertions": out.insertions}


def cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--narrator", action="store_true", help="add the narrator's clips in their own order")
    parser.add_argument("--fw", action="store_true", help="also faster-whisper with VAD, for its deletions")
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()
    from whisper_zh import DecodeOptions, Transcriber
    from whisper_zh.segments import uncovered_speech
    from whisper_zh.vad import speech_regions

    transcriber = Transcriber("base")
    options = DecodeOptions(word_timestamps=True)
    if args.batch_size:
        options = options.with_(batch_size=args.batch_size)
    seeds: list[int | None] = list(range(args.first_seed, args.first_seed + args.orders))
    seeds += [None] if args.narrator else []
    print("| recording | min | CER | del / sub / ins | uncovered speech >= 1 s (s) | reported | CPU s |"
          + (" fw-vad CER | fw-vad del |" if args.fw else ""))
    print("|---|---|---|---|---|---|---|" + ("---|---|" if args.fw else ""))
    for seed in seeds:
        audio, refs = build(seed)
        duration = len(audio) / 16000
        cpu = cpu_seconds()
        result = transcriber.transcribe(audio, options)
        cpu = cpu_seconds() - cpu
        gaps = uncovered_speech(speech_regions(audio), [(s.start, s.end) for s in result.segments], duration)
        s = score(refs, result.text)
        shown = ", ".join(f"{g.start:.1f}-{g.end:.1f}" for g in gaps) or "none"
        line = (f"| {'narrator, own order' if seed is None else f'order {seed}'} | {duration / 60:.1f} | "
                f"{s['cer']:.2%} | {s['deletions']} / {s['substitutions']} / {s['insertions']} | {shown} | "
                f"{len(result.uncovered)} | {cpu:.0f} |")
        if args.fw:
            f = score(refs, faster_whisper(audio))
            line += f" {f['cer']:.2%} | {f['deletions']} |"
        print(line, flush=True)
    return 0


def faster_whisper(audio: np.ndarray) -> str:
    segments, _ = _fw_model().transcribe(audio, language="zh", beam_size=5, vad_filter=True)
    return "".join(s.text for s in segments)


@functools.cache
def _fw_model():  # noqa: ANN202 - faster_whisper.WhisperModel, imported only when asked for
    from faster_whisper import WhisperModel

    from whisper_zh.models import embedded_model_dir

    return WhisperModel(str(embedded_model_dir()), device="cpu", compute_type="int8")

if __name__ == "__main__":
    started = time.time()
    code = main()
    print(f"\n{time.time() - started:.0f} s wall")
    sys.exit(code)

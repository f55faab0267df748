"""Peak memory of `whisper-zh transcribe` against the length of a file: the memory curve of issue 30.

Builds FLAC recordings of continuous speech, 1, 2 and 4 hours by default, by joining the shared clips (S0150,
S0252, the Taiwan narrator and AISHELL-3) end to end in shuffled orders (each hour repeats the shared speech in
another order: there is about one hour of it), written block by block. Then runs the CLI on each in its own
process under /usr/bin/time -v and reports its peak RSS, wall and CPU seconds. The decoding options are the CLI's
defaults unless given after `--` (e.g. `-- --beam-size 1`, which takes a fifth of the CPU and decodes the same
windows: memory is set by the audio held and the windows in flight, not by the beam).

Run: .venv/bin/python bench/long_memory.py [--hours 1,2,4] [--work DIR] [-- CLI options]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SETS = ("aishell1-sample-S0150", "aishell1-sample-S0252-176", "taiwan-narrator-131", "aishell3-30-speakers")


def clips() -> list[Path]:
    out = []
    for folder in SETS:
        manifest = DATA / folder / "manifest.jsonl"
        if not manifest.is_file():
            sys.exit(f"shared data not found at {manifest}")
        out += [DATA / folder / json.loads(line)["audio"] for line in manifest.read_text().splitlines() if line]
    return out


def build(hours: float, path: Path) -> float:
    """Write ``hours`` of joined clips to ``path`` (FLAC, 16 kHz); returns its seconds."""
    import soundfile as sf

    rng, pool, written = random.Random(0), clips(), 0
    with sf.SoundFile(path, "w", samplerate=16000, channels=1, format="FLAC") as out:
        while written < hours * 3600 * 16000:
            order = pool[:]
            rng.shuffle(order)
            for clip in order:
                audio, rate = sf.read(clip, dtype="float32")
                assert rate == 16000, clip
                out.write(audio[: max(0, int(hours * 3600 * 16000) - written)])
                written += len(audio)
                if written >= hours * 3600 * 16000:
                    break
    return min(written, hours * 3600 * 16000) / 16000


def measure(path: Path, options: list[str], work: Path, src: Path) -> dict:
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "whisper_zh", "transcribe", str(path),
               "--output-dir", str(work / "out"), "--format", "json", *options]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO,
                          env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"})
    if done.returncode:
        sys.exit(f"transcribe failed:\n{done.stderr[-3000:]}")

    def field(name: str) -> float:
        return float(re.search(rf"{name}: ([\d.:]+)", done.stderr).group(1).split(":")[-1])

    wall = done.stderr.split("Elapsed (wall clock) time (h:mm:ss or m:ss): ")[1].split()[0]
    seconds = sum(float(part) * 60 ** k for k, part in enumerate(reversed(wall.split(":"))))
    result = json.loads(next((work / "out").glob(f"{path.stem}*.json")).read_text(encoding="utf-8"))
    return {"peak_rss_mb": field("Maximum resident set size \\(kbytes\\)") / 1024, "wall_s": seconds,
            "cpu_s": field("User time \\(seconds\\)") + field("System time \\(seconds\\)"),
            "segments": len(result["segments"]), "characters": len(result["text"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", default="1,2,4")
    parser.add_argument("--work", default="/tmp/whisper-zh-long-memory")
    parser.add_argument("--src", default=str(REPO / "src"), help="the whisper_zh sources to run (an older copy)")
    parser.add_argument("options", nargs="*", help="CLI options after --")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print("| hours | file MB | peak RSS MB | wall s | CPU s | segments | characters |")
    print("|---|---|---|---|---|---|---|")
    for hours in (float(h) for h in args.hours.split(",")):
        path = work / f"joined-{hours:g}h.flac"
        if not path.is_file():
            build(hours, path)
        for old in (work / "out").glob("*"):
            old.unlink()
        r = measure(path, args.options, work, Path(args.src))
        print(f"| {hours:g} | {path.stat().st_size / 1e6:.0f} | {r['peak_rss_mb']:.0f} | {r['wall_s']:.0f} | "
              f"{r['cpu_s']:.0f} | {r['segments']} | {r['characters']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

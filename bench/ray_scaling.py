"""`transcribe --ray` against the plain single-process `transcribe`, peak RSS per worker, and a scaling model.

Contenders: each is one `whisper-zh transcribe` subprocess over the same clips (`--format txt`), and the
repeats are interleaved (each repeat rotates the order), so that load from other jobs on a shared machine falls
on every contender alike:
  plain     whisper-zh transcribe --threads T            (one process, T CTranslate2 threads)
  ray-1xT   --ray --num-workers 1 --threads-per-worker T (the same decoding in one Ray actor: Ray's own cost)
  ray-Tx1   --ray --num-workers T --threads-per-worker 1 (the same T threads as T actors of one thread)
The process tree of each subprocess is sampled every 0.25 s with psutil: CPU seconds per kind of process (the
driver, Ray's daemons, the workers), peak RSS per process. Wall time is end to end (start-up, model loads and Ray
included). CER against the manifest's references is computed from the txt files each contender wrote.

Then the inputs of the scaling model are measured on this machine: Ray's fixed cost (a one-clip job), the CPU
cost per audio second of what stays on the CPU when the decoder runs on a GPU (reading the audio and the log-mel
front end), and the driver's and Ray daemons' CPU per audio second (from the contender runs). The model is printed
last: hours of audio per hour of wall time for 1, 8 and 64 CPU nodes and 1 and 8 GPUs, and what limits each.

Run: .venv/bin/python bench/ray_scaling.py [--clips 500] [--repeats 2] [--threads 2] [--out out/bench/ray]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "aishell1-sample-S0150"


def clips(limit: int) -> list[dict]:
    manifest = DATA / "manifest.jsonl"
    if not manifest.is_file():
        sys.exit(f"shared data not found at {DATA}")
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in rows:
        row["path"] = str(DATA / row["audio"])
    return rows[:limit]


# ---------------------------------------------------------------------------------------------------------------
# Measuring a process tree


class TreeSampler:
    """Samples a process and its descendants: last CPU seconds and peak RSS per process, and its kind."""

    def __init__(self, root: int, interval: float = 0.25) -> None:
        self.root, self.interval = root, interval
        self.seen: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                root = psutil.Process(self.root)
                processes = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                processes = []
            for process in processes:
                try:
                    with process.oneshot():
                        times, rss, command = process.cpu_times(), process.memory_info().rss, process.cmdline()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                entry = self.seen.setdefault(process.pid, {"kind": "other", "cpu": 0.0, "rss": 0})
                entry["kind"] = _kind(process.pid == self.root, " ".join(command), entry["kind"])
                entry["cpu"] = max(entry["cpu"], times.user + times.system)
                entry["rss"] = max(entry["rss"], rss)
            self._stop.wait(self.interval)

    def by_kind(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for entry in self.seen.values():
            kind = out.setdefault(entry["kind"], {"processes": 0, "cpu_s": 0.0, "peak_rss_mb": []})
            kind["processes"] += 1
            kind["cpu_s"] += entry["cpu"]
            kind["peak_rss_mb"].append(round(entry["rss"] / 2**20))
        return out


def _kind(is_root: bool, command: str, before: str) -> str:
    if is_root:
        return "driver"
    if "MapWorker" in command or before == "worker":
        return "worker"  # an idle Ray worker that became a transcribing actor stays counted as one
    for name in ("raylet", "gcs_server"):
        if name in command:
            return name
    return "ray-other" if "ray" in command else "other"


# ---------------------------------------------------------------------------------------------------------------
# One contender


def command_for(name: str, manifest: Path, out: Path, threads: int) -> list[str]:
    base = [sys.executable, "-m", "whisper_zh", "transcribe", str(manifest), "--output-dir", str(out),
            "--format", "txt"]
    if name == "plain":
        return [*base, "--threads", str(threads)]
    workers, per_worker = (int(n) for n in name.removeprefix("ray-").split("x"))
    return [*base, "--ray", "--num-workers", str(workers), "--threads-per-worker", str(per_worker)]


def run_contender(name: str, manifest: Path, rows: list[dict], out: Path, threads: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "RAY_DEDUP_LOGS": "0"}
    started = time.perf_counter()
    process = subprocess.Popen(command_for(name, manifest, out, threads), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    with TreeSampler(process.pid) as sampler:
        _, stderr = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode:
        sys.exit(f"{name} failed ({process.returncode}):\n{stderr[-3000:]}")
    kinds = sampler.by_kind()
    hyps = [(out / f"{Path(r['path']).stem}.txt").read_text(encoding="utf-8").strip() for r in rows]
    return {
        "name": name,
        "wall_s": round(wall, 1),
        "cpu_s": round(sum(k["cpu_s"] for k in kinds.values()), 1),
        "kinds": kinds,
        "summary": [line.split("\r")[-1] for line in stderr.splitlines() if " files" in line and "audio" in line][-1:],
        "hyps": hyps,
    }


def score(rows: list[dict], hyps: list[str]) -> dict:
    from whisper_zh.metrics import cer
    from whisper_zh.normalize import TextNormalizer

    rate = cer([r["text"] for r in rows], hyps, normalizer=TextNormalizer(), n_resamples=1000)
    return {"cer": rate.rate, "ci": [rate.ci_low, rate.ci_high]}


# ---------------------------------------------------------------------------------------------------------------
# Inputs of the scaling model measured here


def fixed_cost(rows: list[dict], out: Path) -> dict:
    """A one-clip `--ray` job, end to end: Ray's start, one actor's start and model load, exit. Its wall time
    and CPU seconds per kind of process are the fixed cost that the per-audio-second costs are measured above."""
    manifest = out / "one.jsonl"
    manifest.write_text(json.dumps({"audio": rows[0]["path"]}) + "\n", encoding="utf-8")
    shutil.rmtree(out / "one", ignore_errors=True)
    started = time.perf_counter()
    process = subprocess.Popen(command_for("ray-1x1", manifest, out / "one", 1), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    with TreeSampler(process.pid) as sampler:
        process.wait()
    return {"wall_s": time.perf_counter() - started, "audio_s": rows[0]["duration"], "kinds": sampler.by_kind()}


def front_end_cost(rows: list[dict]) -> dict:
    """CPU seconds per audio second of reading the audio and of the log-mel front end (29 s windows, as packed):
    the work that stays on a worker's CPU when the decoder runs on a GPU."""
    import numpy as np
    from faster_whisper.feature_extractor import FeatureExtractor

    from whisper_zh.audio import load_audio

    sample = rows[:100]
    cpu = time.process_time()
    audio = [load_audio(r["path"]) for r in sample]
    read = time.process_time() - cpu
    seconds = sum(len(a) for a in audio) / 16000
    windows = np.concatenate(audio)
    window = 29 * 16000
    extractor = FeatureExtractor(feature_size=80)
    cpu = time.process_time()
    for start in range(0, len(windows) - window + 1, window):
        extractor(windows[start : start + window])
    mel = time.process_time() - cpu
    bytes_per_second = sum(Path(r["path"]).stat().st_size for r in sample) / seconds
    return {"read_cpu_per_audio_s": read / seconds, "mel_cpu_per_audio_s": mel / (len(windows) // window * 29),
            "flac_bytes_per_audio_s": bytes_per_second}


def ray_task_overhead(sample: dict, files_per_group: int, runs: tuple[int, int] = (20, 600)) -> dict:
    """Ray's own cost per group, without decoding: the job runs in this process (the driver) with workers that
    return a real transcription (``sample``) for every file at once. Two sizes, so the fixed part cancels out:
    the driver's CPU seconds and the wall seconds per extra group (``files_per_group`` results each)."""
    import tempfile

    from whisper_zh.distributed import pipeline
    from whisper_zh.distributed.plan import Item
    from whisper_zh.distributed.store import ResultStore, transcription_from_dict
    from whisper_zh.distributed.worker import TranscribeWorker, WorkerSpec

    canned = transcription_from_dict(sample)

    class CannedWorker(TranscribeWorker):
        def __init__(self, spec: WorkerSpec) -> None:  # no model: only Ray's cost is measured
            self.spec, self.worker, self.model = spec, f"canned:{os.getpid()}", "{}"

        def transcribe(self, group: list) -> list:
            return [canned for _ in group]

    real, pipeline.TranscribeWorker = pipeline.TranscribeWorker, CannedWorker
    measured = []
    try:
        for groups in runs:
            items = [Item(f"/corpus/{g:05d}/{i:03d}.flac", f"{g:05d}-{i:03d}", 300 / files_per_group)
                     for g in range(groups) for i in range(files_per_group)]
            with tempfile.TemporaryDirectory() as tmp:
                store = ResultStore(tmp)
                store.claim({"bench": "overhead"})
                started, cpu = time.perf_counter(), time.process_time()
                pipeline.run_job(items, store, WorkerSpec(), pipeline.RayOptions(num_workers=2), progress=False)
                measured.append((time.perf_counter() - started, time.process_time() - cpu))
    finally:
        pipeline.TranscribeWorker = real
    (wall_a, cpu_a), (wall_b, cpu_b) = measured
    extra = runs[1] - runs[0]
    return {"files_per_group": files_per_group, "runs": runs, "measured": measured,
            "driver_cpu_per_group": (cpu_b - cpu_a) / extra, "wall_per_group_2_workers": (wall_b - wall_a) / extra}


# ---------------------------------------------------------------------------------------------------------------
# Reporting


def contender_table(results: list[dict], rows: list[dict]) -> tuple[str, dict]:
    audio = sum(r["duration"] for r in rows)
    names = list(dict.fromkeys(r["name"] for r in results))
    lines = ["| contender | runs | wall s (each run) | audio-s/s (mean) | vs plain (wall) | CPU s (each run) | "
             "CPU s per audio-s | vs plain (CPU) | CER [95% CI] | peak RSS MB per worker |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    stats: dict[str, dict] = {}
    for name in names:
        runs = [r for r in results if r["name"] == name]
        walls, cpus = [r["wall_s"] for r in runs], [r["cpu_s"] for r in runs]
        workers = sorted(rss for r in runs for rss in r["kinds"].get("worker", {}).get("peak_rss_mb", []))
        if name == "plain":
            workers = sorted(rss for r in runs for rss in r["kinds"]["driver"]["peak_rss_mb"])
        stats[name] = {"wall": sum(walls) / len(walls), "cpu": sum(cpus) / len(cpus), "runs": runs,
                       "score": score(rows, runs[-1]["hyps"]), "rss": workers}
    plain = stats.get("plain")
    for name, s in stats.items():
        ratio = f"{plain['wall'] / s['wall']:.2f}x" if plain else ""
        cpu_ratio = f"{plain['cpu'] / s['cpu']:.2f}x" if plain else ""
        sc = s["score"]
        walls = ", ".join(f"{r['wall_s']:.0f}" for r in s["runs"])
        cpus = ", ".join(f"{r['cpu_s']:.0f}" for r in s["runs"])
        lines.append(
            f"| {name} | {len(s['runs'])} | {walls} | {audio / s['wall']:.2f} | {ratio} | {cpus} | "
            f"{s['cpu'] / audio:.3f} | {cpu_ratio} | {100 * sc['cer']:.2f}% [{100 * sc['ci'][0]:.2f}, "
            f"{100 * sc['ci'][1]:.2f}] | {s['rss'][0]}-{s['rss'][-1]} |"
        )
    return "\n".join(lines), stats


def cpu_breakdown(stats: dict, audio: float) -> str:
    lines = ["| contender | driver CPU s | raylet CPU s | gcs_server CPU s | other Ray CPU s | workers CPU s |",
             "|---|---|---|---|---|---|"]
    for name, s in stats.items():
        kinds = s["runs"][-1]["kinds"]
        cells = [kinds.get(k, {}).get("cpu_s", 0.0) for k in ("driver", "raylet", "gcs_server", "ray-other", "worker")]
        lines.append(f"| {name} (last run) | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    return "\n".join(lines) + f"\n\n(audio: {audio:.0f} s)"


def _cpu(kinds: dict, *names: str) -> float:
    return sum(kinds.get(name, {}).get("cpu_s", 0.0) for name in names)


def scaling_model(stats: dict, audio: float, fixed: dict, front: dict, overhead: dict, threads: int,
                  gpu_rtf: float, clip_seconds: float) -> str:
    """Hours of audio per hour of wall time, from measured costs: a worker's marginal CPU per audio second (a full
    run minus the one-clip run), the driver's CPU per group (Ray's task overhead, measured without decoding), the
    fixed cost and the CPU front end of a GPU worker (see RESULTS.md)."""
    full = stats[f"ray-{threads}x1"]["runs"][-1]["kinds"]
    one, extra_audio = fixed["kinds"], audio - fixed["audio_s"]
    # Every worker loads its model once (the one-clip job's worker cost): take that out before dividing.
    worker = (_cpu(full, "worker") - threads * _cpu(one, "worker")) / extra_audio
    node = max(_cpu(full, "raylet") - _cpu(one, "raylet"), 0.0) / extra_audio
    from whisper_zh.transcriber import GROUP_SECONDS

    group_audio = GROUP_SECONDS  # --group-seconds' default: audio per group
    files = group_audio / clip_seconds
    per_group = overhead["driver_cpu_per_group"] * files / overhead["files_per_group"]
    central = group_audio / per_group  # audio-s per s the driver's one core can take in
    front_cpu = front["read_cpu_per_audio_s"] + front["mel_cpu_per_audio_s"]
    cores, corpus_h = 16, 1000.0
    lines = [
        f"Measured here: a 1-thread worker {worker:.3f} CPU-s per audio-s; raylet {node:.5f} CPU-s per audio-s (one "
        f"per node); Ray's task overhead {1000 * overhead['driver_cpu_per_group']:.1f} ms of driver CPU and "
        f"{1000 * overhead['wall_per_group_2_workers']:.0f} ms of wall per group of "
        f"{overhead['files_per_group']} results (2 workers, no decoding); fixed cost {fixed['wall_s']:.0f} s wall, "
        f"{sum(k['cpu_s'] for k in one.values()):.0f} CPU-s (a one-clip job). A GPU worker's CPU front end: "
        f"{front_cpu:.4f} CPU-s per audio-s (reading FLAC {front['read_cpu_per_audio_s']:.4f} + log-mel "
        f"{front['mel_cpu_per_audio_s']:.4f}), so one core feeds at most {1 / front_cpu:.0f} audio-s/s. Input: "
        f"{front['flac_bytes_per_audio_s'] / 1000:.1f} kB per audio-s. Groups of {group_audio:.0f} s "
        f"({files:.0f} clips of {clip_seconds:.2f} s).",
        "",
        f"| cluster | workers' limit (audio-s/s) | driver's limit (audio-s/s) | input read MB/s | "
        f"hours of audio per wall hour ({corpus_h:.0f} h corpus) | limited by |",
        "|---|---|---|---|---|---|",
    ]
    setups = [(f"{n} CPU node{'s' if n > 1 else ''} x {cores} cores", n * cores / (worker + node), "CPU decoding",
               group_audio * worker) for n in (1, 8, 64)]
    # A GPU worker decodes at 1/gpu_rtf (assumed, not measured here); its CPU front end runs in the actor's own
    # process on one core: the slower of the two sets the worker's rate.
    for g in (1, 8):
        rate = min(1 / gpu_rtf, 1 / front_cpu)
        bound = "GPU decoding (assumed rate)" if 1 / gpu_rtf <= 1 / front_cpu else "the worker's CPU front end"
        setups.append((f"{g} GPU{'s' if g > 1 else ''} (1 CPU each)", g * rate, bound, group_audio / rate))
    for label, compute, bound, tail in setups:
        rate = min(compute, central)
        wall_h = (corpus_h * 3600 / rate + fixed["wall_s"] + tail) / 3600  # start-up, then the last group's tail
        limit = "the driver (one core)" if central < compute else bound
        lines.append(f"| {label} | {compute:.0f} | {central:.0f} | "
                     f"{rate * front['flac_bytes_per_audio_s'] / 1e6:.2f} | {corpus_h / wall_h:.0f} | {limit} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="total threads of every contender")
    parser.add_argument("--gpu-rtf", type=float, default=0.005,
                        help="assumed real-time factor of one GPU decoding Whisper base (not measurable here)")
    parser.add_argument("--out", default="out/bench/ray")
    parser.add_argument("--from-results", action="store_true",
                        help="reuse the contender runs saved in OUT/results.json; measure the model's inputs again")
    args = parser.parse_args()
    rows = clips(args.clips)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = ["plain", f"ray-1x{args.threads}", f"ray-{args.threads}x1"]
    if args.from_results:
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))["results"]
    else:
        results = run_contenders(rows, out, names, args)
    fixed = fixed_cost(rows, out)
    front = front_end_cost(rows)
    shard = next((out / f"ray-{args.threads}x1" / "shards").glob("part-*.jsonl"))
    sample = json.loads(shard.read_text(encoding="utf-8").splitlines()[0])["transcription"]
    overhead = ray_task_overhead(sample, files_per_group=64)
    audio = sum(r["duration"] for r in rows)
    table, stats = contender_table(results, rows)
    (out / "results.json").write_text(json.dumps({"results": results, "fixed": fixed, "front": front,
                                                  "overhead": overhead}, ensure_ascii=False, indent=1),
                                      encoding="utf-8")
    print(table)
    print()
    print(cpu_breakdown(stats, audio))
    for name in names[1:]:
        same = sum(a == b for a, b in zip(stats["plain"]["runs"][-1]["hyps"], stats[name]["runs"][-1]["hyps"],
                                          strict=True))
        print(f"transcripts identical to plain's: {name} {same}/{len(rows)}")
    print()
    print(scaling_model(stats, audio, fixed, front, overhead, args.threads, args.gpu_rtf, audio / len(rows)))
    return 0


def run_contenders(rows: list[dict], out: Path, names: list[str], args: argparse.Namespace) -> list[dict]:
    manifest = out / "clips.jsonl"
    manifest.write_text("".join(json.dumps({"audio": r["path"]}) + "\n" for r in rows), encoding="utf-8")
    results = []
    for repeat in range(args.repeats):
        order = names[repeat % len(names):] + names[: repeat % len(names)]
        for name in order:
            print(f"repeat {repeat + 1}: {name} ...", file=sys.stderr, flush=True)
            results.append(run_contender(name, manifest, rows, out / name, args.threads))
            print(f"  {results[-1]['wall_s']} s wall, {results[-1]['cpu_s']} CPU s {results[-1]['summary']}",
                  file=sys.stderr, flush=True)
    return results


if __name__ == "__main__":
    sys.exit(main())

"""Load test for `whisper-zh serve` on loopback: throughput, latency, errors and memory under concurrent clients.

Starts `whisper-zh serve` as a subprocess on 127.0.0.1 (a free port), then runs three bounded phases, each
capped by a request count and a wall-clock limit:

1. sequential: one client (the peer the others are compared with; no batching possible);
2. concurrent: N clients, N <= the queue limit (target: 0 errors; requests share batched decodes);
3. overload: M clients, M > the queue limit, no back-off (target: only 429s beyond the limit, no other error).

Reports throughput (audio seconds per wall second), p50/p95 latency, status counts, batch sizes from /metrics,
and the server's RSS after warm-up and at the end. Only loopback traffic; the server is always stopped.

    .venv/bin/python bench/serve_load.py --clients 4 --requests 16 --overload-clients 12
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "aishell1-sample-S0150"


def serve_arguments(model: str, port: int, queue: int, max_batch: int) -> list[str]:
    """The server's command line. Live streams are off (--max-streams 0): this bench measures the HTTP API, and
    the server refuses --max-streams at or above --max-queue (its default of 4 with --queue 4 would not start)."""
    return ["serve", "--model", model, "--host", "127.0.0.1", "--port", str(port), "--max-queue", str(queue),
            "--max-streams", "0", "--max-batch", str(max_batch), "--log-level", "warning"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="base")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients in phase 2 (<= --queue)")
    ap.add_argument("--requests", type=int, default=16, help="requests in phase 2 (phase 1: a quarter)")
    ap.add_argument("--overload-clients", type=int, default=12, help="clients in phase 3 (> --queue)")
    ap.add_argument("--overload-requests", type=int, default=36, help="requests in phase 3")
    ap.add_argument("--queue", type=int, default=4, help="server --max-queue")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--phase-seconds", type=float, default=180.0, help="wall-clock cap of each phase")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    if args.clients > args.queue:
        ap.error("--clients must not exceed --queue (phase 2 measures below the queue limit)")
    if not (DATA / "manifest.jsonl").is_file():
        print(f"shared data not found at {DATA}", file=sys.stderr)
        return 2

    rows = [json.loads(line) for line in (DATA / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    clips = [(r["id"], (DATA / r["audio"]).read_bytes(), float(r["duration"])) for r in rows[120:160]]

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "whisper_zh", *serve_arguments(args.model, port, args.queue, args.max_batch)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "WHISPER_ZH_API_KEY": ""},
    )
    url = f"http://127.0.0.1:{port}"
    results: dict = {"config": vars(args) | {"json": str(args.json) if args.json else None}}
    try:
        _wait_ready(url, server)
        proc = psutil.Process(server.pid)
        _post(url, clips[0])  # warm-up: first-call allocations are not growth
        results["rss_mb_after_warmup"] = _rss_mb(proc)
        # concurrent twice: RSS after the first round (buffers for full batches allocated) vs the end is growth
        phases = [
            ("sequential", 1, max(2, args.requests // 4)),
            ("concurrent", args.clients, args.requests),
            ("concurrent_again", args.clients, args.requests),
            ("overload", args.overload_clients, args.overload_requests),
        ]
        for name, clients, count in phases:
            before = _batch_stats(url)
            phase = _run_phase(url, clips, clients, count, args.phase_seconds)
            after = _batch_stats(url)
            calls = after[1] - before[1]
            phase["model_calls"] = int(calls)
            phase["mean_batch"] = round((after[0] - before[0]) / calls, 2) if calls else 0.0
            phase["rss_mb_end"] = _rss_mb(proc)
            results[name] = phase
            _print_phase(name, phase)
        results["rss_mb_end"] = _rss_mb(proc)
        base = results["sequential"]["audio_s_per_wall_s"]
        results["concurrent_vs_sequential"] = (
            round(results["concurrent"]["audio_s_per_wall_s"] / base, 2) if base else None
        )
    finally:
        server.terminate()
        try:
            code = server.wait(120)
        except subprocess.TimeoutExpired:
            server.kill()
            code = server.wait()
        results["server_exit_code"] = code

    steady = results["concurrent"]["rss_mb_end"]
    print(
        f"\nthroughput ratio concurrent/sequential: {results['concurrent_vs_sequential']}x  "
        f"RSS after warm-up {results['rss_mb_after_warmup']:.0f} MB, after the first concurrent round "
        f"{steady:.0f} MB, at end {results['rss_mb_end']:.0f} MB (growth since the first round "
        f"{results['rss_mb_end'] - steady:+.0f} MB); server exit code {results['server_exit_code']}"
    )
    below = Counter(results["concurrent"]["statuses"]) + Counter(results["concurrent_again"]["statuses"])
    bad = {k: v for k, v in below.items() if k != "200"}
    over = {k: v for k, v in results["overload"]["statuses"].items() if k not in ("200", "429")}
    print(f"errors below the queue limit: {sum(bad.values())} {bad or ''}; "
          f"errors other than 429 above it: {sum(over.values())} {over or ''}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0 if not bad and not over else 1


def _run_phase(url: str, clips: list, clients: int, count: int, limit_s: float) -> dict:
    """``clients`` threads share a budget of ``count`` requests; stop at the budget or after ``limit_s``."""
    lock = threading.Lock()
    budget = [count]
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    audio_ok = [0.0]
    deadline = time.monotonic() + limit_s

    def client(index: int) -> None:
        i = index
        with httpx.Client(timeout=limit_s + 60) as session:
            while time.monotonic() < deadline:
                with lock:
                    if budget[0] <= 0:
                        return
                    budget[0] -= 1
                clip = clips[i % len(clips)]
                i += clients
                started = time.perf_counter()
                try:
                    response = _post(url, clip, session)
                    status = str(response.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                elapsed = time.perf_counter() - started
                with lock:
                    statuses[status] += 1
                    if status == "200":
                        latencies.append(elapsed)
                        audio_ok[0] += clip[2]

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "clients": clients,
        "requests": sum(statuses.values()),
        "statuses": dict(statuses),
        "wall_s": round(wall, 2),
        "audio_s_ok": round(audio_ok[0], 2),
        "audio_s_per_wall_s": round(audio_ok[0] / wall, 3),
        "p50_latency_s": round(float(np.percentile(lat, 50)), 2),
        "p95_latency_s": round(float(np.percentile(lat, 95)), 2),
    }


def _post(url: str, clip: tuple, session: httpx.Client | None = None) -> httpx.Response:
    name, data, _ = clip
    post = session.post if session is not None else httpx.post
    return post(f"{url}/v1/audio/transcriptions", files={"file": (f"{name}.flac", data)},
                data={"model": "whisper-1"}, timeout=600)


def _batch_stats(url: str) -> tuple[float, float]:
    from prometheus_client.parser import text_string_to_metric_families

    values = {s.name: s.value for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
              for s in f.samples}
    return values.get("whisper_zh_batch_size_sum", 0.0), values.get("whisper_zh_batch_size_count", 0.0)


def _print_phase(name: str, p: dict) -> None:
    print(
        f"{name:>10}: {p['clients']:>2} clients, {p['requests']:>3} requests in {p['wall_s']:.1f} s, "
        f"statuses {p['statuses']}, {p['audio_s_per_wall_s']:.2f} audio s/wall s, "
        f"p50 {p['p50_latency_s']:.2f} s, p95 {p['p95_latency_s']:.2f} s, "
        f"{p['model_calls']} model calls (mean batch {p['mean_batch']}), RSS {p['rss_mb_end']:.0f} MB",
        flush=True,
    )


def _rss_mb(proc: psutil.Process) -> float:
    return proc.memory_info().rss / (1 << 20)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, server: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited: {server.stderr.read() if server.stderr else ''}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready")


if __name__ == "__main__":
    sys.exit(main())

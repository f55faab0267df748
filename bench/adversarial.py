"""Adversarial bench for `whisper-zh serve` on loopback: what hostile and careless clients get, how fast, and
what they cost the server in memory.

Starts `whisper-zh serve` (default settings) as a subprocess on 127.0.0.1 (a free port) and runs bounded cases:
a real request (the peer every case is compared with), decompression bombs (FLAC of 2 h, mostly silence, with an
honest header and with no length in its header, an 8-bit 8 kHz WAV of 52 min), 16 stalled uploads next to a real
request, 300 half-open connections next to /health, a truncated WAV, an unknown language, Content-Length with
Transfer-Encoding, a cross-origin POST and an oversized upload. Per case it prints the HTTP status, the wall
time and the server's peak RSS over its idle RSS (sampled every 5 ms). Every loop is bounded in count and time;
only loopback traffic; the server is always stopped.

    .venv/bin/python bench/adversarial.py [--json out/bench/adversarial.json]

Targets (issue 11): the bombs answer 413 within 2 s with peak RSS under 500 MB over idle; with 16 stalled
uploads a real request still gets 200 within 10 s. Issue 30's cases (bench/adversarial_cases.py) follow: a fast
live sender (--fast-sender-minutes of speech at once), OpenAI's SDK in both session shapes, a partly bad session
update, bad query values, DNS rebinding, forwarded headers, a 1 MB prompt, aborted streams (--aborts), then on a
second server with an API key and short live timeouts: key guessing, keys in logged URLs, a byte-dribbling
stream and SIGTERM with a stream open; and the CLI's: evaluate without durations, --ray into a folder that cannot
be written, live --speed nan/inf, and --tiny-clips clips of 0.1 s. Each has a target; the summary counts cases
tried, held and lost. Exit status 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import psutil
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "examples" / "BAC009S0150W0122.flac"  # 7.2 s of AISHELL-1 speech, shipped with the repo


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="base")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--fast-sender-minutes", type=float, default=6.0, help="speech sent at once (default: 6)")
    ap.add_argument("--aborts", type=int, default=200, help="aborted live streams (default: 200)")
    ap.add_argument("--tiny-clips", type=int, default=1000, help="clips of 0.1 s for the CLI (default: 1000)")
    args = ap.parse_args()
    bombs = {"honest": _flac_tone(7200), "unknown-length": _flac_tone(7200, unknown_length=True)}
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "whisper_zh", "serve", "--model", args.model, "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "WHISPER_ZH_API_KEY": ""},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, server)
        bench = _Bench(url, psutil.Process(server.pid))
        _run_cases(bench, bombs)
        _run_issue30_cases(bench, args)
    finally:
        server.terminate()
        try:
            server.wait(150)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    _run_keyed_server_cases(bench, args)
    _run_cli_cases(bench, args)
    return _report(bench, args.json)


def _start_server(model: str, extra: list[str], log: Path | None = None) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "whisper_zh", "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port),
         *extra], stdout=subprocess.DEVNULL, stderr=log.open("w") if log else subprocess.PIPE, text=True,
        env={**os.environ, "WHISPER_ZH_API_KEY": ""})
    return server, f"http://127.0.0.1:{port}"


def _run_issue30_cases(b: _Bench, args: argparse.Namespace) -> None:
    from adversarial_cases import (
        aborted_streams,
        fast_sender,
        http_get,
        openai_sdk,
        partial_update,
        query_value,
    )

    minutes = args.fast_sender_minutes
    b.case(f"live: {minutes:g} min of speech sent at once", lambda: fast_sender(b.url, minutes),
           target=lambda status, _s, _mb: status.startswith("finished"))
    for current in (True, False):
        shape = "session.update" if current else "transcription_session.update"
        b.case(f"live: OpenAI SDK, 24 kHz, {shape}", lambda c=current: openai_sdk(b.url, current=c),
               target=lambda status, _s, _mb: status == "rate 24000, heard at 24 kHz")
    b.case("live: session.update, one bad field of three", lambda: partial_update(b.url),
           target=lambda status, _s, _mb: status.endswith("unchanged"))
    for query in ("sample_rate=%C2%B2", "sample_rate=%EF%BC%91%EF%BC%96%EF%BC%90%EF%BC%90%EF%BC%90",
                  "prompt=" + "x" * 5000, "language=%00"):
        b.case(f"live: ?{query[:40]}", lambda q=query: query_value(b.url, q),
               target=lambda status, _s, _mb: status.startswith("error invalid_value"))
    port = b.url.rsplit(":", 1)[1]
    b.case("DNS rebinding: Host: evil.example", lambda: http_get(b.url, "/v1/models", {"Host": f"evil.example:{port}"}),
           target=lambda status, _s, _mb: status.startswith("403"))
    b.case("X-Forwarded-Host from an untrusted peer", lambda: http_get(
        b.url, "/v1/models", {"Origin": "https://evil.example", "X-Forwarded-Host": "evil.example"}),
        target=lambda status, _s, _mb: status.startswith("403"))
    b.case("1 MB prompt", lambda: _timed_post(b.url, CLIP.read_bytes(), "clip.flac", prompt="x" * 1_000_000),
           target=lambda status, _s, _mb: status.startswith("400"))
    b.case(f"live: {args.aborts} aborted streams (90 s of audio each)",
           lambda: aborted_streams(b.url, b.process, args.aborts),
           target=lambda status, _s, _mb: status.startswith("flat"))


def _run_keyed_server_cases(b: _Bench, args: argparse.Namespace) -> None:
    """A second server: an API key, a 5 s speech timeout (3 s idle), its log in a file; SIGTERM ends it."""
    import tempfile

    from adversarial_cases import byte_dribbler, key_in_url, sigterm_with_stream, wrong_keys

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        key = "sesame-8f3a"
        server, url = _start_server(args.model, ["--api-key", key, "--log-level", "info",
                                                 "--stream-speech-timeout", "5", "--stream-idle-timeout", "3"], log)
        keyed = _Bench(url, psutil.Process(server.pid))
        keyed.peer = b.peer
        try:
            _wait_ready(url, server)
            keyed.case("API key in the WebSocket URL", lambda: key_in_url(url, log, key),
                       target=lambda status, _s, _mb: status == "redacted")
            keyed.case("live: 2 bytes of silence a second", lambda: byte_dribbler(url, 30, key),
                       target=lambda status, _s, _mb: status == "error speech_timeout")
            keyed.case("12 wrong keys, X-Forwarded-For rotated", lambda: wrong_keys(url, 12),
                       target=lambda status, _s, _mb: status.endswith("then 429"))
            time.sleep(61)  # the wrong-key window passes (the right key is refused during it too)
            keyed.case("SIGTERM with a live stream open", lambda: sigterm_with_stream(url, server, key),
                       target=lambda status, _s, _mb: status.startswith("finished") and status.endswith("exit 0"))
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        b.rows += keyed.rows


def _run_cli_cases(b: _Bench, args: argparse.Namespace) -> None:
    from adversarial_cases import cli, evaluate_without_duration, ray_unwritable, tiny_clips

    one_line = lambda status, _s, _mb: status.startswith("exit 2") and "traceback" not in status  # noqa: E731
    b.process = psutil.Process()  # no server: the bench's own process
    b.idle_mb = b.process.memory_info().rss / 2**20
    b.case("evaluate: manifest rows without duration", evaluate_without_duration,
           target=lambda status, _s, _mb: status.startswith("exit 0"))
    b.case("transcribe --ray into a folder that cannot be written", ray_unwritable, target=one_line)
    for speed in ("nan", "inf", "-1"):
        b.case(f"live --speed {speed}", lambda v=speed: cli(["live", str(CLIP), f"--speed={v}"]), target=one_line)
    b.case(f"transcribe: {args.tiny_clips} clips of 0.1 s", lambda: tiny_clips(args.tiny_clips),
           target=lambda status, seconds, _mb: status.startswith(f"{args.tiny_clips}/") and (
               seconds < 60 or float(status.split("at ")[1].split("%")[0]) < 50),
           note="held if every clip is written, within a minute (start-up included) or with the first output "
                "before half the run is over")


class _Bench:
    """Runs cases against one server, sampling its RSS while each runs."""

    def __init__(self, url: str, process: psutil.Process) -> None:
        self.url, self.process = url, process
        self.idle_mb = process.memory_info().rss / 2**20
        self.rows: list[dict] = []
        self.peer: dict | None = None  # the first case, a real request: every case's time and memory against it

    def case(self, name: str, run: Callable[[], tuple[str, float]], *, target: Callable[[str, float, float], bool]
             | None = None, note: str = "") -> None:
        peak = [self.process.memory_info().rss]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.005):
                try:
                    peak[0] = max(peak[0], self.process.memory_info().rss)
                except psutil.Error:  # the case ended the server (SIGTERM)
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cpu = self.process.cpu_times()
        try:
            status, seconds = run()
        finally:
            stop.set()
            sampler.join()
        try:
            cpu_after = self.process.cpu_times()
        except psutil.Error:
            cpu_after = cpu
        server_cpu = (cpu_after.user - cpu.user) + (cpu_after.system - cpu.system)
        over_idle = peak[0] / 2**20 - self.idle_mb
        met = None if target is None else target(status, seconds, over_idle)
        row = {"case": name, "status": status, "seconds": round(seconds, 3), "server_cpu_s": round(server_cpu, 2),
               "peak_rss_over_idle_mb": round(over_idle, 1), "target_met": met, "note": note}
        self.peer = self.peer or row
        row["time_vs_real_request"] = round(seconds / self.peer["seconds"], 2)
        row["rss_vs_real_request"] = round(over_idle / max(self.peer["peak_rss_over_idle_mb"], 1.0), 2)
        self.rows.append(row)
        mark = "" if met is None else ("  [target met]" if met else "  [TARGET MISSED]")
        print(f"{name:<48} {status:<26} {seconds:6.2f} s ({row['time_vs_real_request']:5.2f}x)  "
              f"cpu {server_cpu:5.2f} s  peak RSS +{over_idle:6.1f} MB ({row['rss_vs_real_request']:4.2f}x){mark}",
              flush=True)


def _run_cases(b: _Bench, bombs: dict[str, bytes]) -> None:
    clip = CLIP.read_bytes()
    bomb_target = _bomb_target
    b.case("real request (7.2 s of speech)", lambda: _timed_post(b.url, clip, "clip.flac"))
    b.case("real request again", lambda: _timed_post(b.url, clip, "clip.flac"))
    b.case(f"FLAC bomb: 2 h, {len(bombs['honest']) / 1e6:.2f} MB, honest header",
           lambda: _timed_post(b.url, bombs["honest"], "bomb.flac"), target=bomb_target)
    b.case(f"FLAC bomb: 2 h, {len(bombs['unknown-length']) / 1e6:.2f} MB, no length in header",
           lambda: _timed_post(b.url, bombs["unknown-length"], "bomb.flac"), target=bomb_target)
    wav = _wav_u8_8k(52 * 60)
    b.case(f"8-bit 8 kHz WAV, 52 min, {len(wav) / 1e6:.1f} MB", lambda: _timed_post(b.url, wav, "long.wav"),
           target=bomb_target)
    b.case("16 stalled uploads + 1 real request", lambda: _stalled_and_real(b.url, clip, 16),
           target=lambda status, seconds, _mb: status.startswith("200") and seconds < 10,
           note="status and time of the real request; the stalled ones' answers follow")
    b.case("  ... the 16 stalled uploads", lambda: _stalled_answers(b.url, 16))
    b.case("300 half-open connections + GET /health", lambda: _half_open_then_health(b.url, 300),
           target=lambda status, seconds, _mb: status == "200" and seconds < 2)
    cut = _truncated_wav(clip)
    b.case("truncated WAV (half the samples)", lambda: _timed_post(b.url, cut, "cut.wav"))
    b.case("truncated WAV, allow_truncated=true", lambda: _timed_post(b.url, cut, "cut.wav", allow_truncated="true"))
    b.case("language=xx", lambda: _timed_post(b.url, clip, "clip.flac", language="xx"))
    b.case("Content-Length + Transfer-Encoding: chunked", lambda: _ambiguous_length(b.url))
    b.case("cross-origin POST (Origin: https://evil.example)",
           lambda: _timed_post(b.url, clip, "clip.flac", headers={"Origin": "https://evil.example"}))
    b.case("30 MB upload (limit 25 MB)", lambda: _timed_post(b.url, b"\0" * (30 << 20), "big.wav"))
    b.case("counters after all cases (/health)", lambda: _counters(b.url))


def _bomb_target(status: str, seconds: float, over_idle_mb: float) -> bool:
    return status.startswith("413") and seconds < 2.0 and over_idle_mb < 500


def _timed_post(url: str, data: bytes, name: str, headers: dict | None = None, **form: str) -> tuple[str, float]:
    started = time.perf_counter()
    response = httpx.post(f"{url}/v1/audio/transcriptions", files={"file": (name, data)},
                          data={"model": "whisper-1", **form}, headers=headers, timeout=300)
    seconds = time.perf_counter() - started
    code = response.json().get("error", {}).get("code") if response.status_code >= 400 else None
    return f"{response.status_code} {code or ''}".strip(), seconds


_stalled: list[tuple[socket.socket, float]] = []


def _stalled_and_real(url: str, clip: bytes, count: int) -> tuple[str, float]:
    """``count`` clients send an upload's headers and a few bytes, then nothing; then a real request."""
    port = int(url.rsplit(":", 1)[1])
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        sock.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/"
                     b"form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n--b\r\n")
        _stalled.append((sock, time.perf_counter()))
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/health").json()["uploads"]["in_progress"] < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return _timed_post(url, clip, "clip.flac")


def _stalled_answers(url: str, count: int) -> tuple[str, float]:
    statuses, last = set(), 0.0
    for sock, started in _stalled[:count]:
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        last = max(last, time.perf_counter() - started)
        statuses.add(answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "closed")
        sock.close()
    return f"{'/'.join(sorted(statuses))} x{count}", last


def _half_open_then_health(url: str, count: int) -> tuple[str, float]:
    port = int(url.rsplit(":", 1)[1])
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(b"GET /hea")
            sockets.append(sock)
        started = time.perf_counter()
        status = httpx.get(f"{url}/health", timeout=30).status_code
        return str(status), time.perf_counter() - started
    finally:
        for sock in sockets:
            sock.close()


def _ambiguous_length(url: str) -> tuple[str, float]:
    port = int(url.rsplit(":", 1)[1])
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        answer = sock.recv(65536)
    return answer.split(b" ", 2)[1].decode(), time.perf_counter() - started


def _counters(url: str) -> tuple[str, float]:
    started = time.perf_counter()
    deadline = time.monotonic() + 30
    while True:
        health = httpx.get(f"{url}/health").json()
        idle = health["queue"]["in_flight"] == 0 and health["uploads"]["in_progress"] == 0
        if idle or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    state = f"in_flight={health['queue']['in_flight']} uploads={health['uploads']['in_progress']}"
    return state, time.perf_counter() - started


def _flac_tone(seconds: int, *, unknown_length: bool = False) -> bytes:
    """FLAC that decodes to ``seconds`` of audio: one second of a 440 Hz tone at the start of every minute, silence
    between (silence compresses to almost nothing: 2 h is about 1.1 MB), written a minute at a time."""
    buffer = io.BytesIO()
    minute = np.zeros(60 * 16000, np.float32)
    minute[:16000] = 0.1 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    with sf.SoundFile(buffer, "w", 16000, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(seconds // 60):
            f.write(minute)
    data = bytearray(buffer.getvalue())
    if unknown_length:  # STREAMINFO's 36-bit total sample count (bytes 21-25) set to 0: "not known"
        data[21] &= 0xF0
        data[22:26] = struct.pack(">I", 0)
    return bytes(data)


def _wav_u8_8k(seconds: int) -> bytes:
    buffer = io.BytesIO()
    tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.float32)
    with sf.SoundFile(buffer, "w", 8000, 1, format="WAV", subtype="PCM_U8") as f:
        for _ in range(seconds):
            f.write(tone)
    return buffer.getvalue()


def _truncated_wav(flac: bytes) -> bytes:
    audio, rate = sf.read(io.BytesIO(flac), dtype="float32")
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()[: 44 + len(audio)]


def _report(bench: _Bench, json_path: Path | None) -> int:
    missed = [row["case"] for row in bench.rows if row["target_met"] is False]
    held = sum(row["target_met"] is True for row in bench.rows)
    print(f"\ncases tried {len(bench.rows)}, held {held}, lost {len(missed)} "
          f"(the other {len(bench.rows) - held - len(missed)} have no target); targets missed: {missed or 'none'}")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"idle_rss_mb": bench.idle_mb, "cases": bench.rows}, indent=2) + "\n")
    return 1 if missed else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit("server did not come up within 180 s")


if __name__ == "__main__":
    sys.exit(main())

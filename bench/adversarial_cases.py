"""The cases of issue 30 for bench/adversarial.py: fast live senders, OpenAI's own realtime client, session updates
and query values that broke the handler, DNS rebinding, forwarding headers, key guessing, keys in logged URLs, a
1 MB prompt, byte-dribbling live clients, SIGTERM with live streams open, aborted streams, and the CLI's bad
inputs (a manifest without durations, --ray into a folder that cannot be written, live --speed nan, many tiny
clips). Each case returns (what happened, seconds) and adversarial.py decides held or lost.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
import soxr
from websockets.sync.client import connect

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "aishell1-sample-S0150"
CLIPS = [REPO / "examples" / "BAC009S0150W0121.flac", REPO / "examples" / "BAC009S0150W0122.flac"]


def speech(minutes: float) -> tuple[np.ndarray, str]:
    """``minutes`` of read news (the shared S0150 clips in order, else the two examples repeated) and its text."""
    rows = []
    manifest = SHARED / "manifest.jsonl"
    if manifest.is_file():
        rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = [(SHARED / r["audio"], r["text"]) for r in rows if r.get("domain") == "news"]
    if not rows:
        rows = [(p, "") for p in CLIPS]
    audio, text, total, i = [], [], 0, 0
    while total < minutes * 60 * 16000:
        path, reference = rows[i % len(rows)]
        samples, _ = sf.read(path, dtype="float32")
        audio.append(samples)
        text.append(reference)
        total += len(samples)
        i += 1
    return np.concatenate(audio), "".join(text)


def _pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _ws(url: str) -> str:
    return url.replace("http://", "ws://") + "/v1/realtime"


def _until(ws, kind: str, timeout: float = 600) -> list[dict]:  # noqa: ANN001
    events, deadline = [], time.monotonic() + timeout
    while True:
        events.append(json.loads(ws.recv(timeout=max(1.0, deadline - time.monotonic()))))
        if events[-1]["type"] in (kind, "transcription_session.finished"):
            return events


def fast_sender(url: str, minutes: float) -> tuple[str, float]:
    """Defect 1: ``minutes`` of speech as fast as the socket takes it, with the client's default keep-alive."""
    from whisper_zh.metrics import cer
    from whisper_zh.normalize import TextNormalizer

    audio, reference = speech(minutes)
    started = time.perf_counter()
    try:
        with connect(_ws(url)) as ws:
            ws.recv(timeout=60)
            pcm = _pcm16(audio)
            for start in range(0, len(pcm), 6400):
                ws.send(pcm[start:start + 6400])
            ws.send(json.dumps({"type": "transcription_session.finish"}))
            finished = _until(ws, "transcription_session.finished", timeout=3600)[-1]
    except Exception as exc:  # noqa: BLE001 - the bench reports what the client saw
        return f"lost: {type(exc).__name__} {str(exc)[:60]}", time.perf_counter() - started
    seconds = time.perf_counter() - started
    whole = abs(finished.get("duration", 0) - len(audio) / 16000) < 0.5
    rate = cer(reference, finished.get("text", ""), normalizer=TextNormalizer()).rate if reference else float("nan")
    return (f"{'finished' if whole else 'short'} {len(audio) / 16000:.0f} s, {len(finished.get('text', ''))} chars, "
            f"CER {rate:.3f}"), seconds


def openai_sdk(url: str, *, current: bool) -> tuple[str, float]:
    """Defect 8: OpenAI's SDK, 24 kHz PCM16, the rate never named outside OpenAI's own session shape."""
    import openai

    audio, _ = speech(0.2)
    pcm = _pcm16(soxr.resample(audio, 16000, 24000).astype(np.float32))
    client = openai.OpenAI(api_key="unused", base_url=url + "/v1", websocket_base_url=_ws(url).removesuffix("/realtime"))
    realtime = client.realtime if current else client.beta.realtime
    started = time.perf_counter()
    with realtime.connect(model="whisper-1", extra_query={"intent": "transcription"}) as connection:
        if current:
            connection.session.update(session={"type": "transcription", "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 24000}, "transcription": {"model": "whisper-1", "language": "zh"}}}})
        else:
            connection.transcription_session.update(session={
                "input_audio_format": "pcm16", "input_audio_transcription": {"model": "whisper-1", "language": "zh"}})
        rate = None
        for event in connection:
            if event.type.endswith("session.updated"):
                rate = event.model_dump()["session"].get("sample_rate")
                break
        for start in range(0, len(pcm), 9600):
            connection.input_audio_buffer.append(audio=base64.b64encode(pcm[start:start + 9600]).decode())
        connection.send({"type": "transcription_session.finish"})
        duration = None
        for event in connection:
            if event.type == "transcription_session.finished":
                duration = event.model_dump()["duration"]
                break
    heard = "at 24 kHz" if duration and abs(duration - len(audio) / 16000) < 0.2 else f"as {duration} s"
    return f"rate {rate}, heard {heard}", time.perf_counter() - started


def partial_update(url: str) -> tuple[str, float]:
    """Defect 4: one bad field among good ones; then an empty update shows what the session holds."""
    started = time.perf_counter()
    with connect(_ws(url)) as ws:
        ws.recv(timeout=60)
        ws.send(json.dumps({"type": "session.update", "session": {"input_audio_format": "float32",
                                                                   "script": "traditional", "sample_rate": "fast"}}))
        error = _until(ws, "error", 60)[-1]
        ws.send(json.dumps({"type": "session.update", "session": {}}))
        state = _until(ws, "transcription_session.updated", 60)[-1]["session"]
    unchanged = (state["input_audio_format"], state["script"]) == ("pcm16", "simplified")
    return f"{error['type']}, session {'unchanged' if unchanged else 'partly changed'}", time.perf_counter() - started


def query_value(url: str, query: str) -> tuple[str, float]:
    """Defect 5: a query value the handler must refuse in one line, not crash on."""
    started = time.perf_counter()
    try:
        with connect(_ws(url) + "?" + query) as ws:
            event = json.loads(ws.recv(timeout=60))
            ws.recv(timeout=10)
    except Exception as exc:  # noqa: BLE001
        closed = getattr(getattr(exc, "rcvd", None), "code", None)
        event = locals().get("event", {})
        code = event.get("error", {}).get("code") if event else None
        return f"error {code}, closed {closed}", time.perf_counter() - started
    return "accepted", time.perf_counter() - started


def http_get(url: str, path: str, headers: dict) -> tuple[str, float]:
    started = time.perf_counter()
    response = httpx.get(url + path, headers=headers, timeout=60)
    code = response.json().get("error", {}).get("code") if response.status_code >= 400 else None
    return f"{response.status_code} {code or ''}".strip(), time.perf_counter() - started


def wrong_keys(url: str, tries: int) -> tuple[str, float]:
    """Wrong keys, each from a claimed different X-Forwarded-For address: the statuses of the last tries."""
    started = time.perf_counter()
    statuses = [httpx.get(url + "/v1/models", timeout=60, headers={
        "Authorization": f"Bearer guess-{i}", "X-Forwarded-For": f"203.0.113.{i % 250}"}).status_code
        for i in range(tries)]
    return f"{statuses.count(401)}x401 then {statuses[-1]}", time.perf_counter() - started


def key_in_url(url: str, log: Path, secret: str) -> tuple[str, float]:
    started = time.perf_counter()
    with connect(_ws(url) + f"?api_key={secret}&language=zh",
                 additional_headers={"Authorization": f"Bearer {secret}"}) as ws:
        ws.recv(timeout=60)
    httpx.get(url + f"/health?token={secret}", timeout=60)
    time.sleep(0.5)
    text = log.read_text(errors="replace")
    return ("secret in log" if secret in text else "redacted"), time.perf_counter() - started


def byte_dribbler(url: str, limit_s: float, key: str | None = None) -> tuple[str, float]:
    """Two bytes of silence every second: never idle; closed for want of speech?"""
    started = time.perf_counter()
    code = None
    with connect(_ws(url), additional_headers=_auth(key)) as ws:
        ws.recv(timeout=60)
        try:
            while time.perf_counter() - started < limit_s:
                ws.send(b"\x00\x00")
                try:
                    event = json.loads(ws.recv(timeout=1.0))
                except TimeoutError:
                    continue
                if event["type"] == "error":
                    code = event["error"]["code"]
        except Exception:  # noqa: BLE001 - closed by the server
            pass
    return f"error {code}" if code else "still open", time.perf_counter() - started


def sigterm_with_stream(url: str, server: subprocess.Popen, key: str | None = None) -> tuple[str, float]:
    """SIGTERM while a live stream has audio in: does it get its final text?"""
    audio, _ = speech(0.15)
    events: list[dict] = []
    ready = threading.Event()

    def client() -> None:
        try:
            with connect(_ws(url), additional_headers=_auth(key)) as ws:
                ws.recv(timeout=60)
                ws.send(_pcm16(audio))
                for message in ws:
                    events.append(json.loads(message))
                    if events[-1]["type"] == "input_audio_buffer.speech_started":
                        ready.set()
        except Exception:  # noqa: BLE001
            ready.set()

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    ready.wait(120)
    started = time.perf_counter()
    server.send_signal(signal.SIGTERM)
    thread.join(300)
    finished = [e for e in events if e["type"] == "transcription_session.finished"]
    status = f"finished, {len(finished[0]['text'])} chars" if finished else "closed without text"
    server.wait(300)
    return f"{status}; exit {server.returncode}", time.perf_counter() - started


def aborted_streams(url: str, process, count: int) -> tuple[str, float]:  # noqa: ANN001
    """``count`` streams send 90 s of audio at once and vanish without a close frame; the server's RSS growth
    after the first 20."""
    frame = _pcm16(np.random.default_rng(0).normal(0, 1e-3, 90 * 16000).astype(np.float32))
    started = time.perf_counter()
    warm = None
    for i in range(count):
        ws = connect(_ws(url))
        ws.recv(timeout=60)
        ws.send(frame)
        ws.socket.shutdown(socket.SHUT_RDWR)
        ws.close()
        deadline = time.monotonic() + 60
        while httpx.get(url + "/health").json()["live_streams"]["open"] and time.monotonic() < deadline:
            time.sleep(0.05)
        if i == min(19, count - 1):
            warm = process.memory_info().rss
    grown = (process.memory_info().rss - warm) / 2**20
    return f"{'flat' if grown < 20 else 'grows'}: +{grown:.1f} MB over {count - 20} streams", \
        time.perf_counter() - started


def cli(args: list[str], timeout: float = 600) -> tuple[str, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "whisper_zh", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    err = [line for line in done.stderr.strip().splitlines() if line.strip()]
    traceback = any("Traceback" in line for line in err)
    last = err[-1][:70] if err else ""
    return f"exit {done.returncode}{', traceback' if traceback else ''}: {last}", time.perf_counter() - started


def evaluate_without_duration() -> tuple[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "m.jsonl"
        manifest.write_text("".join(json.dumps({"audio": str(p), "text": "测试"}) + "\n" for p in CLIPS))
        return cli(["evaluate", "--data", str(manifest), "--output-dir", str(Path(tmp) / "out"), "--resamples", "100"])


def ray_unwritable() -> tuple[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        blocker = Path(tmp) / "file"
        blocker.write_text("x")
        return cli(["transcribe", str(CLIPS[0]), "--ray", "--output-dir", str(blocker / "out"), "--quiet"])


def tiny_clips(count: int) -> tuple[str, float]:
    """``count`` clips of 0.1 s: when does the first output appear, and when the last?"""
    audio, _ = speech(0.5)
    with tempfile.TemporaryDirectory() as tmp:
        folder, out = Path(tmp) / "clips", Path(tmp) / "out"
        folder.mkdir()
        for i in range(count):
            start = (i * 7919) % (len(audio) - 1600)
            sf.write(folder / f"c{i:04d}.flac", audio[start:start + 1600], 16000)
        started = time.perf_counter()
        run = subprocess.Popen([sys.executable, "-m", "whisper_zh", "transcribe", str(folder), "--output-dir",
                                str(out), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        first = None
        while run.poll() is None:
            if first is None and out.is_dir() and any(out.iterdir()):
                first = time.perf_counter() - started
            time.sleep(0.2)
        total = time.perf_counter() - started
        written = len(list(out.glob("*.txt"))) if out.is_dir() else 0
    share = 100 * (first if first is not None else total) / total
    return f"{written}/{count} written; the first at {share:.0f}% of the run", total

"""Live transcription over /v1/realtime: latency, accuracy, retractions and streams per CPU, measured in one run.

The long-form file is the shared S0150 clips W0300-W0399 joined end to end (np.concatenate of their audio: 100 news
sentences, 9.0 min, continuous read speech with the clips' own pauses between sentences). One process runs
`whisper-zh serve`'s app (uvicorn in a thread, the embedded base, int8, the server's defaults: beam 5, the Mandarin
prompt) and N WebSocket clients that each send the file in 100 ms PCM16 chunks at real-time speed, as a microphone
would. The peer, measured in the same run on the same file: offline ``Transcriber("base").transcribe(file)``.

Reported per run of N streams:
- latency from a word's end in the audio to its committed text reaching the client: p50, p95, max (word ends are
  the aligner's times for the committed characters; targets p50 <= 2.0 s, p95 <= 4.0 s);
- time to the first partial (or committed) text after speech starts (speech start: the session's
  speech_started time, which includes the VAD's 0.4 s padding, so this is slightly pessimistic);
- CER of the committed text (TextNormalizer(), as every bench here) with a 95% bootstrap interval over clips, and
  its difference from the offline CER (paired bootstrap over the same clips; target: at most +1.5 points);
- retractions: the share of text updates (partial or completed) after which the text on screen no longer starts
  with what was on screen before; committed text must never change (counted, must be 0);
- keeping up: how far the sender fell behind real time (the server stops reading a stream whose buffer is full),
  how long after the audio ended the last text came, and CPU seconds of the process per second of audio.

Run: .venv/bin/python bench/live.py [--clips 100] [--streams 1,2,4] [--speed 1.0] [--workers 2 --threads 1] [--repeats 3]
     .venv/bin/python bench/live.py --fast [--context-chars 0] [--encoder-padding none]   (accuracy only: the session fed all at once)
Latency depends on the CPU: on a shared machine, report CPU seconds beside wall time and say so.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "aishell1-sample-S0150"
SAMPLE_RATE = 16000
CHUNK_SECONDS = 0.1


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def long_file(first: int, count: int) -> tuple[np.ndarray, list[str]]:
    """Clips W{first}..W{first+count-1} of S0150 joined end to end, and their references."""
    manifest = DATA / "manifest.jsonl"
    if not manifest.is_file():
        sys.exit(f"shared data not found at {DATA}")
    rows = {json.loads(line)["id"]: json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()}
    ids = [f"BAC009S0150W{n:04d}" for n in range(first, first + count)]
    audio = np.concatenate([sf.read(DATA / rows[i]["audio"], dtype="float32")[0] for i in ids])
    return audio.astype(np.float32), [rows[i]["text"] for i in ids]


# -- scoring -------------------------------------------------------------------------------------------------


def clip_errors(refs: list[str], hyp: str) -> tuple[np.ndarray, np.ndarray]:
    """Character errors and reference lengths per clip, for one hypothesis of the whole joined file: the
    normalised hypothesis is aligned to the joined references, and each edit is charged to the clip of its
    reference character (an insertion to the clip of the character before it)."""
    from whisper_zh.metrics import align
    from whisper_zh.normalize import TextNormalizer

    normalize = TextNormalizer()
    parts = [normalize(r) for r in refs]
    owner = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    alignment = align(list("".join(parts)), list(normalize(hyp)))
    errors = np.zeros(len(parts), np.int64)
    for op, r0, r1, h0, h1 in alignment.chunks:
        if op in ("substitute", "delete"):
            np.add.at(errors, owner[r0:r1], 1)
        elif op == "insert":
            errors[owner[min(max(r0 - 1, 0), len(owner) - 1)]] += h1 - h0
    return errors, np.array([len(p) for p in parts])


def cer_with_ci(errors: np.ndarray, lengths: np.ndarray) -> tuple[float, float, float]:
    from whisper_zh.metrics import bootstrap_ci

    low, high = bootstrap_ci(errors, lengths, n_resamples=1000)
    return errors.sum() / lengths.sum(), low, high


def accuracy(errors: tuple[np.ndarray, np.ndarray], offline: tuple[np.ndarray, np.ndarray]) -> str:
    """One line: the CER of ``errors`` with its interval, and its paired difference from offline."""
    rate, low, high = cer_with_ci(*errors)
    diff, dlow, dhigh = paired_difference(errors, offline)
    return (f"CER {rate:.2%} [{low:.2%}, {high:.2%}], minus offline {diff * 100:+.2f} points "
            f"[{dlow * 100:+.2f}, {dhigh * 100:+.2f}]")


def live_changes(items: list[str]) -> dict:
    """``FIELD=VALUE`` items (--set) as LiveOptions changes, each value of its field's type."""
    from whisper_zh.live import LiveOptions

    types = {name: type(getattr(LiveOptions(), name)) for name in LiveOptions.__dataclass_fields__}
    return {k: types[k](v) for k, v in (item.split("=", 1) for item in items)}


def paired_difference(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[float, float, float]:
    """CER(a) - CER(b) over the same clips, with a 95% paired bootstrap interval (clips resampled together)."""
    rng = np.random.default_rng(0)
    (ea, la), (eb, lb) = a, b
    diffs = []
    for _ in range(1000):
        k = rng.integers(0, len(ea), len(ea))
        diffs.append(ea[k].sum() / la[k].sum() - eb[k].sum() / lb[k].sum())
    return ea.sum() / la.sum() - eb.sum() / lb.sum(), float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


# -- a client ------------------------------------------------------------------------------------------------


@dataclass
class Stream:
    """One client's view of one stream: what it sent when, what came back when."""

    audio: np.ndarray
    url: str
    speed: float
    t0: float = 0.0
    sender_lag: float = 0.0  # how far behind real time the last chunk went out (s)
    events: list[tuple[float, dict]] = field(default_factory=list)  # (receipt time - t0, event)
    error: str | None = None

    def run(self) -> None:
        from websockets.sync.client import connect

        try:
            with connect(self.url, max_size=None) as ws:
                ws.recv(timeout=60)  # transcription_session.created
                reader = threading.Thread(target=self._read, args=(ws,), daemon=True)
                self.t0 = time.monotonic()
                reader.start()
                self._send(ws)
                ws.send(json.dumps({"type": "transcription_session.finish"}))
                reader.join()
        except Exception as exc:  # noqa: BLE001 - reported in the results
            self.error = f"{type(exc).__name__}: {exc}"

    def _send(self, ws) -> None:  # noqa: ANN001
        pcm = (np.clip(self.audio, -1, 1) * 32767).astype("<i2").tobytes()
        step = int(CHUNK_SECONDS * SAMPLE_RATE) * 2
        for k, start in enumerate(range(0, len(pcm), step)):
            due = self.t0 + (k + 1) * CHUNK_SECONDS / self.speed  # a microphone delivers a chunk once it is recorded
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            ws.send(pcm[start : start + step])
            self.sender_lag = max(self.sender_lag, time.monotonic() - due)

    def _read(self, ws) -> None:  # noqa: ANN001
        for message in ws:
            event = json.loads(message)
            self.events.append((time.monotonic() - self.t0, event))
            if event["type"] == "transcription_session.finished":
                return


def analyse(stream: Stream, refs: list[str]) -> dict:
    """Latency, first partial, retractions, the committed-text check and the final text of one stream."""
    speed, duration = stream.speed, len(stream.audio) / SAMPLE_RATE
    latencies, shown, committed, retractions, updates, broken = [], "", "", 0, 0, 0
    item_deltas: dict[str, str] = {}
    first_text = speech_start = None
    for at, event in stream.events:
        kind = event["type"]
        if kind == "input_audio_buffer.speech_started" and speech_start is None:
            speech_start = event["audio_start_ms"] / 1000 / speed
        elif kind.endswith("transcription.delta"):
            committed += event["delta"]
            item_deltas[event["item_id"]] = item_deltas.get(event["item_id"], "") + event["delta"]
            latencies += [at - w["end"] / speed for w in event["words"] if w["word"].strip() and _spoken(w["word"])]
            first_text = at if first_text is None else first_text
        elif kind.endswith("transcription.partial") or kind.endswith("transcription.completed"):
            now = committed + event.get("text", "")
            updates += 1
            retractions += not now.startswith(shown)
            shown = now
            if kind.endswith("partial") and event["text"]:
                first_text = at if first_text is None else first_text
            if kind.endswith("completed"):
                broken += event["transcript"] != item_deltas.get(event["item_id"], "")
    finished = next((e for _, e in stream.events if e["type"] == "transcription_session.finished"), {})
    broken += finished.get("text") != committed
    last_text = max((at for at, e in stream.events if e["type"].endswith("transcription.delta")), default=float("nan"))
    return {
        "latencies": np.array(latencies), "first_text": (first_text or float("nan")) - (speech_start or 0.0),
        "retraction_rate": retractions / max(updates, 1), "updates": updates, "broken_commits": broken,
        "text": committed, "errors": clip_errors(refs, committed), "sender_lag": stream.sender_lag,
        "tail": last_text - duration / speed, "error": stream.error,
    }


def _spoken(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


# -- runs ----------------------------------------------------------------------------------------------------


def run_streams(url: str, audio: np.ndarray, refs: list[str], n: int, speed: float) -> tuple[list[dict], float, float]:
    streams = [Stream(audio, url, speed) for _ in range(n)]
    threads = [threading.Thread(target=s.run) for s in streams]
    started, cpu = time.perf_counter(), cpu_seconds()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [analyse(s, refs) for s in streams], time.perf_counter() - started, cpu_seconds() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=int, default=300, help="first clip number (default: 300)")
    parser.add_argument("--clips", type=int, default=100, help="clips joined (default: 100, W0300-W0399: 9.0 min)")
    parser.add_argument("--streams", default="1,2,4", help="concurrent streams to try, in turn (default: 1,2,4)")
    parser.add_argument("--speed", type=float, default=1.0, help="times real time the clients send (default: 1)")
    parser.add_argument("--context-chars", type=int, default=None,
                        help="committed characters prompted before each decode (default: LiveOptions' default)")
    parser.add_argument("--beam-size", type=int, default=5, help="beam of every live decode (default: 5, as served)")
    parser.add_argument("--fast", action="store_true",
                        help="instead of streams: feed the file into a session all at once (`whisper-zh live FILE` "
                        "without --realtime; one decode per utterance) and compare its CER with offline")
    parser.add_argument("--encoder-padding", default=None, metavar="SECONDS",
                        help="seconds the encoder hears past each buffer (LiveOptions.encoder_padding_seconds; "
                        "'none': a full 30 s window; default: the session's, 10)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads per decode, as `whisper-zh serve --threads` (default: 0, CTranslate2's choice)")
    parser.add_argument("--workers", type=int, default=1,
                        help="decodes at once, as `whisper-zh serve --workers`: each stream overlaps up to this many "
                        "(default: 1)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="other LiveOptions fields to change, e.g. step_seconds=0.4")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each stream count: the committed text differs from run to run (decodes start "
                        "at slightly different moments), so several runs give its mean (default: 1)")
    parser.add_argument("--json", default=None, help="also write the raw numbers here")
    args = parser.parse_args()
    counts = [int(n) for n in args.streams.split(",")]

    from whisper_zh import DecodeOptions, Transcriber
    from whisper_zh.live import LiveOptions
    from whisper_zh.server import ServerConfig, create_app, serve_in_thread
    from whisper_zh.server.config import LiveLimits

    changes: dict = {} if args.context_chars is None else {"context_chars": args.context_chars}
    if args.encoder_padding is not None:
        changes["encoder_padding_seconds"] = None if args.encoder_padding == "none" else float(args.encoder_padding)
    changes |= live_changes(args.set)
    live = LiveOptions(**changes)

    audio, refs = long_file(args.first, args.clips)
    seconds = len(audio) / SAMPLE_RATE
    transcriber = Transcriber("base", cpu_threads=args.threads, workers=args.workers)
    print(f"# Live transcription: {args.clips} S0150 clips joined ({seconds / 60:.1f} min), base int8, "
          f"{args.speed:g}x real time\n")

    started, cpu = time.perf_counter(), cpu_seconds()
    offline_text = transcriber.transcribe(audio).text
    offline_wall, offline_cpu = time.perf_counter() - started, cpu_seconds() - cpu
    offline = clip_errors(refs, offline_text)
    rate, low, high = cer_with_ci(*offline)
    print(f"offline transcribe (beam 5, VAD): CER {rate:.2%} [{low:.2%}, {high:.2%}], {offline_wall:.0f} s wall, "
          f"{offline_cpu:.0f} CPU s\n")

    decode = DecodeOptions(pack=False, beam_size=args.beam_size)  # the server's default decoding, this beam
    if args.fast:
        fast(transcriber, audio, refs, offline, live, decode)
        return 0
    limits = LiveLimits(max_streams=max(counts), options=live)
    app = create_app(ServerConfig(model="base", live=limits, max_pending=max(counts) + 1, decode=decode,
                                  cpu_threads=args.threads, workers=args.workers),
                     transcriber=transcriber)
    report = {"offline": {"cer": rate, "wall": offline_wall, "cpu": offline_cpu}, "runs": []}
    print("| streams | latency p50 / p95 / max (s) | first text (s) | CER [95% CI] | CER - offline [95% CI] "
          "| retraction rate | committed changed | sender behind (s) | last text after audio end (s) "
          "| wall s | CPU s per audio s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with serve_in_thread(app) as base:
        url = base.replace("http://", "ws://") + "/v1/realtime"
        for n in counts:
            pooled = []
            for _ in range(args.repeats):
                results, wall, cpu = run_streams(url, audio, refs, n, args.speed)
                for r in results:
                    print(_row(n, r, offline, wall, cpu / (n * seconds)), flush=True)
                pooled += results
                report["runs"].append({"streams": n, "wall": wall, "cpu": cpu,
                                       "results": [_jsonable(r) for r in results]})
            if len(pooled) > 1:
                print(_pooled_row(n, pooled, offline), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    return 0


def fast(transcriber, audio: np.ndarray, refs: list[str], offline, live, decode) -> None:  # noqa: ANN001
    from whisper_zh.live import LiveSession, play

    session = LiveSession(decode, live)
    started, cpu = time.perf_counter(), cpu_seconds()
    decodes = []

    def run(request):  # noqa: ANN001, ANN202
        decodes.append(request)
        return transcriber.transcribe_batch([request.audio], request.options)[0]

    for _ in play(session, audio, run, speed=None):
        pass
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    errors = clip_errors(refs, session.transcription().text)
    print(f"session fed all at once (context {live.context_chars} chars, beam {decode.beam_size}, encoder padding "
          f"{live.encoder_padding_seconds} s): {accuracy(errors, offline)}; {len(decodes)} decodes, "
          f"{wall:.0f} s wall, {cpu:.0f} CPU s")


def _row(n: int, r: dict, offline: tuple[np.ndarray, np.ndarray], wall: float, cpu_per_second: float) -> str:
    if r["error"]:
        return f"| {n} | failed: {r['error']} |"
    lat = r["latencies"]
    rate, low, high = cer_with_ci(*r["errors"])
    diff, dlow, dhigh = paired_difference(r["errors"], offline)
    p50, p95, top = (np.percentile(lat, 50), np.percentile(lat, 95), lat.max()) if len(lat) else (np.nan,) * 3
    return (f"| {n} | {p50:.2f} / {p95:.2f} / {top:.2f} | {r['first_text']:.2f} | {rate:.2%} [{low:.2%}, {high:.2%}] "
            f"| {diff * 100:+.2f} [{dlow * 100:+.2f}, {dhigh * 100:+.2f}] | {r['retraction_rate']:.1%} of "
            f"{r['updates']} | {r['broken_commits']} | {r['sender_lag']:.2f} | {r['tail']:.2f} | {wall:.0f} "
            f"| {cpu_per_second:.2f} |")


def _pooled_row(n: int, results: list[dict], offline: tuple[np.ndarray, np.ndarray]) -> str:
    """All runs of ``n`` streams together: latencies pooled; the CER difference averaged over the runs, its
    interval from resampling the clips (the same clips in every run and offline)."""
    done = [r for r in results if not r["error"]]
    lat = np.concatenate([r["latencies"] for r in done])
    errors = np.sum([r["errors"][0] for r in done], axis=0), np.sum([r["errors"][1] for r in done], axis=0)
    scaled = offline[0] * len(done), offline[1] * len(done)
    diff, dlow, dhigh = paired_difference(errors, scaled)
    rate, low, high = cer_with_ci(*errors)
    each = ", ".join(f"{(r['errors'][0].sum() / r['errors'][1].sum() - offline[0].sum() / offline[1].sum()) * 100:+.2f}"
                     for r in done)
    return (f"| {n}, {len(done)} runs pooled | {np.percentile(lat, 50):.2f} / {np.percentile(lat, 95):.2f} / "
            f"{lat.max():.2f} | {np.mean([r['first_text'] for r in done]):.2f} (mean) | {rate:.2%} [{low:.2%}, "
            f"{high:.2%}] | {diff * 100:+.2f} [{dlow * 100:+.2f}, {dhigh * 100:+.2f}] (runs: {each}) | "
            f"{np.mean([r['retraction_rate'] for r in done]):.1%} (mean) | {sum(r['broken_commits'] for r in done)} "
            "| - | - | - | - |")


def _jsonable(r: dict) -> dict:
    out = {k: v for k, v in r.items() if k not in ("latencies", "errors")}
    out["latencies"] = [round(float(x), 3) for x in r["latencies"]]
    out["clip_errors"], out["clip_lengths"] = (r["errors"][0].tolist(), r["errors"][1].tolist())
    return out


if __name__ == "__main__":
    sys.exit(main())

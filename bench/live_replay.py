"""Live policy replay on a virtual clock: the committed-text CER and latency of a LiveOptions setting, deterministic.

bench/live.py measures the real thing (a server, WebSocket clients, the real clock), and its committed-text CER
differs from run to run by up to 2.6 points with the same code: decodes start a few milliseconds earlier or later,
hear slightly different buffers, and the local agreement commits slightly different text. That noise hides the
effect of a policy change. This replay removes it: the session is fed the bench's file on a virtual clock, every
decode runs for real (the embedded base, one thread, in this process), and the clock advances by a model of how
long the decode takes on this CPU (one thread, beam 5, int8, buffer plus 10 s of encoder padding; fitted by least
squares on 158 decodes of the first 20 clips: 0.403 s + 0.0055 s per second of buffer + 0.0367 s per character
decoded, residual 0.11 s). ``--decode-time actual`` uses the measured time instead. Up to ``--parallel`` decodes
overlap, as `whisper-zh serve --workers 2 --threads 1` runs them; two one-thread decodes on this 2-core machine
each take as long as one alone (bench/RESULTS.md).

What it does not remove: a small change of policy moves every later decode a little, so two policies' texts
differ in many places that have nothing to do with the change. Eight settings replayed on the 100 clips (bench/
RESULTS.md) scored between 13.39 % and 14.72 % with no pattern in the setting: a CER difference under about
1.3 points between two settings is not shown by one replay each. The latency differences are stable.

The latency is the virtual time from a word's end to its commit: it leaves out the server, the socket and the
contention of a real process (the real bench measured 0.1-0.2 s more on the same code). Two replays can run side
by side on the two cores; the results do not depend on the load.

Run: .venv/bin/python bench/live_replay.py [--clips 100] [--parallel 2] [--set step_seconds=0.4 ...] [--json F]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live import SAMPLE_RATE, accuracy, clip_errors, live_changes, long_file  # noqa: E402

DECODE_TIME = (0.403, 0.00553, 0.0367)  # seconds: fixed, per second of buffer, per character decoded
TICK = 0.02  # the clock's step while nothing happens (play()'s polling interval)


class Replay:
    """One session fed on the virtual clock; decodes overlap up to ``parallel``."""

    def __init__(self, transcriber, session, audio: np.ndarray, parallel: int, actual: bool) -> None:  # noqa: ANN001
        self.transcriber, self.session, self.audio = transcriber, session, audio
        self.parallel, self.actual = parallel, actual
        self.now, self.fed, self.text, self.latencies, self.decodes = 0.0, 0, "", [], 0
        self.flying: deque = deque()  # (request, result, virtual time it is done)

    def run(self) -> None:
        while not self.session.done:
            if self.flying and (self.flying[0][2] <= self.now or len(self.flying) >= self.parallel):
                request, result, done = self.flying.popleft()
                self.now = max(self.now, done)
                self._take(self.session.accept(request, result))
                continue
            self._feed()
            if self.session.due():
                step = self.session.prepare()
                self._take(step.events)
                if step.request is not None:
                    self._decode(step.request)
                continue
            self.now = min(self.flying[0][2] if self.flying else math.inf, self.now + TICK)

    def _feed(self) -> None:
        target = min(len(self.audio), int(self.now * SAMPLE_RATE))
        if target > self.fed:
            self.session.append(self.audio[self.fed:target])
            self.fed = target
        if self.fed >= len(self.audio):
            self.session.finish()

    def _decode(self, request) -> None:  # noqa: ANN001
        started = time.perf_counter()
        result = self.transcriber.transcribe_batch([request.audio], request.options)[0]
        took = time.perf_counter() - started
        if not self.actual:
            chars = 0 if isinstance(result, Exception) else sum(len(s.text) for s in result.segments)
            took = DECODE_TIME[0] + DECODE_TIME[1] * request.seconds + DECODE_TIME[2] * chars
        self.decodes += 1
        self.flying.append((request, result, self.now + took))

    def _take(self, events: list) -> None:
        from whisper_zh.live import Committed

        for event in events:
            if isinstance(event, Committed):
                self.text += event.text
                self.latencies += [self.now - u.end for u in event.units if any(ch.isalnum() for ch in u.text)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=int, default=300, help="first clip number (default: 300)")
    parser.add_argument("--clips", type=int, default=100, help="clips joined (default: 100, as bench/live.py)")
    parser.add_argument("--parallel", type=int, default=2, help="decodes in flight at once (default: 2)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="LiveOptions fields to change")
    parser.add_argument("--decode-time", choices=("model", "actual"), default="model")
    parser.add_argument("--offline", default=None, help="a JSON file with the offline text to compare with "
                        "(written here if missing; default: transcribe it now)")
    parser.add_argument("--json", default=None, help="also write the numbers and the committed text here")
    args = parser.parse_args()

    from whisper_zh import DecodeOptions, Transcriber
    from whisper_zh.live import LiveOptions, LiveSession

    changes = live_changes(args.set)
    audio, refs = long_file(args.first, args.clips)
    transcriber = Transcriber("base", cpu_threads=1)
    offline_text = _offline(transcriber, audio, args.offline)
    offline = clip_errors(refs, offline_text)

    started = time.process_time()
    replay = Replay(transcriber, LiveSession(DecodeOptions(pack=False), LiveOptions(**changes)), audio,
                    args.parallel, args.decode_time == "actual")
    replay.run()
    errors, lat = clip_errors(refs, replay.text), np.array(replay.latencies)
    print(f"{' '.join(args.set) or 'defaults'}: latency p50 / p95 / max {np.median(lat):.2f} / "
          f"{np.percentile(lat, 95):.2f} / {lat.max():.2f} s; {accuracy(errors, offline)}; {replay.decodes} "
          f"decodes, {time.process_time() - started:.0f} CPU s")
    if args.json:
        rate = errors[0].sum() / errors[1].sum()
        Path(args.json).write_text(json.dumps({"set": args.set, "p50": float(np.median(lat)), "cer": float(rate),
                                               "minus_offline": float(rate - offline[0].sum() / offline[1].sum()),
                                               "text": replay.text}, ensure_ascii=False))
    return 0


def _offline(transcriber, audio: np.ndarray, path: str | None) -> str:  # noqa: ANN001
    if path and Path(path).is_file():
        return json.loads(Path(path).read_text(encoding="utf-8"))["text"]
    text = transcriber.transcribe(audio).text
    if path:
        Path(path).write_text(json.dumps({"text": text}, ensure_ascii=False), encoding="utf-8")
    return text


if __name__ == "__main__":
    sys.exit(main())

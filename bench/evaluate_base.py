"""Evaluate the embedded base on the shared AISHELL-1 clips, and set the result against two peers in the same run.

1. Metrics: CER with its bootstrap 95 % CI, S/D/I/N, MER, WER on jieba words and SER, with and without number
   normalisation (whisper-zh's evaluation), next to what the naive recipe reports on the SAME predictions:
   ``jiwer.wer`` on unsegmented text (the "WER 100" trap) and ``jiwer.cer`` on raw, unnormalised text.
2. Speed: whisper-zh's batched Transcriber against faster-whisper's own sequential ``WhisperModel.transcribe``
   (same model, int8, beam 5, same prompt) on the first ``--peer-clips`` clips, as a ratio of wall times.

The full evaluation is what ``whisper-zh evaluate --model base --data <manifest> --output-dir out/eval-base`` does;
pass ``--from-report out/eval-base/report.json`` to reuse such a run's predictions instead of transcribing again.

Run: .venv/bin/python bench/evaluate_base.py [--limit 500] [--from-report R] [--peer-clips 20] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jiwer

from whisper_zh.data import load_source
from whisper_zh.decoding import DEFAULT_ZH_PROMPT, DecodeOptions
from whisper_zh.evaluation import evaluate, metrics_table, summary_line
from whisper_zh.transcriber import Transcriber

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO.parent / "shared" / "data" / "aishell1-sample-S0150" / "manifest.jsonl"


def naive_peer(rows: list[dict]) -> dict[str, float]:
    """What a generic English-centred recipe reports on the same reference/hypothesis pairs."""
    refs = [r["reference"] for r in rows]
    hyps = [r["hypothesis"] for r in rows]
    return {"naive_wer_unsegmented": jiwer.wer(refs, hyps), "naive_cer_raw": jiwer.cer(refs, hyps)}


def speed_peer(transcriber: Transcriber, paths: list[str]) -> tuple[float, float, float]:
    """(whisper-zh batched seconds, faster-whisper sequential seconds, audio seconds) on the same clips."""
    options = DecodeOptions(initial_prompt=DEFAULT_ZH_PROMPT)
    started = time.perf_counter()
    results = transcriber.transcribe_batch(paths, options)
    ours = time.perf_counter() - started
    audio = sum(r.duration for r in results if not isinstance(r, Exception))
    model = transcriber._model  # the same loaded WhisperModel, so only the decoding strategy differs
    started = time.perf_counter()
    for path in paths:
        segments, _ = model.transcribe(
            path,
            language="zh",
            beam_size=5,
            initial_prompt=DEFAULT_ZH_PROMPT,
            condition_on_previous_text=False,
        )
        list(segments)
    theirs = time.perf_counter() - started
    return ours, theirs, audio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(MANIFEST))
    parser.add_argument("--limit", type=int, default=None, help="first N clips (default: all)")
    parser.add_argument("--from-report", help="reuse an evaluation's report.json/predictions.jsonl")
    parser.add_argument("--peer-clips", type=int, default=20, help="clips for the speed peer (0: skip)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if not Path(args.data).exists():
        print(f"skip: {args.data} not found", file=sys.stderr)
        return 0

    transcriber = Transcriber("base", compute_type="int8", cpu_threads=args.threads)
    if args.from_report:
        report_path = Path(args.from_report)
        report = json.loads(report_path.read_text(encoding="utf-8"))
        lines = (report_path.parent / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
        rows = [row for row in map(json.loads, lines) if "scores" in row]
    else:
        source = load_source(args.data, limit=args.limit)
        result = evaluate(transcriber, source, DecodeOptions(initial_prompt=DEFAULT_ZH_PROMPT))
        report = result.report
        rows = [row for row in result.predictions if "scores" in row]

    print(metrics_table(report))
    print()
    print(summary_line(report))
    timing = report["timing"]
    print(
        f"audio {timing['audio_seconds']:.1f} s, wall {timing['wall_seconds']:.1f} s, RTF {timing['real_time_factor']}"
    )
    peer = naive_peer(rows)
    cer = report["metrics"]["plain"]["cer"]["rate"]
    print(
        f"naive peer on the same {len(rows)} predictions: jiwer.wer (unsegmented) {100 * peer['naive_wer_unsegmented']:.2f}%, "
        f"jiwer.cer (raw text) {100 * peer['naive_cer_raw']:.2f}%; whisper-zh CER {100 * cer:.2f}% "
        f"(naive WER / CER = {peer['naive_wer_unsegmented'] / cer:.2f}x)"
    )
    if args.peer_clips > 0:
        paths = [str(u.audio) for u in load_source(args.data, limit=args.peer_clips)]
        ours, theirs, audio = speed_peer(transcriber, paths)
        print(
            f"speed on {len(paths)} clips ({audio:.1f} s audio): whisper-zh batched {ours:.1f} s (RTF {ours / audio:.3f}), "
            f"faster-whisper sequential {theirs:.1f} s (RTF {theirs / audio:.3f}); ratio {theirs / ours:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Long-form transcription as users meet it: whisper-zh against faster-whisper on the same recordings, one run.

Recordings made of shared AISHELL-1 S0150 news clips (references known sentence by sentence):
  continuous  W0300-W0399 joined end to end, only the clips' own silences between them (continuous speech);
              --continuous W0200-W0299,W0300-W0399,W0400-W0499 makes one such recording per range and adds the
              CER differences pooled over all of them (one file of 100 sentences moves by about 2 points with
              where the windows fall)
  padded      news clips from W0121 on, joined with 0.4-1.6 s of added silence, up to --padded-minutes
Systems, each in its own subprocess (own CPU seconds and peak RSS):
  whisper-zh       Transcriber("base") with the CLI's defaults, srt cues from whisper_zh.writers
  fw-vad           faster-whisper WhisperModel.transcribe(language="zh", beam_size=5, vad_filter=True)
  fw-novad         the same with vad_filter=False (faster-whisper's default)
Reported per recording and system: CER (plain normaliser; 95 % CI by bootstrap over sentences), sentences out of
order, invalid cues (end <= start, overlapping, outside the audio), cue lengths (seconds, characters) and the share
within the subtitle limits, cue-edge distance to the nearest clip edge (median, p95), punctuation marks per 100
characters, wall and CPU seconds (and CPU against fw-vad's), real-time factor, peak RSS; whisper-zh's CER minus each
peer's, paired over the same sentences (bootstrap 95 % CI). faster-whisper's segments are its cues.

Run: .venv/bin/python bench/longform.py [--padded-minutes 10] [--only continuous] [--continuous RANGES]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "aishell1-sample-S0150"
PUNCTUATION = set("，。？！、；：,.?!;:")
SYSTEMS = ("whisper-zh", "fw-vad", "fw-novad")


def manifest() -> list[dict]:
    path = DATA / "manifest.jsonl"
    if not path.is_file():
        sys.exit(f"shared data not found at {DATA}")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build(kind: str, padded_minutes: float, ids: str = "W0300-W0399") -> tuple[np.ndarray, list[dict]]:
    """The recording and its clips: [{"text", "start", "end"}] on the recording's timeline."""
    import soundfile as sf

    rows = manifest()
    if kind == "continuous":
        first, last = ids.split("-")
        chosen = [r for r in rows if first <= r["id"][-5:] <= last]
    else:
        chosen = [r for r in rows if r["domain"] == "news"]
    rng = np.random.default_rng(0)
    pieces, clips, cursor = [], [], 0.0
    for row in chosen:
        audio, _ = sf.read(DATA / row["audio"], dtype="float32")
        clips.append({"text": row["text"], "start": cursor, "end": cursor + len(audio) / 16000})
        pieces.append(audio)
        cursor += len(audio) / 16000
        if kind == "padded":
            gap = float(rng.uniform(0.4, 1.6))
            pieces.append(np.zeros(int(gap * 16000), np.float32))
            cursor += gap
            if cursor >= padded_minutes * 60:
                break
    return np.concatenate(pieces), clips


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_system(system: str, wav: str) -> dict:
    """Inside the subprocess: transcribe ``wav``; return text, cues and costs."""
    import soundfile as sf

    audio, _ = sf.read(wav, dtype="float32")
    if system == "whisper-zh":
        from whisper_zh import DecodeOptions, Transcriber
        from whisper_zh.subtitles import make_cues

        transcriber = Transcriber("base")
        started, cpu = time.perf_counter(), cpu_seconds()
        result = transcriber.transcribe(audio, DecodeOptions(word_timestamps=True))  # what --format srt asks for
        text = result.text
        cues = [(c.start, c.end, c.text) for c in make_cues(result)]
    else:
        from faster_whisper import WhisperModel

        from whisper_zh.models import embedded_model_dir

        model = WhisperModel(str(embedded_model_dir()), device="cpu", compute_type="int8")
        started, cpu = time.perf_counter(), cpu_seconds()
        segments = list(model.transcribe(audio, language="zh", beam_size=5, vad_filter=system == "fw-vad")[0])
        text = "".join(s.text for s in segments)
        cues = [(s.start, s.end, s.text.strip()) for s in segments]
    return {
        "text": text,
        "cues": cues,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": cpu_seconds() - cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def in_subprocess(system: str, wav: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", system, wav], capture_output=True, text=True,
                          check=False)
    if done.returncode:
        sys.exit(f"{system} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- measures ----------------------------------------------------------------------------------------------


def sentence_errors(refs: list[str], hyp: str) -> tuple[list[int], list[int]]:
    """Errors and reference length per sentence, from one alignment of the whole hypothesis to the joined
    references (insertions go to the sentence they follow)."""
    import jiwer

    from whisper_zh.normalize import TextNormalizer

    normalize = TextNormalizer()
    refs = [normalize(r) for r in refs]
    joined, owner = "".join(refs), [i for i, r in enumerate(refs) for _ in r]
    errors = [0] * len(refs)
    for chunk in jiwer.process_characters(joined, normalize(hyp) or "-").alignments[0]:
        if chunk.type in ("substitute", "delete"):
            for i in range(chunk.ref_start_idx, chunk.ref_end_idx):
                errors[owner[i]] += 1
        elif chunk.type == "insert":
            errors[owner[min(chunk.ref_start_idx, len(joined) - 1)]] += chunk.hyp_end_idx - chunk.hyp_start_idx
    return errors, [len(r) for r in refs]


def cer_with_ci(errors: list[int], lengths: list[int], resamples: int = 1000) -> tuple[float, float, float]:
    e, n = np.array(errors), np.array(lengths)
    picks = np.random.default_rng(0).integers(0, len(e), size=(resamples, len(e)))
    rates = e[picks].sum(axis=1) / n[picks].sum(axis=1)
    return float(e.sum() / n.sum()), float(np.percentile(rates, 2.5)), float(np.percentile(rates, 97.5))


def paired_difference(a: tuple[list[int], list[int]], b: tuple[list[int], list[int]],
                      resamples: int = 1000) -> tuple[float, float, float]:
    """CER of ``a`` minus CER of ``b`` in points, with a 95 % CI from one bootstrap over the same sentences."""
    ea, eb, n = np.array(a[0]), np.array(b[0]), np.array(a[1])
    picks = np.random.default_rng(0).integers(0, len(n), size=(resamples, len(n)))
    diffs = 100 * (ea[picks].sum(axis=1) - eb[picks].sum(axis=1)) / n[picks].sum(axis=1)
    return 100 * float((ea.sum() - eb.sum()) / n.sum()), float(np.percentile(diffs, 2.5)), float(
        np.percentile(diffs, 97.5))


def order_errors(refs: list[str], hyp: str) -> int:
    """Sentences found out of order: each reference sentence is located in the hypothesis on its own (fuzzy
    match); those located (similarity >= 70) minus the longest run in increasing position are out of order.
    A sentence that occurs more than once in the reference, or nearly so (the news clips repeat a passage with
    small changes), or that would be located inside another reference sentence (几个外地人靠小猴子卖萌挣钱 is
    also part of an earlier headline), is skipped: one match cannot say which copy it is."""
    from rapidfuzz import fuzz

    from whisper_zh.normalize import TextNormalizer

    normalize = TextNormalizer()
    text = normalize(hyp)
    normal = [normalize(r) for r in refs]
    repeated = {i for i, a in enumerate(normal) for j, b in enumerate(normal)
                if i != j and (fuzz.ratio(a, b) >= 80 or (len(a) <= len(b) and fuzz.partial_ratio(a, b) >= 70))}
    positions = []
    for i, ref in enumerate(normal):
        if len(ref) < 4 or i in repeated:
            continue
        found = fuzz.partial_ratio_alignment(ref, text)
        if found.score >= 70:
            positions.append(found.dest_start)
    return len(positions) - _longest_increasing(positions)


def _longest_increasing(values: list[int]) -> int:
    import bisect

    tails: list[int] = []
    for v in values:
        k = bisect.bisect_right(tails, v)
        tails[k : k + 1] = [v]
    return len(tails)


def cue_report(cues: list[list], clips: list[dict], duration: float) -> dict:
    from whisper_zh.subtitles import CueOptions

    limits = CueOptions()
    invalid = sum(1 for k, (s, e, _) in enumerate(cues)
                  if not (0 <= s < e <= duration + 1e-6) or (k and s < cues[k - 1][1] - 1e-6))
    seconds = np.array([e - s for s, e, _ in cues]) if cues else np.zeros(1)
    chars = np.array([len(t.replace(" ", "")) for _, _, t in cues]) if cues else np.zeros(1)
    # durations in milliseconds, as srt and vtt write them (7.000 s may be 7.0000000001 in floating point)
    within = sum(1 for s, e, t in cues if len(t.replace(" ", "")) <= limits.max_chars
                 and limits.min_cue_seconds - 0.05 <= round(e - s, 3) <= limits.max_cue_seconds)
    starts, ends = np.array([c["start"] for c in clips]), np.array([c["end"] for c in clips])
    edges = np.array([np.min(np.abs(starts - s)) for s, _, _ in cues] + [np.min(np.abs(ends - e)) for _, e, _ in cues])
    return {
        "cues": len(cues), "invalid": invalid, "within_limits": within / max(1, len(cues)),
        "seconds_median": float(np.median(seconds)), "seconds_max": float(seconds.max()),
        "chars_median": float(np.median(chars)), "chars_max": int(chars.max()),
        "edge_median": float(np.median(edges)) if len(edges) else 0.0,
        "edge_p95": float(np.percentile(edges, 95)) if len(edges) else 0.0,
    }


def punctuation_rate(text: str) -> float:
    hanzi = sum(1 for c in text if "\u4e00" <= c <= "\u9fff")
    return 100 * sum(c in PUNCTUATION for c in text) / max(1, hanzi)


def short_clip_rate(clips: list[dict], wav: str) -> float:
    """Punctuation per 100 characters when the same speech is transcribed clip by clip (whisper-zh defaults)."""
    import soundfile as sf

    from whisper_zh import Transcriber

    audio, _ = sf.read(wav, dtype="float32")
    pieces = [audio[round(c["start"] * 16000) : round(c["end"] * 16000)] for c in clips]
    return punctuation_rate("".join(r.text for r in Transcriber("base").transcribe_batch(pieces)))


# -- report ------------------------------------------------------------------------------------------------


def measure(kind: str, padded_minutes: float, work: Path, ids: str = "W0300-W0399") -> dict[str, tuple]:
    """Print the table of one recording; returns each system's (errors, lengths) per sentence."""
    import soundfile as sf

    audio, clips = build(kind, padded_minutes, ids)
    duration = len(audio) / 16000
    wav = str(work / f"{kind}-{ids}.wav")
    sf.write(wav, audio, 16000)
    refs = [c["text"] for c in clips]
    print(f"\n## {kind}{' ' + ids if kind == 'continuous' else ''}: {duration / 60:.1f} min, {len(clips)} clips"
          + (" joined end to end (continuous speech)" if kind == "continuous" else " with 0.4-1.6 s of silence added"))
    print("| system | CER [95% CI] | out of order | invalid cues | cues within limits | cue s median/max | "
          "cue chars median/max | cue-edge error median/p95 s | punct/100 chars | wall s | CPU s | RTF | "
          "speed vs fw-vad (wall) | CPU vs fw-vad | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    results = {system: in_subprocess(system, wav) for system in SYSTEMS}
    for system, r in results.items():
        rate, low, high = cer_with_ci(*sentence_errors(refs, r["text"]))
        cues = cue_report(r["cues"], clips, duration)
        print(f"| {system} | {rate:.2%} [{low:.2%}, {high:.2%}] | {order_errors(refs, r['text'])} | "
              f"{cues['invalid']} of {cues['cues']} | {cues['within_limits']:.0%} | "
              f"{cues['seconds_median']:.1f} / {cues['seconds_max']:.1f} | {cues['chars_median']:.0f} / "
              f"{cues['chars_max']} | {cues['edge_median']:.2f} / {cues['edge_p95']:.2f} | "
              f"{punctuation_rate(r['text']):.2f} | {r['seconds']:.1f} | {r['cpu_seconds']:.0f} | "
              f"{r['seconds'] / duration:.3f} | {results['fw-vad']['seconds'] / r['seconds']:.2f}x | "
              f"{r['cpu_seconds'] / results['fw-vad']['cpu_seconds']:.2f}x | {r['peak_rss_mb']:.0f} |")
    errors = {system: sentence_errors(refs, r["text"]) for system, r in results.items()}
    print_differences(errors)
    short = short_clip_rate(clips, wav)
    long = punctuation_rate(results["whisper-zh"]["text"])
    print(f"\nwhisper-zh punctuation: {long:.2f} per 100 characters on the recording, {short:.2f} on the same clips "
          f"transcribed one by one ({long / short:.0%} of the short-clip rate).")
    return errors


def print_differences(errors: dict[str, tuple[list[int], list[int]]], label: str = "") -> None:
    ours = errors["whisper-zh"]
    for peer in SYSTEMS[1:]:
        diff, low, high = paired_difference(ours, errors[peer])
        print(f"\nwhisper-zh minus {peer}{label}, CER paired over the same sentences: {diff:+.2f} points "
              f"[{low:+.2f}, {high:+.2f}]")


def print_pooled(runs: list[dict[str, tuple[list[int], list[int]]]]) -> None:
    """CER of each system over all continuous recordings together, and whisper-zh's paired differences."""
    pooled = {system: ([e for run in runs for e in run[system][0]], [n for run in runs for n in run[system][1]])
              for system in SYSTEMS}
    print(f"\n## continuous, pooled over {len(runs)} recordings ({len(pooled['whisper-zh'][1])} sentences)")
    for system, (errors, lengths) in pooled.items():
        rate, low, high = cer_with_ci(errors, lengths)
        print(f"{system}: CER {rate:.2%} [{low:.2%}, {high:.2%}]")
    print_differences(pooled, ", pooled")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--padded-minutes", type=float, default=10.0)
    parser.add_argument("--only", choices=("continuous", "padded"))
    parser.add_argument("--continuous", default="W0300-W0399",
                        help="comma-separated clip-ID ranges, one continuous recording each")
    parser.add_argument("--work", default="/tmp/whisper-zh-longform", help="where the recordings are written")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_system(*args.worker)))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.only != "padded":
        runs = [measure("continuous", args.padded_minutes, work, ids) for ids in args.continuous.split(",")]
        if len(runs) > 1:
            print_pooled(runs)
    if args.only != "continuous":
        measure("padded", args.padded_minutes, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())

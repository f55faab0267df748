"""Transcription speed and accuracy of whisper-zh against its peers, measured in one run.

Systems (each in its own subprocess, so each reports its own peak RSS):
  whisper-zh     Transcriber("base").transcribe_batch: int8, beam 5, packing, batch 4, the CLI's default prompt
                 (以下是普通话的句子。, for punctuation); whisper-zh-noprompt: the same without a prompt;
                 whisper-zh-untimed-packs: the same with packs decoded without timestamp tokens, as they were
                 until 2026-11-29 (an attribution run, not a product setting: it shows what the plain CER owes
                 to the number style of timestamped decoding, which packs use for their punctuation)
  fw-sequential  plain faster-whisper: WhisperModel(base, int8).transcribe(file, language="zh", beam_size=5), file by file
  hf-pipeline    the Transformers ASR pipeline on the same weights converted to Transformers (float32, beam 5),
                 on the first --hf-clips clips only (it is slow on a CPU)
All are scored with the same normaliser (whisper_zh.normalize.TextNormalizer(): width, Traditional->Simplified,
lower-case, punctuation and whitespace removed), and again with numbers normalised (numbers="arabic": 二十九 and
29 score alike, so number style is not counted as an error). Then the long-form check, bench/longform.py: a 9-minute file of
continuous speech (W0300-W0399 joined end to end) and a ~10-minute one of news clips joined with 0.4-1.6 s pauses
(--long-minutes; 0 skips both), whisper-zh against faster-whisper in the same run.

Run: .venv/bin/python bench/transcribe_speed.py [--clips 500] [--pool] [--hf-clips 40] [--long-minutes 10]
     [--systems fw-sequential,whisper-zh,whisper-zh-noprompt]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "aishell1-sample-S0150"


def rows(limit: int) -> list[dict]:
    manifest = DATA / "manifest.jsonl"
    if not manifest.is_file():
        sys.exit(f"shared data not found at {DATA}")
    out = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    return out[:limit]


def pool_rows(limit: int) -> list[dict]:
    """Every ``len // limit``-th clip of the guard's shuffled pool of all shared sets (many speakers and kinds)."""
    import soundfile

    from guard import SETS, load_clips, orders

    clips = orders(load_clips(list(SETS)))["shuffled"]
    picked = clips[:: max(1, len(clips) // limit)][:limit]
    return [{"path": c.path, "text": c.text, "duration": soundfile.info(c.path).duration} for c in picked]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process: steadier than wall time on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_system(system: str, paths: list[str]) -> dict:
    """Transcribe ``paths`` with one system (called inside the subprocess); returns texts, seconds, RSS."""
    if system.startswith("whisper-zh"):
        from whisper_zh import DecodeOptions, Transcriber
        from whisper_zh.decoding import DEFAULT_ZH_PROMPT

        if system == "whisper-zh-untimed-packs":
            from whisper_zh import transcriber as pipeline

            pipeline._Pack.timestamps = False  # noqa: SLF001 (the attribution run described above)
        prompt = None if system == "whisper-zh-noprompt" else DEFAULT_ZH_PROMPT
        options = DecodeOptions(initial_prompt=prompt, pack=True)
        transcriber = Transcriber("base")
        started, cpu = time.perf_counter(), cpu_seconds()
        results = transcriber.transcribe_batch(paths, options)
        texts = [r.text for r in results]
    elif system == "fw-sequential":
        from faster_whisper import WhisperModel

        from whisper_zh.models import embedded_model_dir

        model = WhisperModel(str(embedded_model_dir()), device="cpu", compute_type="int8")
        started, cpu = time.perf_counter(), cpu_seconds()
        texts = ["".join(s.text for s in model.transcribe(p, language="zh", beam_size=5)[0]) for p in paths]
    elif system == "hf-pipeline":
        import torch
        from transformers import pipeline

        from whisper_zh.audio import load_audio
        from whisper_zh.hf import load_transformers_whisper

        model, processor = load_transformers_whisper("base")
        asr = pipeline(
            "automatic-speech-recognition", model=model, tokenizer=processor.tokenizer,
            feature_extractor=processor.feature_extractor, device="cpu", dtype=torch.float32,
        )
        started, cpu = time.perf_counter(), cpu_seconds()
        texts = [
            asr(load_audio(p), generate_kwargs={"language": "zh", "task": "transcribe", "num_beams": 5})["text"]
            for p in paths
        ]
    else:
        raise SystemExit(f"unknown system {system}")
    return {
        "texts": texts,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": cpu_seconds() - cpu,
        "peak_rss_mb": peak_rss_mb(),
    }


def in_subprocess(system: str, paths: list[str]) -> dict:
    command = [sys.executable, __file__, "--worker", system]
    done = subprocess.run(command, input=json.dumps(paths), capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"{system} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def score(refs: list[str], hyps: list[str], numbers: str = "off"):
    from whisper_zh.metrics import cer
    from whisper_zh.normalize import TextNormalizer

    return cer(refs, hyps, normalizer=TextNormalizer(numbers=numbers), n_resamples=1000)


def long_form(minutes: float) -> None:
    """The long-form part: bench/longform.py (the continuous file and the padded one, whisper-zh against
    faster-whisper with and without VAD: CER, order, cue validity and sizes, cue edges, punctuation)."""
    command = [sys.executable, str(Path(__file__).with_name("longform.py")), "--padded-minutes", str(minutes)]
    sys.stdout.flush()
    subprocess.run(command, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=500)
    parser.add_argument("--pool", action="store_true",
                        help="clips from every shared set (many speakers), in the guard's shuffled order, "
                        "instead of S0150's first --clips")
    parser.add_argument("--hf-clips", type=int, default=40)
    parser.add_argument("--long-minutes", type=float, default=10.0)
    parser.add_argument("--systems", default="fw-sequential,whisper-zh,whisper-zh-noprompt",
                        help="comma-separated; fw-sequential (the peer the ratios are against) is always run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_system(args.worker, json.loads(sys.stdin.read()))))
        return 0
    data = pool_rows(args.clips) if args.pool else rows(args.clips)
    paths = [r["path"] for r in data] if args.pool else [str(DATA / r["audio"]) for r in data]
    refs = [r["text"] for r in data]
    audio_seconds = sum(r["duration"] for r in data)
    what = "clips of every shared set, shuffled" if args.pool else "AISHELL-1 S0150 clips"
    print(f"# {len(data)} {what}, {audio_seconds / 60:.1f} min; base, int8, beam 5, CPU\n")
    systems = ["fw-sequential", *(s for s in args.systems.split(",") if s and s != "fw-sequential")]
    results = {name: in_subprocess(name, paths) for name in systems}
    hf_n = min(args.hf_clips, len(paths))
    if hf_n:
        results["hf-pipeline"] = in_subprocess("hf-pipeline", paths[:hf_n])
    base = results["fw-sequential"]["seconds"] / audio_seconds
    base_cpu = results["fw-sequential"]["cpu_seconds"] / audio_seconds
    print(
        "| system | clips | CER [95% CI] | S/D/I | CER, numbers normalised [95% CI] | wall s | real-time factor | speed vs fw-sequential (wall) "
        "| CPU s | speed vs fw-sequential (CPU) | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, result in results.items():
        n = len(result["texts"])
        audio = sum(r["duration"] for r in data[:n])
        s = score(refs[:n], result["texts"])
        sn = score(refs[:n], result["texts"], numbers="arabic")
        rtf = result["seconds"] / audio
        cpu_rate = result["cpu_seconds"] / audio
        print(
            f"| {name} | {n} | {s.rate:.2%} [{s.ci_low:.2%}, {s.ci_high:.2%}] | {s.substitutions}/{s.deletions}/"
            f"{s.insertions} | {sn.rate:.2%} [{sn.ci_low:.2%}, {sn.ci_high:.2%}] | {result['seconds']:.1f} | {rtf:.4f} | {base / rtf:.2f}x | {result['cpu_seconds']:.0f} "
            f"| {base_cpu / cpu_rate:.2f}x | {result['peak_rss_mb']:.0f} |"
        )
    if args.long_minutes > 0:
        long_form(args.long_minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())

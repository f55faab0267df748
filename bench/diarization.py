"""Speaker diarization benchmark: conversations of 1-4 speakers built from the shared sets, scored with
pyannote.metrics, and the wall time ``--diarize`` adds to transcription.

Speakers are split in two, so that nothing the code was tuned on is in the held-out check:
  tuning    AISHELL-3 voices SSB0005..SSB0133 (the first 15; one utterance each, cut in two turns at a pause)
            and 12 dspspeech20 speakers (isolated words, three to a turn)
  held-out  AISHELL-1 S0150 and S0252, the Taiwan narrator, and SSB0139 (the first of the other 15 AISHELL-3 voices)
``--tune`` embeds the tuning conversations once and scores the clustering at each distance threshold (speaker error
after the best label mapping, and speaker-count accuracy); the default run scores the held-out conversations end to
end (transcribe + diarize, labels on the transcript's segments) and times a 10-minute three-speaker conversation
with and without diarization in one process.

``--engine-only`` scores the engine's own turns on the held-out set (no transcript) with its time and memory.

Run: .venv/bin/python bench/diarization.py [--tune | --engine-only] [--long-minutes 10] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
from pyannote.core import Annotation, Segment, Timeline
from pyannote.metrics.diarization import DiarizationErrorRate
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conversations import Conversation, build, speakers_of, voice  # noqa: E402
from whisper_zh.diarize import DiarizeOptions  # noqa: E402

FRAME = 0.01
THRESHOLDS = (0.25, 0.3, 0.35, 0.4, 0.45, 0.5)


def tuning_set() -> list[Conversation]:
    a3 = speakers_of("aishell3")[:15]
    dsp = speakers_of("dsp")[:12]
    voices = {**{s: voice("aishell3", speaker=s) for s in a3}, **{s: voice("dsp", speaker=s) for s in dsp}}
    names = list(voices)
    out = []
    for i, count in enumerate((1, 2, 2, 3, 3, 3, 4, 4)):
        chosen = [names[(i * 5 + k * 3) % len(names)] for k in range(count)]
        turns = 4 if count == 1 else 2 * count + 2
        out.append(build(f"tune-{count}spk-{i}", {s: voices[s] for s in chosen}, turns=turns, seed=i))
    return out


def held_out_set(long_minutes: float) -> list[Conversation]:
    s0150, s0252, narrator = voice("S0150", limit=120), voice("S0252", limit=120), voice("narrator", limit=120)
    a3 = speakers_of("aishell3")[15:]
    out = [
        build("held-1spk-S0252", {"S0252": s0252}, turns=12, seed=101),
        build("held-2spk", {"S0252": s0252, "narrator": narrator}, turns=16, seed=102),
        build("held-3spk", {"S0150": s0150, "S0252": s0252, "narrator": narrator}, turns=18, seed=103),
        build("held-4spk", {"S0150": s0150, "S0252": s0252, "narrator": narrator,
                            a3[0]: voice("aishell3", speaker=a3[0]) + voice("aishell3", speaker=a3[0])},
              turns=20, seed=104),
    ]
    if long_minutes:
        out.append(build(f"held-3spk-{long_minutes:g}min", {"S0150": s0150, "S0252": s0252, "narrator": narrator},
                         seconds=long_minutes * 60, seed=105))
    return out


def annotation(turns: list[tuple[float, float, str]]) -> Annotation:
    out = Annotation()
    for start, end, speaker in turns:
        if end > start:
            out[Segment(start, end)] = speaker
    return out


def scores(conversation: Conversation, hypothesis: list[tuple[float, float, str]]) -> dict:
    """DER (pyannote.metrics; no collar, and 0.25 s either side of each reference boundary, pyannote's
    collar=0.5), its confusion part, the 10 ms-frame speaker error, and the speakers found."""
    reference, hyp = annotation(conversation.turns), annotation(hypothesis)
    uem = Timeline([Segment(0.0, conversation.duration)])
    out: dict = {"speakers_true": len(conversation.speakers), "speakers_found": len(hyp.labels())}
    for name, collar in (("collar0", 0.0), ("collar0.25", 0.5)):
        detail = DiarizationErrorRate(collar=collar)(reference, hyp, uem=uem, detailed=True)
        total = detail["total"] or 1.0
        out[f"der_{name}"] = round(detail["diarization error rate"], 4)
        out[f"confusion_{name}"] = round(detail["confusion"] / total, 4)
        out[f"missed_{name}"] = round(detail["missed detection"] / total, 4)
        out[f"false_alarm_{name}"] = round(detail["false alarm"] / total, 4)
    out["speaker_error_frames"] = round(frame_speaker_error(conversation, hypothesis), 4)
    out["count_correct"] = out["speakers_true"] == out["speakers_found"]
    return out


def frame_speaker_error(conversation: Conversation, hypothesis: list[tuple[float, float, str]]) -> float:
    """Share of the reference's speech (10 ms frames) given to the wrong speaker under the best one-to-one
    mapping of labels (frames the hypothesis leaves unlabelled are missed speech, not counted here)."""
    frames = int(np.ceil(conversation.duration / FRAME)) + 1
    ref_names, hyp_names = conversation.speakers, sorted({h[2] for h in hypothesis})
    ref, hyp = np.full(frames, -1), np.full(frames, -1)
    for start, end, speaker in conversation.turns:
        ref[int(round(start / FRAME)) : int(round(end / FRAME))] = ref_names.index(speaker)
    for start, end, speaker in hypothesis:
        hyp[int(round(start / FRAME)) : int(round(end / FRAME))] = hyp_names.index(speaker)
    speech = ref >= 0
    both = speech & (hyp >= 0)
    if not speech.any():
        return 0.0
    overlap = np.zeros((len(ref_names), max(1, len(hyp_names))))
    np.add.at(overlap, (ref[both], hyp[both]), 1)
    rows, cols = linear_sum_assignment(-overlap)
    return float((both.sum() - overlap[rows, cols].sum()) / speech.sum())


def tune() -> dict:
    from whisper_zh.diarize.clustering import speaker_centroids
    from whisper_zh.diarize.resemblyzer_engine import ResemblyzerEngine, _frames_to_turns

    engine = ResemblyzerEngine()
    conversations = tuning_set()
    embedded = [(c, *engine.embed(c.audio)) for c in conversations]
    table = {}
    for threshold in THRESHOLDS:
        options = DiarizeOptions(threshold=threshold)
        rows = []
        for conversation, windows, embeddings in embedded:
            centroids = speaker_centroids(embeddings, options)
            turns = _frames_to_turns(windows, embeddings @ centroids.T, conversation.duration)
            rows.append(scores(conversation, [(t.start, t.end, f"S{t.speaker}") for t in turns]))
        table[threshold] = {
            "speaker_error_mean": round(float(np.mean([r["speaker_error_frames"] for r in rows])), 4),
            "count_accuracy": round(float(np.mean([r["count_correct"] for r in rows])), 3),
            "der_collar0_mean": round(float(np.mean([r["der_collar0"] for r in rows])), 4),
            "found": [r["speakers_found"] for r in rows], "true": [r["speakers_true"] for r in rows],
        }
        print(threshold, table[threshold], flush=True)
    return {"tuning": table, "conversations": [(c.name, round(c.duration, 1)) for c in conversations]}


def held_out(long_minutes: float) -> dict:
    from whisper_zh.decoding import DecodeOptions
    from whisper_zh.transcriber import Transcriber

    transcriber = Transcriber("base")
    out = {}
    for conversation in held_out_set(long_minutes):
        row = {"duration": round(conversation.duration, 1)}
        timed = conversation.name.endswith("min")
        if timed:  # the same audio without diarization first: the extra time is the difference
            row["plain_wall_s"], row["plain_cpu_s"], _ = _timed(transcriber, conversation, DecodeOptions())
        options = DecodeOptions(word_timestamps=True, diarize=DiarizeOptions())
        row["diarize_wall_s"], row["diarize_cpu_s"], result = _timed(transcriber, conversation, options)
        hypothesis = [(s.start, s.end, s.speaker) for s in result.segments if s.speaker]
        row.update(scores(conversation, hypothesis))
        if timed:
            row["extra_wall"] = round(row["diarize_wall_s"] / row["plain_wall_s"] - 1, 3)
        print(conversation.name, row, flush=True)
        out[conversation.name] = row
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def engine_only(long_minutes: float) -> dict:
    """The diarization engine alone on the held-out conversations (its own speaker turns, no transcript): what it
    costs and how well it separates speakers before the transcript's segment times come in. Memory: the peak of
    numpy's allocations (tracemalloc) while it runs, beside the size of the audio itself."""
    import tracemalloc

    from whisper_zh.diarize.engine import load_engine

    engine = load_engine()
    out = {}
    for conversation in held_out_set(long_minutes):
        tracemalloc.start()
        wall, cpu = time.perf_counter(), time.process_time()
        turns = engine.turns(conversation.audio, DiarizeOptions())
        row = {"duration": round(conversation.duration, 1), "wall_s": round(time.perf_counter() - wall, 1),
               "cpu_s": round(time.process_time() - cpu, 1),
               "peak_mb": round(tracemalloc.get_traced_memory()[1] / 2**20, 1),
               "audio_mb": round(conversation.audio.nbytes / 2**20, 1)}
        tracemalloc.stop()
        row.update(scores(conversation, [(t.start, t.end, f"S{t.speaker}") for t in turns]))
        print(conversation.name, row, flush=True)
        out[conversation.name] = row
    return out


def _timed(transcriber, conversation: Conversation, options) -> tuple[float, float, object]:  # noqa: ANN001
    wall, cpu = time.perf_counter(), time.process_time()
    result = transcriber.transcribe(conversation.audio, options)
    return round(time.perf_counter() - wall, 1), round(time.process_time() - cpu, 1), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune", action="store_true", help="score thresholds on the tuning speakers only")
    parser.add_argument("--engine-only", action="store_true", help="the diarization engine alone on the held-out set")
    parser.add_argument("--long-minutes", type=float, default=10.0, help="the timed conversation (0: none)")
    parser.add_argument("--out", default=None, help="write the numbers here as JSON")
    args = parser.parse_args()
    if args.tune:
        result = tune()
    else:
        result = engine_only(args.long_minutes) if args.engine_only else held_out(args.long_minutes)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

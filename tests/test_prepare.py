"""`whisper-zh prepare`: real AISHELL clips in every layout users have, out come manifests doctor and finetune take."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from whisper_zh.audio import load_audio
from whisper_zh.cli import main
from whisper_zh.data import load_source
from whisper_zh.data.prepare import PrepareOptions, prepare

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
S0150 = SHARED / "aishell1-sample-S0150"
AISHELL3 = SHARED / "aishell3-30-speakers"
needs_shared = pytest.mark.skipif(
    not (S0150 / "manifest.jsonl").is_file() or not (AISHELL3 / "manifest.jsonl").is_file(),
    reason=f"shared speech not found under {SHARED}",
)


def _rows(folder: Path, n: int | None = None) -> list[dict]:
    lines = (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:n]]


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _messy_manifest(tmp_path: Path) -> Path:
    """20 S0150 news clips copied beside a manifest with relative paths, plus one row of each kind of trouble."""
    data = tmp_path / "mine"
    (data / "clips").mkdir(parents=True)
    rows = []
    for row in _rows(S0150)[200:220]:
        shutil.copy(S0150 / row["audio"], data / "clips")
        rows.append({"id": row["id"], "audio": f"clips/{Path(row['audio']).name}", "text": row["text"]})
    rows[0]["text"] = "國際" + rows[0]["text"]  # Traditional characters
    first = load_audio(S0150 / _rows(S0150)[200]["audio"])
    stereo = soxr.resample(first, 16000, 44100)
    sf.write(data / "clips" / "stereo.wav", np.stack([stereo, stereo], axis=1), 44100)
    sf.write(data / "clips" / "silent.wav", np.zeros(32000, dtype=np.float32), 16000)
    sf.write(data / "clips" / "long.flac", np.tile(first, 40 * 16000 // len(first) + 1), 16000)
    rows += [
        {"id": "stereo44k", "audio": "clips/stereo.wav", "text": "立体声的句子"},
        {"id": "silent", "audio": "clips/silent.wav", "text": "什么也没有"},
        {"id": "too-long", "audio": "clips/long.flac", "text": "很长的句子"},
        {"id": "missing", "audio": "clips/nowhere.flac", "text": "找不到"},
        {"id": "again", "audio": rows[1]["audio"], "text": rows[1]["text"]},
        {"id": "no-words", "audio": rows[2]["audio"], "text": "。"},
    ]
    manifest = data / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return manifest


@needs_shared
def test_a_messy_manifest_comes_out_checked_split_and_accepted_by_doctor(tmp_path, monkeypatch):
    manifest = _messy_manifest(tmp_path)
    monkeypatch.chdir(tmp_path)  # audio paths resolve against the manifest's folder, not the working directory
    out = tmp_path / "prepared"
    summary = prepare("mine/manifest.jsonl", out, PrepareOptions(punctuate="never", seed=3))

    dropped = {row.id: row.kind for row in summary.dropped}
    assert dropped == {"silent": "silent_audio", "too-long": "too_long", "missing": "missing_audio",
                       "again": "duplicate_audio", "no-words": "empty_text"}
    assert [r["id"] for r in _read(out / "dropped.jsonl")] == [r.id for r in summary.dropped]
    splits = {name: _read(out / f"{name}.jsonl") for name in ("train", "dev", "test")}
    ids = [r["id"] for rows in splits.values() for r in rows]
    assert len(ids) == len(set(ids)) == 21 and summary.split_by == "utterance"
    assert summary.counts == {"train": 17, "dev": 2, "test": 2}
    by_id = {r["id"]: r for rows in splits.values() for r in rows}
    assert by_id["BAC009S0150W0201"]["text"].startswith("国际") and summary.converted_script == 1
    converted = out / by_id["stereo44k"]["audio"]
    assert summary.resampled == 1 and sf.info(converted).samplerate == 16000 and sf.info(converted).channels == 1
    assert abs(by_id["stereo44k"]["duration"] - len(load_audio(S0150 / _rows(S0150)[200]["audio"])) / 16000) < 0.01
    assert Path(by_id["BAC009S0150W0205"]["audio"]).is_absolute()
    # the same seed gives the same split; another seed another
    again = prepare(manifest, tmp_path / "again", PrepareOptions(punctuate="never", seed=3))
    other = prepare(manifest, tmp_path / "other", PrepareOptions(punctuate="never", seed=4))
    assert _read(tmp_path / "again" / "test.jsonl") == [
        {**r, "audio": r["audio"]} for r in splits["test"]] and again.counts == summary.counts
    assert _read(tmp_path / "other" / "test.jsonl") != splits["test"] and other.counts == summary.counts

    from whisper_zh.training.doctor import run_checks

    report = run_checks(train=str(out / "train.jsonl"), eval=str(out / "dev.jsonl"))
    data_errors = [f for f in report.errors if f.code.startswith(("train:", "eval:"))]
    assert data_errors == [], [f.line() for f in data_errors]
    assert report.summary["train"]["utterances"] == 17


@needs_shared
def test_a_kaldi_folder_of_many_speakers_splits_by_speaker(tmp_path, capsys):
    kaldi = tmp_path / "data" / "all"
    kaldi.mkdir(parents=True)
    rows = _rows(AISHELL3)
    (kaldi / "wav.scp").write_text("".join(f"{r['id']} {AISHELL3 / r['audio']}\n" for r in rows), encoding="utf-8")
    # Kaldi transcripts are word-segmented: the spaces between Chinese words go
    (kaldi / "text").write_text("".join(f"{r['id']} {' '.join(r['text'][i:i + 2] for i in range(0, len(r['text']), 2))}\n"
                                        for r in rows), encoding="utf-8")
    (kaldi / "utt2spk").write_text("".join(f"{r['id']} {r['speaker']}\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out"
    code = main(["prepare", str(kaldi), "-o", str(out), "--dev-fraction", "0.2", "--test-fraction", "0.2",
                 "--punctuate", "never", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "split by speaker" in printed and "whisper-zh doctor --train" in printed
    speakers = {name: {r["speaker"] for r in _read(out / f"{name}.jsonl")} for name in ("train", "dev", "test")}
    assert len(speakers["dev"]) == 6 and len(speakers["test"]) == 6 and len(speakers["train"]) == 18
    assert not (speakers["train"] & speakers["dev"] or speakers["train"] & speakers["test"]
                or speakers["dev"] & speakers["test"])
    texts = {r["id"]: r["text"] for r in rows}
    assert all(r["text"] == texts[r["id"]] for r in _read(out / "train.jsonl"))
    # a second run into the same folder is refused unless asked to overwrite
    assert main(["prepare", str(kaldi), "-o", str(out), "--punctuate", "never", "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["prepare", str(kaldi), "-o", str(out), "--punctuate", "never", "--no-progress",
                 "--overwrite", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["split_by"] == "speaker"


@needs_shared
def test_bare_aishell_transcripts_get_punctuation_back(tmp_path, transcriber):
    """A CSV manifest of AISHELL news (no punctuation): train and dev targets come back punctuated by the base
    model's transcripts, with exactly their own characters; the test targets stay as written."""
    rows = _rows(S0150)[300:310]
    manifest = tmp_path / "news.csv"
    manifest.write_text("audio,text,speaker\n" + "".join(f"{S0150 / r['audio']},{r['text']},S0150\n" for r in rows),
                        encoding="utf-8")
    summary = prepare(manifest, tmp_path / "out", PrepareOptions(dev_fraction=0.2, test_fraction=0.2),
                      transcriber=transcriber)
    assert summary.punctuation == "restored" and summary.punctuation_candidates == 8
    assert summary.punctuated >= 7, summary.punctuated
    bare = {Path(r["audio"]).stem: r["text"] for r in rows}
    for name in ("train", "dev"):
        for row in _read(tmp_path / "out" / f"{name}.jsonl"):
            assert "".join(c for c in row["text"] if c not in "，。？！、；：") == bare[row["id"]]
    assert [r["text"] for r in _read(tmp_path / "out" / "test.jsonl")] == [
        bare[r["id"]] for r in _read(tmp_path / "out" / "test.jsonl")]
    assert "punctuation restored in" in "\n".join(summary.lines())
    assert len(load_source(tmp_path / "out" / "train.jsonl")) == 6


@needs_shared
def test_a_sentence_read_twice_stays_in_one_split():
    """S0150 reads 7 sentences twice (W0156=W0173, ...): both readings land in one split, so dev and test never
    score a sentence the model trained on."""
    from whisper_zh.data.prepare import Row, split_rows

    rows = [Row(r["id"], r["audio"], r["text"], r["duration"], r["speaker"]) for r in _rows(S0150)]
    for seed in range(5):
        _, splits = split_rows(rows, 0.1, 0.1, seed)
        texts = {name: {r.text for r in splits[name]} for name in splits}
        assert not (texts["train"] & texts["dev"] or texts["train"] & texts["test"] or texts["dev"] & texts["test"])
        assert sum(len(s) for s in splits.values()) == 500 and abs(len(splits["test"]) - 50) <= 3

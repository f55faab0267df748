"""`whisper-zh transcribe` end to end: formats, inputs of every kind, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from tests.media import encode_audio, read_flac

from whisper_zh.cli import main
from whisper_zh.metrics import cer as raw_cer
from whisper_zh.normalize import TextNormalizer


def cer(refs, hyps):
    return raw_cer(refs, hyps, normalizer=TextNormalizer())


@pytest.fixture(scope="module")
def media(tmp_path_factory, example_clips) -> dict[str, Path]:
    """The first example clip as mp3, m4a and an mp4 video, plus bad files of each kind."""
    root = tmp_path_factory.mktemp("media")
    samples = read_flac(example_clips[0]["path"])
    files = {
        "mp3": encode_audio(samples, root / "clip.mp3", "mp3"),
        "m4a": encode_audio(samples, root / "clip.m4a", "aac"),
        "mp4": encode_audio(samples, root / "video.mp4", "aac", video=True),
        "empty": root / "empty.wav",
        "text": root / "notes.mp3",
        "silent": root / "silent.wav",
        "truncated": root / "truncated.m4a",
    }
    files["empty"].write_bytes(b"")
    files["text"].write_text("这不是音频文件\n" * 100, encoding="utf-8")
    sf.write(files["silent"], np.zeros(32000, np.float32), 16000)
    files["truncated"].write_bytes(files["m4a"].read_bytes()[:300])
    return files


def test_every_container_transcribes(media, example_clips, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "transcribe",
            str(media["mp3"]),
            str(media["m4a"]),
            str(media["mp4"]),
            "--output-dir",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    for name in ("clip", "clip-1", "video"):  # two inputs named clip.* get distinct outputs
        text = (out / f"{name}.txt").read_text(encoding="utf-8").strip()
        assert cer(example_clips[0]["text"], text).rate < 0.25, (name, text)
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_formats(example_clips, tmp_path):
    path = example_clips[1]["path"]
    for fmt in ("srt", "vtt", "json", "tsv"):
        assert main(["transcribe", path, "--format", fmt, "--output-dir", str(tmp_path), "--quiet"]) == 0
    stem = Path(path).stem
    srt = (tmp_path / f"{stem}.srt").read_text(encoding="utf-8").splitlines()
    assert srt[0] == "1" and srt[1].startswith("00:00:00,") and " --> 00:00:0" in srt[1]
    vtt = (tmp_path / f"{stem}.vtt").read_text(encoding="utf-8")
    assert vtt.startswith("WEBVTT\n\n00:00:00.")
    data = json.loads((tmp_path / f"{stem}.json").read_text(encoding="utf-8"))
    assert cer(example_clips[1]["text"], data["text"]).rate < 0.15
    assert data["segments"][0]["end"] <= data["duration"] + 0.01
    tsv = (tmp_path / f"{stem}.tsv").read_text(encoding="utf-8").splitlines()
    assert tsv[0] == "start\tend\ttext" and int(tsv[1].split("\t")[1]) <= 7200


def test_directory_and_manifest_inputs(example_clips, tmp_path, capsys):
    folder = tmp_path / "dir"
    folder.mkdir()
    for clip in example_clips:
        shutil.copy(clip["path"], folder)
    (folder / "README.txt").write_text("not audio")  # ignored: not an audio extension
    assert main(["transcribe", str(folder), "--quiet"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    manifest = Path(example_clips[0]["path"]).parent / "manifest.jsonl"
    assert main(["transcribe", str(manifest), "--quiet"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


@pytest.mark.parametrize(
    ("key", "cause"),
    [
        ("empty", "empty"),
        ("text", "cannot decode"),
        ("silent", "silent"),
        ("truncated", "cannot decode"),
        (None, "file not found"),
    ],
    ids=["zero-length", "non-audio", "silent", "truncated", "missing"],
)
def test_bad_input_is_one_line_and_others_still_processed(media, example_clips, tmp_path, capsys, key, cause):
    bad = str(media[key]) if key else str(tmp_path / "missing.wav")
    out = tmp_path / "out"
    code = main(["transcribe", bad, example_clips[0]["path"], "--output-dir", str(out), "--quiet"])
    assert code != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and bad in errors[0] and cause in errors[0]
    assert sorted(p.name for p in out.iterdir()) == [
        Path(example_clips[0]["path"]).stem + ".txt"
    ]  # nothing partial


def test_unknown_model_and_unwritable_output(example_clips, tmp_path, capsys):
    assert main(["transcribe", example_clips[0]["path"], "--model", "whisper-gigantic"]) == 2
    assert "unknown model 'whisper-gigantic'" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["transcribe", example_clips[0]["path"], "--output-dir", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "cannot be written" in err and len(err.splitlines()) == 1

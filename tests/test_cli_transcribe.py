"""`whisper-zh transcribe` end to end: formats, inputs of every kind, and one-line errors for bad input."""

from __future__ import annotations

import codecs
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from tests.media import encode_audio, read_flac

from whisper_zh.cli import main
from whisper_zh.metrics import cer as raw_cer
from whisper_zh.normalize import TextNormalizer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


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
    for name in ("clip.mp3", "clip.m4a", "video"):  # two inputs named clip.* keep their extension to stay distinct
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


@pytest.mark.parametrize(
    ("flags", "cause"),
    [(["--language", "xx"], "unknown language 'xx'"), (["--threads", "-1"], "--threads -1"),
     (["--max-cue-seconds", "0.5", "--format", "srt"], "max_cue_seconds")],
)
def test_flag_values_that_cannot_work_are_one_line_errors(example_clips, capsys, flags, cause):
    assert main(["transcribe", example_clips[0]["path"], *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and cause in err and len(err.splitlines()) == 1, err


def test_output_names_are_distinct_by_construction(example_clips, tmp_path, capsys):
    """a/x.flac, b/x.flac and x-1.flac were named x, x-1, x-1: one transcript was lost, with exit status 0."""
    first, second = (Path(clip["path"]) for clip in example_clips)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    shutil.copy(first, tmp_path / "a" / "x.flac")
    shutil.copy(second, tmp_path / "b" / "x.flac")
    shutil.copy(first, tmp_path / "x-1.flac")
    out = tmp_path / "out"
    inputs = [str(tmp_path / name) for name in ("a/x.flac", "b/x.flac", "x-1.flac")]
    assert main(["transcribe", *inputs, "--output-dir", str(out), "--quiet"]) == 0
    expected = {"a/x.txt": example_clips[0], "b/x.txt": example_clips[1], "x-1.txt": example_clips[0]}
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.txt")) == sorted(expected)
    for name, clip in expected.items():
        assert cer(clip["text"], (out / name).read_text(encoding="utf-8").strip()).rate < 0.25, name


def test_expanded_inputs_name_and_refuse():
    from whisper_zh.inputs import expand_inputs

    found = expand_inputs([str(EXAMPLES / "manifest.jsonl"), str(EXAMPLES)])
    assert [f.output for f in found.files] == ["BAC009S0150W0121", "BAC009S0150W0122"]
    assert len(found.repeated) == 2 and not found.rejected  # the folder holds the manifest's two files again


def test_a_fifo_named_on_the_command_line_is_refused_and_the_rest_done(example_clips, tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "whisper_zh", "transcribe", str(fifo), example_clips[0]["path"], "--quiet",
               "--output-dir", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)  # it used to block for ever
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {fifo}: a FIFO (named pipe), not a regular audio file; skipped"]
    assert [p.name for p in out.iterdir()] == [Path(example_clips[0]["path"]).stem + ".txt"]


def test_manifest_with_a_bom_and_a_line_that_is_not_utf8(example_clips, tmp_path, capsys):
    rows = [json.dumps({"audio": clip["path"]}).encode() for clip in example_clips]
    manifest = tmp_path / "manifest.jsonl"  # Notepad's BOM first, then a line in another encoding
    manifest.write_bytes(codecs.BOM_UTF8 + rows[0] + b"\n" + b'{"audio": "\xff\xfe.wav"}\n' + rows[1] + b"\n")
    assert main(["transcribe", str(manifest), "--quiet"]) == 1
    printed = capsys.readouterr()
    assert len(printed.out.strip().splitlines()) == 2  # both good rows, the one behind the BOM included
    errors = [line for line in printed.err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {manifest}:2: not valid UTF-8 (byte 0xff at byte 12 of the line); save the file as UTF-8"]


def test_outputs_have_the_umask_mode(example_clips, tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["transcribe", example_clips[0]["path"], "--output-dir", str(tmp_path), "--quiet"]) == 0
    finally:
        os.umask(old)
    [written] = tmp_path.iterdir()
    assert oct(written.stat().st_mode & 0o777) == oct(0o644)  # mkstemp gave 0600


def test_word_timestamps_help_names_the_format_that_has_them(capsys):
    with pytest.raises(SystemExit):
        main(["transcribe", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "character/word timestamps (in the json format only)" in help_text


def test_no_pack_gives_each_file_the_text_it_gets_alone(example_clips, tmp_path, capsys):
    """Packed with W0122, W0121 used to read 内因 where alone it reads 内音: --no-pack makes a file's text
    independent of the other inputs."""
    first, second = example_clips[0]["path"], example_clips[1]["path"]
    assert main(["transcribe", first, "--quiet"]) == 0
    alone = capsys.readouterr().out.strip()
    assert main(["transcribe", second, first, "--no-pack", "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert f"[{first}] {alone}" in lines and cer(example_clips[0]["text"], alone).rate < 0.25


def test_many_short_clips_are_written_as_they_finish(example_clips, tmp_path, monkeypatch):
    """Issue 30: 1,000 clips of 0.1 s were one transcriber group (1200 s of audio), so no output was written until
    all were decoded. The CLI hands the transcriber FILES_PER_CALL files at a time and writes each batch's outputs
    before the next is decoded (here 2 per call, on four real clips)."""
    from whisper_zh.commands import transcribe as command
    from whisper_zh.transcriber import Transcriber

    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(4):
        shutil.copy(example_clips[i % 2]["path"], clips / f"c{i}.flac")
    out = tmp_path / "out"
    seen: list[list[str]] = []
    original = Transcriber.transcribe_iter

    def watched(self, inputs, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(sorted(p.name for p in out.glob("*.txt")))  # what was on disk when this batch started
        yield from original(self, inputs, *args, **kwargs)

    monkeypatch.setattr(command, "FILES_PER_CALL", 2)
    monkeypatch.setattr(Transcriber, "transcribe_iter", watched)
    assert main(["transcribe", str(clips), "--output-dir", str(out), "--quiet"]) == 0
    assert seen == [[], ["c0.txt", "c1.txt"]]
    assert sorted(p.name for p in out.iterdir()) == [f"c{i}.txt" for i in range(4)]


def test_the_progress_bar_never_passes_its_total(example_clips, transcriber):
    """The bar counts seconds of audio; the transcriber credits them window by window. Rounded one by one, the
    updates summed past the total (927/926); summed exactly, the bar ends at its total."""
    from tqdm import tqdm

    from whisper_zh.audio import audio_duration
    from whisper_zh.commands.transcribe import SecondsProgress

    total = sum(audio_duration(c["path"]) for c in example_clips)
    bar = tqdm(total=round(total, 1), disable=True)
    progress = SecondsProgress(bar)
    for _ in transcriber.transcribe_iter([c["path"] for c in example_clips], on_progress=progress):
        pass
    assert bar.n == round(total, 1)
    fine = tqdm(total=6.0, disable=True)
    steps = SecondsProgress(fine)
    for _ in range(100):  # 100 credits of 0.06 s: one by one each rounds up to 0.1 (10.0 of 6.0 before)
        steps(0.06)
    assert fine.n == 6.0


def test_a_missing_relative_path_in_a_manifest_names_its_line(example_clips, tmp_path, capsys):
    shutil.copy(example_clips[0]["path"], tmp_path / "a.wav")
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"audio": "a.wav"}\n{"audio": "clips/b.wav"}\n', encoding="utf-8")
    assert main(["transcribe", str(manifest), "--quiet"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert errors == [f"error: {manifest}:2: audio file not found: {tmp_path / 'clips' / 'b.wav'} "
                      "(a relative path is read from the manifest's folder)"]

"""Data loaders: every format from fixtures built here out of real AISHELL clips, plus the shared manifest itself."""

from __future__ import annotations

import codecs
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from whisper_zh.audio import load_audio
from whisper_zh.data import Utterance, detect_format, load_source
from whisper_zh.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "aishell1-sample-S0150"
needs_shared = pytest.mark.skipif(
    not (SHARED / "manifest.jsonl").is_file(), reason=f"shared AISHELL clips not found at {SHARED}"
)


def _clips(n: int = 3) -> list[dict]:
    rows = [
        json.loads(line) for line in (SHARED / "manifest.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    ]
    for row in rows:
        row["path"] = SHARED / row["audio"]
    return rows


def _segmented(text: str) -> str:
    """AISHELL-style transcript: words separated by spaces (here simply every second character)."""
    return " ".join(text[i : i + 2] for i in range(0, len(text), 2))


@needs_shared
def test_shared_manifest():
    source = load_source(SHARED / "manifest.jsonl")
    assert source.format == "jsonl" and len(source) == 500 and source.problems == []
    first = next(iter(source))
    assert isinstance(first, Utterance)
    assert first.id == "BAC009S0150W0001" and first.text == "设定二十九度" and first.speaker == "S0150"
    assert first.duration == pytest.approx(2.429)
    assert Path(first.audio).is_absolute() or Path(first.audio).exists()
    assert len(first.load_audio()) / 16000 == pytest.approx(first.duration, abs=0.01)
    # The directory holding manifest.jsonl is detected as the same source; limit keeps the first N.
    assert detect_format(SHARED) == "jsonl"
    assert [u.id for u in load_source(SHARED, limit=2)] == ["BAC009S0150W0001", "BAC009S0150W0002"]


@needs_shared
def test_jsonl_relative_paths_and_bad_rows(tmp_path):
    clips = _clips(2)
    (tmp_path / "a").mkdir()
    shutil.copy(clips[0]["path"], tmp_path / "a" / "one.flac")
    lines = [
        json.dumps({"audio": "a/one.flac", "text": clips[0]["text"]}, ensure_ascii=False),
        json.dumps({"audio": "a/missing.flac", "text": "你好", "id": "gone"}),
        json.dumps({"audio": str(clips[1]["path"]), "text": "  ", "id": "blank"}),
        "{not json",
        json.dumps({"text": "no audio field"}),
        json.dumps({"audio_filepath": str(clips[1]["path"]), "text": clips[1]["text"], "duration": 2.4}),
        json.dumps({"audio": "a/one.flac", "text": "重复", "id": "one"}, ensure_ascii=False),
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    source = load_source(manifest)
    ids = [u.id for u in source]
    assert ids == ["one", clips[1]["id"]]
    assert next(iter(source)).audio == str(tmp_path / "a" / "one.flac")
    reasons = {p.id: p.reason for p in source.problems}
    assert "audio file not found" in reasons["gone"]
    assert reasons["blank"] == "empty reference text"
    assert "malformed" in reasons["line 4"] and "malformed" in reasons["line 5"]
    assert reasons["one"].startswith("duplicate id")  # the first row with the id is kept
    assert [p.where for p in source.problems][:1] == ["m.jsonl:2"]


@needs_shared
def test_kaldi_directory(tmp_path):
    clips = _clips(3)
    shutil.copy(clips[1]["path"], tmp_path / "rel.flac")
    (tmp_path / "wav.scp").write_text(
        f"{clips[0]['id']} {clips[0]['path']}\n{clips[1]['id']} rel.flac\npiped sox in.wav -t wav - |\n",
        encoding="utf-8",
    )
    (tmp_path / "text").write_text(
        f"{clips[0]['id']} {_segmented(clips[0]['text'])}\n{clips[1]['id']} {clips[1]['text']}\n"
        f"piped 你好\norphan 孤儿\n",
        encoding="utf-8",
    )
    (tmp_path / "utt2spk").write_text(f"{clips[0]['id']} spk1\n", encoding="utf-8")
    assert detect_format(tmp_path) == "kaldi"
    source = load_source(tmp_path)
    utts = list(source)
    assert [u.id for u in utts] == [clips[0]["id"], clips[1]["id"]]
    assert utts[0].text == clips[0]["text"]  # the word-segmentation spaces are gone
    assert utts[0].speaker == "spk1" and utts[1].speaker is None
    assert utts[1].audio == str(tmp_path / "rel.flac")
    reasons = {p.id: p.reason for p in source.problems}
    assert "piped" in reasons["piped"] and "without audio" in reasons["orphan"]


@needs_shared
def test_aishell_layout(tmp_path):
    clips = _clips(3)
    root = tmp_path / "data_aishell"
    (root / "transcript").mkdir(parents=True)
    for split, clip in (("test", clips[0]), ("test", clips[1]), ("dev", clips[2])):
        folder = root / "wav" / split / "S0150"
        folder.mkdir(parents=True, exist_ok=True)
        audio, rate = sf.read(clip["path"], dtype="int16")
        sf.write(folder / f"{clip['id']}.wav", audio, rate)
    sf.write(root / "wav" / "test" / "S0150" / "BAC009S0150W9999.wav", np.zeros(1600, dtype=np.int16), 16000)
    (root / "transcript" / "aishell_transcript_v0.8.txt").write_text(
        "".join(f"{c['id']} {_segmented(c['text'])}\n" for c in clips), encoding="utf-8"
    )
    assert detect_format(tmp_path) == "aishell"
    everything = load_source(tmp_path)
    assert len(everything) == 3
    test = load_source(tmp_path, split="test")
    assert [u.id for u in test] == [clips[0]["id"], clips[1]["id"]]
    first = next(iter(test))
    assert first.text == clips[0]["text"] and first.speaker == "S0150"
    assert np.allclose(first.load_audio(), load_audio(clips[0]["path"]), atol=1e-4)
    assert [p.id for p in test.problems] == ["BAC009S0150W9999"]
    with pytest.raises(DataError, match="split"):
        load_source(tmp_path, split="train")


def _write_mp3(samples: np.ndarray, path: Path, rate: int = 16000) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libmp3lame", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


@needs_shared
def test_common_voice_release(tmp_path):
    clips = _clips(2)
    (tmp_path / "clips").mkdir()
    header = "client_id\tpath\tsentence_id\tsentence\tup_votes\tdown_votes\n"
    rows = []
    for i, clip in enumerate(clips):
        name = f"common_voice_zh-CN_{i}.mp3"
        _write_mp3(load_audio(clip["path"]), tmp_path / "clips" / name)
        rows.append(f"spk{i}\t{name}\tsid{i}\t{clip['text']}。\t2\t0\n")
    rows.append("spk9\tcommon_voice_zh-CN_9.mp3\tsid9\t缺失\t2\t0\n")
    (tmp_path / "test.tsv").write_text(header + "".join(rows), encoding="utf-8")
    (tmp_path / "train.tsv").write_text(header + rows[0], encoding="utf-8")
    (tmp_path / "clip_durations.tsv").write_text(
        "clip\tduration[ms]\ncommon_voice_zh-CN_0.mp3\t2429\n", encoding="utf-8"
    )
    assert detect_format(tmp_path) == "commonvoice"
    source = load_source(tmp_path)  # test split by default
    utts = list(source)
    assert [u.id for u in utts] == ["common_voice_zh-CN_0", "common_voice_zh-CN_1"]
    assert utts[0].text == clips[0]["text"] + "。" and utts[0].speaker == "spk0"
    assert utts[0].duration == pytest.approx(2.429) and utts[1].duration is None
    decoded = utts[0].load_audio()
    assert abs(len(decoded) / 16000 - clips[0]["duration"]) < 0.1  # mp3 decoded through PyAV
    assert [p.id for p in source.problems] == ["common_voice_zh-CN_9"]
    assert len(load_source(tmp_path, split="train")) == 1
    assert len(load_source(tmp_path / "train.tsv")) == 1
    with pytest.raises(DataError, match="splits here: test, train"):
        load_source(tmp_path, split="validated")


@needs_shared
def test_hf_save_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    clips = _clips(3)
    arrays = [load_audio(c["path"]) for c in clips]
    features = datasets.Features(
        {
            "utt": datasets.Value("string"),
            "speech": datasets.List(datasets.Value("float32")),
            "transcription": datasets.Value("string"),
            "speaker_id": datasets.Value("string"),
        }
    )
    table = {
        "utt": [c["id"] for c in clips],
        "speech": [a.tolist() for a in arrays],
        "transcription": [clips[0]["text"], "", clips[2]["text"]],
        "speaker_id": ["S0150"] * 3,
    }
    single = tmp_path / "single"
    datasets.Dataset.from_dict(table, features=features).save_to_disk(str(single))
    assert detect_format(single) == "hf-disk"
    source = load_source(single, audio_column="speech", id_column="utt")
    assert len(source) == 3
    utts = list(source)
    assert [u.id for u in utts] == [clips[0]["id"], clips[2]["id"]]
    assert np.array_equal(utts[0].audio, arrays[0]) and utts[0].audio.dtype == np.float32
    assert utts[0].text == clips[0]["text"] and utts[0].speaker == "S0150"
    assert [p.id for p in source.problems] == [clips[1]["id"]]  # empty text, found while iterating
    with pytest.raises(DataError, match="no column 'wave'"):
        load_source(single, audio_column="wave")
    # A DatasetDict: the split is chosen by name.
    both = tmp_path / "dict"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(table, features=features),
            "validation": datasets.Dataset.from_dict(table, features=features).select([0]),
        }
    ).save_to_disk(str(both))
    assert len(list(load_source(both, split="validation", audio_column="speech"))) == 1
    with pytest.raises(DataError, match="available: train, validation"):
        load_source(both, audio_column="speech")


@needs_shared
def test_audio_folder_with_transcripts(tmp_path):
    clips = _clips(2)
    (tmp_path / "sub").mkdir()
    shutil.copy(clips[0]["path"], tmp_path / "a.flac")
    (tmp_path / "a.txt").write_text(clips[0]["text"] + "\n", encoding="utf-8")
    shutil.copy(clips[1]["path"], tmp_path / "sub" / "b.flac")
    (tmp_path / "sub" / "b.txt").write_text(clips[1]["text"], encoding="utf-8")
    shutil.copy(clips[1]["path"], tmp_path / "orphan.flac")
    assert detect_format(tmp_path) == "folder"
    source = load_source(tmp_path)
    assert [(u.id, u.text) for u in source] == [("a", clips[0]["text"]), ("sub/b", clips[1]["text"])]
    assert [p.id for p in source.problems] == ["orphan"]
    assert next(iter(source)).measured_duration() == pytest.approx(clips[0]["duration"], abs=0.01)


def test_a_format_that_cannot_read_the_path_is_one_line(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("", encoding="utf-8")
    for fmt in ("kaldi", "aishell", "folder"):  # kaldi ended in NotADirectoryError
        with pytest.raises(DataError, match=f"the {fmt} format is a directory"):
            load_source(manifest, fmt)
    with pytest.raises(DataError, match="manifest.jsonl: cannot read it as jsonl data"):
        load_source(tmp_path, "jsonl")  # a directory without manifest.jsonl


def test_detection_errors_and_forced_format(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_source(tmp_path / "nope" / "x.jsonl")
    assert detect_format("mozilla-foundation/common_voice_17_0") == "hub"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a recognised dataset"):
        load_source(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(DataError, match="--format"):
        load_source(tmp_path / "notes.txt")
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n", encoding="utf-8")  # a CSV manifest without its columns
    bad = load_source(tmp_path / "notes.csv").problems
    assert [(b.where, b.kind) for b in bad] == [("notes.csv:2", "malformed_row")] and "audio field" in bad[0].reason
    with pytest.raises(DataError, match="unknown data format"):
        load_source(tmp_path, format="parquet")
    # Forcing a format that does not fit gives a clear error rather than an empty source.
    with pytest.raises(DataError, match="AISHELL"):
        load_source(tmp_path / "empty", format="aishell")
    # A manifest with an unusual extension can be forced.
    (tmp_path / "rows.txt").write_text(json.dumps({"audio": "x.wav", "text": "好"}) + "\n", encoding="utf-8")
    forced = load_source(tmp_path / "rows.txt", format="jsonl")
    assert len(forced) == 0 and "not found" in forced.problems[0].reason


@needs_shared
def test_streamed_dataset_rows_as_the_hub_path_gets_them(tmp_path):
    """The hub loader streams an IterableDataset; the same conversion runs here on a local one (no network)."""
    datasets = pytest.importorskip("datasets")
    from whisper_zh.data.hf import _hf_source

    clips = _clips(2)
    table = {
        "path": [c["id"] for c in clips],
        "audio": [{"array": load_audio(c["path"]).tolist(), "sampling_rate": 16000} for c in clips],
        "sentence": [c["text"] for c in clips],
        "client_id": ["a", "b"],
    }
    stream = datasets.Dataset.from_dict(table).to_iterable_dataset()
    source = _hf_source(
        stream, "local-stream", "hub", dict.fromkeys(("audio", "text", "id", "speaker", "duration")), 1
    )
    utts = list(source)
    assert len(utts) == 1 and utts[0].text == clips[0]["text"] and utts[0].speaker == "a"
    assert isinstance(utts[0].audio, np.ndarray) and len(utts[0].audio) == len(load_audio(clips[0]["path"]))


def test_hub_id_offline_is_a_clear_error():
    import os
    import subprocess
    import sys

    code = (
        "from whisper_zh.data import load_source\n"
        "try:\n    load_source('mozilla-foundation/common_voice_17_0', config='zh-CN')\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith(
        "DataError mozilla-foundation/common_voice_17_0: cannot open the hub dataset"
    )


@needs_shared
def test_hf_audio_feature_is_read_without_torchcodec(tmp_path):
    """An `Audio` column is read undecoded (bytes) and decoded by soundfile/PyAV, not by datasets."""
    datasets = pytest.importorskip("datasets")
    clip = _clips(1)[0]
    dataset = datasets.Dataset.from_dict({"audio": [str(clip["path"])], "text": [clip["text"]]})
    dataset.cast_column("audio", datasets.Audio(sampling_rate=16000)).save_to_disk(str(tmp_path / "ds"))
    utts = list(load_source(tmp_path / "ds"))
    assert len(utts) == 1 and isinstance(utts[0].audio, np.ndarray)
    assert np.allclose(utts[0].audio, load_audio(clip["path"]), atol=1e-6)


@needs_shared
def test_text_that_is_not_utf8_is_one_bad_row_and_a_bom_is_ignored(tmp_path):
    clip = _clips(1)[0]
    good = json.dumps({"audio": str(clip["path"]), "text": clip["text"], "id": "first"}, ensure_ascii=False).encode()
    gbk = b'{"audio": "x.flac", "text": "\xb2\xe2\xca\xd4"}'  # 测试 saved as GBK
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(codecs.BOM_UTF8 + good + b"\n" + gbk + b"\n" + good.replace(b"first", b"third") + b"\n")
    source = load_source(manifest)
    assert [u.id for u in source] == ["first", "third"]
    [bad] = source.problems
    assert (bad.kind, bad.where) == ("not_utf8", "m.jsonl:2")
    assert bad.reason == "not valid UTF-8 (byte 0xb2 at byte 30 of the line); save the file as UTF-8"
    # Kaldi tables and folder transcripts the same way
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_bytes(codecs.BOM_UTF8 + f"u1 {clip['path']}\nu2 {clip['path']}\n".encode())
    (kaldi / "text").write_bytes(f"u1 {clip['text']}\n".encode() + b"u2 \xb2\xe2\xca\xd4\n")
    source = load_source(kaldi)
    assert [u.id for u in source] == ["u1"]
    assert [(p.kind, p.where) for p in source.problems][:1] == [("not_utf8", "text:2")]


@needs_shared
def test_folder_format_sees_every_audio_extension_transcribe_does(tmp_path):
    from whisper_zh.inputs import expand_inputs

    clip = _clips(1)[0]
    for name in ("a.flac", "b.mkv", "c.amr"):
        shutil.copy(clip["path"], tmp_path / name)  # the loader indexes; it does not decode
        (tmp_path / name).with_suffix(".txt").write_text(clip["text"], encoding="utf-8")
    (tmp_path / "d.wav").write_bytes(b"RIFF")
    (tmp_path / "d.txt").write_bytes(b"\xb2\xe2\xca\xd4")  # GBK: a bad row, not text with U+FFFD in it
    source = load_source(tmp_path, "folder")
    assert [u.id for u in source] == ["a", "b", "c"]
    assert [(p.id, p.kind) for p in source.problems] == [("d", "not_utf8")]
    assert sorted(Path(p).name for p in expand_inputs([str(tmp_path)]).paths) == ["a.flac", "b.mkv", "c.amr", "d.wav"]

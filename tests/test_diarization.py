"""Speaker diarization (transcribe --diarize): real voices in, speakers and their changes out.

The conversation (tests/conftest.py) is two real speakers of the shared sets taking four turns; the engine is the
real one (Resemblyzer's trained encoder, scikit-learn clustering), the transcript the real embedded Whisper base.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from whisper_zh.cli import main
from whisper_zh.decoding import DecodeOptions
from whisper_zh.diarize import DiarizeOptions, SpeakerTurn
from whisper_zh.diarize.assign import label_speakers
from whisper_zh.metrics import cer
from whisper_zh.normalize import TextNormalizer
from whisper_zh.results import Segment, Transcription, Word
from whisper_zh.server import ServerConfig, create_app, serve_in_thread
from whisper_zh.writers import format_transcription

TOLERANCE = 0.3  # seconds a speaker change may sit outside the pause between two turns


@pytest.fixture(scope="module")
def diarized(transcriber, conversation) -> Transcription:
    return transcriber.transcribe(conversation["audio"], DecodeOptions(diarize=DiarizeOptions()))


def test_two_speakers_found_and_the_changes_fall_between_turns(diarized, conversation):
    turns = conversation["turns"]
    assert diarized.speakers == ["SPEAKER_1", "SPEAKER_2"]
    expected = {"S0150": "SPEAKER_1", "narrator": "SPEAKER_2"}  # named in order of first appearance
    for start, end, speaker in turns:  # nearly every word of a turn carries that turn's speaker
        words = [w for s in diarized.segments for w in s.words if start <= (w.start + w.end) / 2 <= end]
        right = [w for w in words if w.speaker == expected[speaker]]
        assert words and len(right) >= 0.9 * len(words), (speaker, [(w.word, w.speaker) for w in words])
    segments = diarized.segments
    changes = [(a.end, b.start) for a, b in zip(segments, segments[1:], strict=False) if a.speaker != b.speaker]
    assert len(changes) == len(turns) - 1, [(s.start, s.end, s.speaker, s.text) for s in diarized.segments]
    for (left, right), turn, following in zip(changes, turns[:-1], turns[1:], strict=True):
        # the speaker before the change does not reach into the next turn, the one after it starts after this one
        assert left <= following[0] + TOLERANCE and right >= turn[1] - TOLERANCE, (left, right, turn, following)
    for segment in diarized.segments:  # one speaker a segment, words included
        assert {w.speaker for w in segment.words} == {segment.speaker}
    # diarization leaves the text as it was decoded
    assert cer(conversation["text"], diarized.text, normalizer=TextNormalizer()).rate <= 0.3, diarized.text


def test_one_speaker_gives_one_speaker_through_the_command_line(example_clips, tmp_path, capsys):
    audio = np.concatenate([np.concatenate([sf.read(c["path"], dtype="float32")[0], np.zeros(8000, np.float32)])
                            for c in example_clips])
    path = tmp_path / "one.wav"
    sf.write(path, audio, 16000)
    assert main(["transcribe", str(path), "--diarize", "--format", "json", "--output-dir", str(tmp_path),
                 "--quiet"]) == 0
    result = json.loads((tmp_path / "one.json").read_text(encoding="utf-8"))
    assert result["speakers"] == ["SPEAKER_1"]
    assert result["segments"] and {s["speaker"] for s in result["segments"]} == {"SPEAKER_1"}
    assert all(w["speaker"] == "SPEAKER_1" for s in result["segments"] for w in s["words"])


def test_near_silence_gives_no_segments_and_no_speakers(transcriber):
    noise = np.random.default_rng(0).normal(0, 1e-3, 2 * 16000).astype(np.float32)  # about -60 dBFS
    result = transcriber.transcribe(noise, DecodeOptions(diarize=DiarizeOptions()))
    assert result.segments == [] and result.speakers == []


@pytest.mark.parametrize(("flags", "message"), [
    (["--diarize", "--speakers", "0"], "error: --speakers must be between 1 and 20, not 0"),
    (["--diarize", "--min-speakers", "3", "--max-speakers", "2"], "error: --min-speakers (3) is more than --max-speakers (2)"),
    (["--speakers", "2"], "error: --speakers needs --diarize"),
    (["--diarize", "--speakers", "2", "--max-speakers", "3"], "error: --speakers is an exact count"),
])
def test_bad_speaker_counts_are_one_line_errors(example_clips, capsys, flags, message):
    assert main(["transcribe", example_clips[0]["path"], *flags, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err


def _two_voices() -> Transcription:
    words = [Word(0.0, 0.4, "你", 0.9), Word(0.4, 0.8, "好", 0.9), Word(1.5, 1.9, "再", 0.9), Word(1.9, 2.3, "见", 0.9)]
    segment = Segment(0, 0.0, 2.3, "你好再见", -0.2, 0.01, tokens=[1, 2, 3], words=words)
    return Transcription("x.wav", [segment], "zh", 2.5)


def test_a_segment_is_split_at_the_word_where_the_speaker_changes():
    turns = [SpeakerTurn(0.0, 1.0, 1), SpeakerTurn(1.4, 2.4, 0)]  # engines may number speakers in any order
    result = label_speakers(_two_voices(), turns)
    assert [(s.id, s.start, s.end, s.text, s.speaker) for s in result.segments] == [
        (0, 0.0, 0.8, "你好", "SPEAKER_1"), (1, 1.5, 2.3, "再见", "SPEAKER_2")]
    assert [w.speaker for s in result.segments for w in s.words] == ["SPEAKER_1"] * 2 + ["SPEAKER_2"] * 2
    assert label_speakers(_two_voices(), []).segments[0].speaker is None  # no speech found: nothing labelled


def test_writers_render_speaker_labels():
    t = label_speakers(_two_voices(), [SpeakerTurn(0.0, 1.0, 0), SpeakerTurn(1.4, 2.4, 1)])
    assert format_transcription(t, "txt") == "[SPEAKER_1] 你好\n\n[SPEAKER_2] 再见\n"
    srt = format_transcription(t, "srt")
    assert "\n[SPEAKER_1] 你好\n" in srt and "\n[SPEAKER_2] 再见\n" in srt
    vtt = format_transcription(t, "vtt")
    assert "\n<v Speaker 1>你好\n" in vtt and "\n<v Speaker 2>再见\n" in vtt
    assert format_transcription(t, "tsv").splitlines() == [
        "start\tend\tspeaker\ttext", "0\t800\tSPEAKER_1\t你好", "1500\t2300\tSPEAKER_2\t再见"]
    data = json.loads(format_transcription(t, "json"))
    assert data["speakers"] == ["SPEAKER_1", "SPEAKER_2"]
    assert [w["speaker"] for s in data["segments"] for w in s["words"]] == ["SPEAKER_1"] * 2 + ["SPEAKER_2"] * 2
    plain = json.loads(format_transcription(_two_voices(), "json"))  # without diarization: no speaker fields
    assert "speakers" not in plain and "speaker" not in plain["segments"][0]
    assert "speaker" not in plain["segments"][0]["words"][0]
    assert format_transcription(_two_voices(), "tsv").startswith("start\tend\ttext\n")


def test_server_diarized_json_and_labels_in_other_formats(transcriber, conversation, example_clips, tmp_path):
    import httpx

    path = tmp_path / "two.wav"
    sf.write(path, conversation["audio"], 16000)
    with serve_in_thread(create_app(ServerConfig(model="base"), transcriber=transcriber)) as url:
        def post(audio: str = str(path), **data: str) -> httpx.Response:
            with open(audio, "rb") as f:
                return httpx.post(f"{url}/v1/audio/transcriptions", files={"file": ("audio.wav", f)},
                                  data={"model": "whisper-1", **data}, timeout=300)

        body = post(response_format="diarized_json", speakers="2").json()  # OpenAI's shape
        assert body["segments"] and all(s["type"] == "transcript.text.segment" for s in body["segments"])
        assert body["speakers"] == ["SPEAKER_1", "SPEAKER_2"] and body["segments"][0]["speaker"] == "SPEAKER_1"
        assert {s["speaker"] for s in body["segments"]} == {"SPEAKER_1", "SPEAKER_2"}
        assert "".join(s["text"] for s in body["segments"]) == body["text"]
        srt = post(example_clips[0]["path"], response_format="srt", diarize="true").text  # one voice
        assert srt.startswith("1\n") and "\n[SPEAKER_1] " in srt and "SPEAKER_2" not in srt
        bad = post(response_format="diarized_json", min_speakers="3", max_speakers="2")
        assert bad.status_code == 400 and "min_speakers (3) is more than max_speakers (2)" in bad.json()["error"][
            "message"]
        assert post(response_format="json", speakers="2").status_code == 400  # speakers without diarize

"""Audio loading: every container the CLI promises, resampling, and one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from tests.media import encode_audio, read_flac

from whisper_zh.audio import SAMPLE_RATE, audio_duration, load_audio
from whisper_zh.errors import AudioError


@pytest.fixture(scope="module")
def clip(example_clips) -> np.ndarray:
    return read_flac(example_clips[0]["path"])


@pytest.mark.parametrize(
    ("suffix", "codec", "video"),
    [(".mp3", "mp3", False), (".m4a", "aac", False), (".mp4", "aac", True), (".ogg", "libopus", False)],
)
def test_compressed_formats_decode_to_the_same_signal(tmp_path, clip, suffix, codec, video):
    rate = 48000 if codec == "libopus" else SAMPLE_RATE  # Opus only runs at 48 kHz: also tests resampling
    samples = soxr.resample(clip, SAMPLE_RATE, rate) if rate != SAMPLE_RATE else clip
    path = encode_audio(samples, tmp_path / f"clip{suffix}", codec, rate=rate, video=video)
    audio = load_audio(path)
    assert abs(len(audio) - len(clip)) < 0.1 * SAMPLE_RATE  # encoder padding only
    n = min(len(audio), len(clip))
    # Lossy codecs shift and colour the signal slightly; the 25 ms amplitude envelope must still match.
    m = n - n % 400
    envelope = [np.abs(x[:m]).reshape(-1, 400).mean(axis=1) for x in (audio, clip)]
    assert np.corrcoef(*envelope)[0, 1] > 0.9


def test_resamples_and_downmixes(tmp_path, clip):
    stereo44k = np.stack([clip, clip], axis=1)
    stereo44k = soxr.resample(stereo44k, SAMPLE_RATE, 44100)
    sf.write(tmp_path / "s.wav", stereo44k, 44100)
    audio = load_audio(tmp_path / "s.wav")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - len(clip)) <= 2
    assert np.max(np.abs(audio[1000:-1000] - clip[1000:-1000])) < 0.02
    assert audio_duration(tmp_path / "s.wav") == pytest.approx(len(clip) / SAMPLE_RATE, abs=1e-3)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p, "file not found"),
        (lambda p: (p.write_bytes(b""), p)[1], "empty"),
        (lambda p: (p.write_text("这不是音频 just some text\n" * 50), p)[1], "cannot decode"),
        (lambda p: (sf.write(p, np.zeros(16000, np.float32), 16000), p)[1], "silent"),
    ],
    ids=["missing", "zero-length", "not-audio", "silent"],
)
def test_bad_input_errors_name_file_and_cause(tmp_path, make, reason):
    path = make(tmp_path / "bad.wav")
    with pytest.raises(AudioError) as info:
        load_audio(path)
    message = str(info.value)
    assert str(path) in message and reason in message and "\n" not in message


def test_truncated_flac_keeps_decodable_part_or_fails_cleanly(tmp_path, example_clips):
    data = Path(example_clips[1]["path"]).read_bytes()
    truncated = tmp_path / "cut.flac"
    truncated.write_bytes(data[: len(data) // 2])
    try:
        audio = load_audio(truncated)
    except AudioError as exc:
        assert "cut.flac" in str(exc)
    else:
        full = load_audio(example_clips[1]["path"])
        assert 0.2 * len(full) < len(audio) < 0.8 * len(full)


def test_garbage_bytes_with_audio_suffix(tmp_path):
    path = tmp_path / "noise.mp3"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError, match="noise.mp3"):
        load_audio(path)


def test_array_and_bytes_inputs(clip, example_clips):
    assert np.array_equal(load_audio(clip), clip)
    from_bytes = load_audio(Path(example_clips[0]["path"]).read_bytes())
    assert np.allclose(from_bytes, clip)
    with pytest.raises(AudioError, match="silent"):
        load_audio(np.zeros(1600, np.float32))

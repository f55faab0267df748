"""Audio loading: every container the CLI promises, resampling, and one-line errors for bad input."""

from __future__ import annotations

import io
import logging
import os
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from tests.media import encode_audio, read_flac

from whisper_zh.audio import SAMPLE_RATE, audio_duration, load_audio
from whisper_zh.errors import AudioError, AudioTooLongError, TruncatedAudioError


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
        (lambda p: (p.write_bytes(b"RIFF....WAVEfmt not really audio"), p)[1], "cannot decode"),
        (lambda p: (p.write_bytes(b"RIFF\xff\xff\xff\xffWAVEfmt \x10\0\0\0\x01\0"), p)[1], "cannot decode"),
    ],
    ids=["missing", "zero-length", "not-audio", "silent", "riff-garbage", "riff-cut-in-fmt"],
)
def test_bad_input_errors_name_file_and_cause(tmp_path, make, reason):
    path = make(tmp_path / "bad.wav")
    with pytest.raises(AudioError) as info:
        load_audio(path)
    message = str(info.value)
    assert str(path) in message and reason in message and "\n" not in message


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


# -- truncated files: the header's length against what decoded ---------------------------------------------


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_truncated_wav_and_flac_raise_with_decoded_and_declared_seconds(tmp_path, clip, fmt, caplog):
    path = tmp_path / f"cut.{fmt.lower()}"
    sf.write(path, clip, SAMPLE_RATE, format=fmt, subtype="PCM_16")
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    declared = len(clip) / SAMPLE_RATE
    with pytest.raises(TruncatedAudioError) as info:
        load_audio(path)
    error = info.value
    assert error.declared_seconds == pytest.approx(declared)
    assert 0.2 * declared < error.decoded_seconds < 0.8 * declared
    message = str(error)
    assert str(path) in message and f"{error.decoded_seconds:.1f} s" in message and f"{declared:.1f} s" in message
    assert "\n" not in message
    with caplog.at_level(logging.WARNING, logger="whisper_zh.audio"):
        audio = load_audio(path, allow_truncated=True)
    assert len(audio) / SAMPLE_RATE == pytest.approx(error.decoded_seconds, abs=0.01)
    assert np.allclose(audio, clip[: len(audio)], atol=1e-4)  # what is there decodes as it was
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "truncated" in warnings[0]


def test_whole_files_are_not_called_truncated(tmp_path, clip):
    for fmt, subtype in (("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", "PCM_24")):
        path = tmp_path / f"whole-{subtype}.{fmt.lower()}"
        sf.write(path, clip, SAMPLE_RATE, format=fmt, subtype=subtype)
        assert len(load_audio(path)) == len(clip)
    mp3 = encode_audio(clip, tmp_path / "whole.mp3", "mp3")
    assert abs(len(load_audio(mp3)) - len(clip)) < 0.1 * SAMPLE_RATE


def test_truncated_mp3_is_found_from_its_header(tmp_path, clip):
    path = encode_audio(clip, tmp_path / "talk.mp3", "mp3")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(TruncatedAudioError) as info:
        load_audio(path)
    assert info.value.declared_seconds == pytest.approx(len(clip) / SAMPLE_RATE, abs=0.1)


def test_mp3_decodes_without_mpg123_noise_on_stderr(tmp_path, clip, capfd):
    """libsndfile reads MP3 through mpg123, which prints 'Note: Illegal Audio-MPEG-Header' (and a Xing warning)
    on harmless damage such as bytes after the last frame. MP3 is decoded by PyAV instead."""
    path = encode_audio(clip, tmp_path / "talk.mp3", "mp3")
    data = path.read_bytes()
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(data[:20000] + bytes(range(256)) * 4 + data[20000:] + b"\0" * 500)
    capfd.readouterr()
    audio = load_audio(junk)
    assert audio_duration(junk) == pytest.approx(len(clip) / SAMPLE_RATE, rel=0.2)  # FFmpeg's estimate
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    assert abs(len(audio) - len(clip)) < 0.2 * SAMPLE_RATE


def test_ffmpeg_errors_do_not_carry_a_none_file_name(tmp_path, clip):
    """PyAV appends the file name to FFmpeg's message, '<none>' for a file object (the server's uploads)."""
    m4a = encode_audio(clip, tmp_path / "clip.m4a", "aac").read_bytes()
    with pytest.raises(AudioError) as info:
        load_audio(io.BytesIO(m4a[: len(m4a) // 2]))
    assert "<none>" not in str(info.value) and "cannot decode audio" in str(info.value)


# -- decompression bombs: a small file that decodes to hours ----------------------------------------------


def _flac_bomb(minutes: float, *, declared_frames: int | None = None) -> bytes:
    """FLAC of ``minutes`` of near-silence (a few kB); ``declared_frames`` rewrites STREAMINFO's total (0: unknown)."""
    audio = np.zeros(int(minutes * 60 * SAMPLE_RATE), np.float32)
    audio[:SAMPLE_RATE] = 0.1 * np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)
    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    data = bytearray(buffer.getvalue())
    if declared_frames is not None:  # STREAMINFO: 36-bit total sample count at bytes 21 (low nibble) to 25
        data[21] = (data[21] & 0xF0) | ((declared_frames >> 32) & 0x0F)
        data[22:26] = struct.pack(">I", declared_frames & 0xFFFFFFFF)
    return bytes(data)


def test_length_limit_from_the_header_decodes_nothing():
    bomb = _flac_bomb(20)
    assert len(bomb) < 200_000
    started = time.process_time()
    with pytest.raises(AudioTooLongError) as info:
        load_audio(io.BytesIO(bomb), max_seconds=60)
    assert time.process_time() - started < 0.5
    assert info.value.declared_seconds == pytest.approx(1200) and "20.0 min" in str(info.value)
    # 8-bit 8 kHz WAV: an honest header, 2 minutes in under 1 MB
    wav = io.BytesIO()
    sf.write(wav, np.full(8000 * 120, 0.1, np.float32), 8000, format="WAV", subtype="PCM_U8")
    with pytest.raises(AudioTooLongError):
        load_audio(wav.getvalue(), max_seconds=60)


@pytest.mark.parametrize("declared", [0, 30 * SAMPLE_RATE], ids=["length-unknown", "header-lies"])
def test_decoding_stops_at_the_limit_and_memory_stays_bounded(declared):
    """A header that says nothing (or too little) is not trusted: decoding stops when the limit is passed, and the
    samples held never exceed the limit's worth (60 s x 16 kHz x 4 bytes = 3.8 MB) plus one block."""
    bomb = _flac_bomb(20, declared_frames=declared)
    limit_bytes = 60 * SAMPLE_RATE * 4
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        if declared == 0:
            with pytest.raises(AudioTooLongError) as info:
                load_audio(io.BytesIO(bomb), max_seconds=60)
            assert info.value.declared_seconds is None
        else:  # libsndfile stops where the header says: 30 s, within the limit
            assert len(load_audio(io.BytesIO(bomb), max_seconds=60)) == declared
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit_bytes + 2 * 2**20, f"peak {peak / 2**20:.1f} MB"


def test_non_regular_files_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    result: dict = {}

    def attempt() -> None:
        for call in (load_audio, audio_duration):
            try:
                call(fifo)
            except AudioError as exc:
                result.setdefault("errors", []).append(str(exc))

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "reading a FIFO blocked"
    assert result["errors"] == [f"{fifo}: not a regular file"] * 2


def test_cli_refuses_truncated_input_unless_allowed(tmp_path, clip, capsys):
    from whisper_zh.cli import main

    path = tmp_path / "cut.wav"
    sf.write(path, clip, SAMPLE_RATE, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[: 44 + len(clip)])  # the header and the first half of the samples
    declared, decoded = len(clip) / SAMPLE_RATE, len(clip) / 2 / SAMPLE_RATE
    assert main(["transcribe", str(path), "--quiet", "--beam-size", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}: truncated: decoded {decoded:.1f} s of the {declared:.1f} s its header declares"]
    # allowed: the command as a user runs it (its own logging setup prints the warning on stderr)
    done = subprocess.run(
        [sys.executable, "-m", "whisper_zh", "transcribe", str(path), "--quiet", "--beam-size", "1",
         "--allow-truncated"], capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and "\u5176\u4e2d" in done.stdout  # 其中, the clip's first words
    warning = done.stderr.strip().splitlines()
    assert len(warning) == 1 and str(path) in warning[0] and f"decoded {decoded:.1f} s of the {declared:.1f} s" in warning[0]


def test_cli_truncation_warning_stands_on_its_own_line_beside_the_progress_bar(tmp_path, clip):
    # The progress bar redraws its line with \r; a warning logged while it is drawn used to be glued to the end of
    # the bar ("0/1 files:   0%|...|WARNING ..."), where a user reading the terminal or a log does not find it.
    path = tmp_path / "cut.flac"
    sf.write(path, clip, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    done = subprocess.run(
        [sys.executable, "-m", "whisper_zh", "transcribe", str(path), "--beam-size", "1", "--allow-truncated"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    pieces = [piece.strip() for piece in done.stderr.replace("\r", "\n").splitlines()]
    warnings = [piece for piece in pieces if "truncated" in piece]
    assert len(warnings) == 1 and warnings[0].startswith(f"WARNING whisper_zh.audio: {path}: truncated"), warnings

"""Audio I/O: any file or array in, 16 kHz mono float32 out, with clear errors for bad input.

WAV/FLAC/OGG are read with soundfile; everything else (mp3, m4a, opus, video containers) is decoded with
PyAV, which faster-whisper already depends on. Resampling uses soxr. Nothing here uses torchcodec
(datasets 5.x cannot decode audio on the CPU torch build; see shared/docs/stack-notes.md).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from whisper_zh.errors import AudioError

SAMPLE_RATE = 16000
# Peak amplitude below this (about -80 dBFS) is digital silence: there is nothing to transcribe.
SILENCE_PEAK = 1e-4

AudioInput = str | os.PathLike | bytes | BinaryIO | np.ndarray


def load_audio(source: AudioInput, sample_rate: int = SAMPLE_RATE, *, allow_silence: bool = False) -> np.ndarray:
    """Decode ``source`` into mono float32 samples at ``sample_rate``.

    ``source`` is a path, raw file bytes, a binary file object, or an array that is already 16 kHz mono.
    Raises :class:`AudioError` with a one-line reason for missing, empty, corrupt, non-audio or silent input.
    """
    name = describe_source(source)
    if isinstance(source, np.ndarray):
        audio = np.asarray(source, dtype=np.float32)
        if audio.ndim == 2:
            audio = audio.mean(axis=1 if audio.shape[1] <= 8 else 0)
    else:
        data, rate = _decode(source, name)
        audio = data if rate == sample_rate else soxr.resample(data, rate, sample_rate).astype(np.float32)
    if audio.size == 0:
        raise AudioError(f"{name}: no audio samples (zero-length)")
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    if not allow_silence and float(np.max(np.abs(audio))) < SILENCE_PEAK:
        raise AudioError(f"{name}: audio is silent (peak below -80 dBFS)")
    return audio


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds, from the header where possible (cheap), else by decoding."""
    try:
        info = sf.info(str(path))
        return info.frames / info.samplerate
    except (sf.LibsndfileError, RuntimeError):
        return len(load_audio(path, allow_silence=True)) / SAMPLE_RATE


def describe_source(source: AudioInput) -> str:
    """How an input is named in messages and results: its path, a file object's name, or <array>/<bytes>."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, np.ndarray):
        return "<array>"
    return getattr(source, "name", None) or "<bytes>"


def _decode(source: str | os.PathLike | bytes | BinaryIO, name: str) -> tuple[np.ndarray, int]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise AudioError(f"{name}: file not found")
        if path.is_dir():
            raise AudioError(f"{name}: is a directory, not an audio file")
        if path.stat().st_size == 0:
            raise AudioError(f"{name}: file is empty (0 bytes)")
        raw: bytes | None = None
    else:
        raw = source if isinstance(source, bytes) else source.read()
        if not raw:
            raise AudioError(f"{name}: file is empty (0 bytes)")
    try:
        data, rate = sf.read(io.BytesIO(raw) if raw is not None else str(source), dtype="float32", always_2d=True)
        return data.mean(axis=1).astype(np.float32), int(rate)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        pass  # not a format libsndfile reads (or truncated): let FFmpeg try before giving up
    return _decode_with_av(io.BytesIO(raw) if raw is not None else str(source), name)


def _decode_with_av(source: str | BinaryIO, name: str) -> tuple[np.ndarray, int]:
    import av  # PyAV: FFmpeg's decoders without a subprocess; shipped with faster-whisper

    chunks: list[np.ndarray] = []
    try:
        with av.open(source, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError(f"{name}: no audio stream (not an audio or video file)")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except AudioError:
        raise
    except (av.error.FFmpegError, ValueError, OSError, UnicodeDecodeError) as exc:
        if chunks:  # a truncated file still yields the frames before the damage
            return np.concatenate(chunks).astype(np.float32), SAMPLE_RATE
        raise AudioError(f"{name}: cannot decode audio ({_short(exc)})") from exc
    if not chunks:
        raise AudioError(f"{name}: cannot decode audio (no audio frames; corrupt or truncated file)")
    return np.concatenate(chunks).astype(np.float32), SAMPLE_RATE


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]

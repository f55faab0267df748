"""Audio I/O: any file or array in, 16 kHz mono float32 out, with clear errors for bad input.

WAV, FLAC, OGG, AIFF and CAF are read with soundfile (libsndfile); everything else (mp3, m4a, opus in WebM,
video containers) is decoded with PyAV, which faster-whisper already depends on. MP3 goes to PyAV on purpose:
libsndfile reads it through mpg123, which prints notes such as "Illegal Audio-MPEG-Header" to stderr. Resampling
uses soxr. Nothing here uses torchcodec (datasets 5.x cannot decode audio on the CPU torch build; see
shared/docs/stack-notes.md).

Decoding and resampling run block by block. :func:`load_audio` gathers the blocks into one array;
:func:`open_audio`, which the transcriber uses, gathers them in memory up to ``spool_seconds`` and writes a longer
recording to an unnamed temporary file (:class:`Spooled`), which is read back a window at a time: memory does not
grow with a file's length (230 MB of temporary disk per hour instead). ``max_seconds`` bounds what a file can take
whatever its header says: a header that declares more is refused before anything is decoded, and decoding
stops as soon as the limit is passed. A file whose audio ends before its header says it should is truncated:
:class:`~whisper_zh.errors.TruncatedAudioError` unless ``allow_truncated``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from whisper_zh.errors import AudioError, AudioTooLongError, TruncatedAudioError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# Peak amplitude below this (about -80 dBFS) is digital silence: there is nothing to transcribe.
SILENCE_PEAK = 1e-4
# Compressed formats declare their length approximately (encoder delay and padding; FFmpeg estimates an MP3's
# length from its bitrate when the Xing header disagrees with the file): audio shorter than declared by less than
# 0.5 s + 10 % still counts as whole. WAV and FLAC declare their length exactly and get no slack.
COMPRESSED_LENGTH_SLACK = (0.5, 0.10)

# A decoded recording longer than this is spooled to a temporary file by open_audio (seconds; 38 MB in memory).
SPOOL_SECONDS = 600.0


class Spooled:
    """16 kHz mono float32 samples kept in an unnamed temporary file (removed when closed or collected): a long
    recording that is read back a stretch at a time. Sliced like a 1-D array (``spooled[a:b]`` reads those
    samples into a new array); ``blocks`` yields it in order."""

    dtype = np.dtype(np.float32)
    ndim = 1

    def __init__(self) -> None:
        # kept open for the recording's life (closed by close() or when collected), so no context manager
        self._file = tempfile.TemporaryFile(prefix="whisper-zh-audio-")  # noqa: SIM115
        self._count = 0

    def write(self, block: np.ndarray) -> None:
        self._file.write(memoryview(np.ascontiguousarray(block, dtype=np.float32)).cast("B"))  # no copy
        self._count += len(block)

    def __len__(self) -> int:
        return self._count

    @property
    def shape(self) -> tuple[int]:
        return (self._count,)

    @property
    def size(self) -> int:
        return self._count

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("a spooled recording is read by slices")
        start, stop, step = key.indices(self._count)
        if step != 1:
            raise ValueError("a spooled recording is read by contiguous slices")
        out = np.empty(max(0, stop - start), dtype=np.float32)
        self._file.seek(start * out.itemsize)
        self._file.readinto(memoryview(out).cast("B"))
        return out

    def blocks(self, frames: int) -> Iterator[np.ndarray]:
        """The samples in order, ``frames`` at a time."""
        for start in range(0, self._count, frames):
            yield self[start : start + frames]

    def close(self) -> None:
        self._file.close()


AudioInput = str | os.PathLike | bytes | BinaryIO | np.ndarray | Spooled

# Containers libsndfile reads natively (their first four bytes). Anything else goes to PyAV.
_SNDFILE_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"fLaC", b"FORM", b"OggS", b"caff", b".snd")
_BLOCK_FRAMES = 1 << 16
_UNKNOWN_FRAMES = 1 << 62  # libsndfile's frame count for a stream that does not declare its length


def load_audio(
    source: AudioInput,
    sample_rate: int = SAMPLE_RATE,
    *,
    allow_silence: bool = False,
    max_seconds: float | None = None,
    allow_truncated: bool = False,
) -> np.ndarray:
    """Decode ``source`` into mono float32 samples at ``sample_rate``.

    ``source`` is a path, raw file bytes, a binary file object, or an array that is already 16 kHz mono.
    Raises :class:`AudioError` with a one-line reason for missing, empty, corrupt, non-audio or silent input;
    :class:`AudioTooLongError` for audio longer than ``max_seconds`` (from the header when it says so, else as
    soon as decoding passes the limit); :class:`TruncatedAudioError` for audio that ends before its header
    says, unless ``allow_truncated`` (then a one-line warning is logged and the part that decoded returned).
    """
    audio = open_audio(source, sample_rate, allow_silence=allow_silence, max_seconds=max_seconds,
                       allow_truncated=allow_truncated, spool_seconds=float("inf"))
    assert isinstance(audio, np.ndarray)
    return audio


def open_audio(
    source: AudioInput,
    sample_rate: int = SAMPLE_RATE,
    *,
    allow_silence: bool = False,
    max_seconds: float | None = None,
    allow_truncated: bool = False,
    spool_seconds: float | None = None,
) -> np.ndarray | Spooled:
    """:func:`load_audio`, except that a file decoding to more than ``spool_seconds`` (default SPOOL_SECONDS) is
    returned as a :class:`Spooled` recording (in a temporary file) rather than an array, so that its samples are
    never all in memory at once. An array or a Spooled recording given as ``source`` is returned as it is
    (checked)."""
    name = describe_source(source)
    if isinstance(source, np.ndarray):
        audio: np.ndarray | Spooled = _from_array(source)
        if max_seconds is not None and len(audio) > max_seconds * sample_rate:
            raise AudioTooLongError(name, max_seconds)
        _check_samples(name, len(audio), *_peak(audio), allow_silence)
        return audio
    if isinstance(source, Spooled):
        if max_seconds is not None and len(source) > max_seconds * sample_rate:
            raise AudioTooLongError(name, max_seconds)
        return source
    spool_seconds = SPOOL_SECONDS if spool_seconds is None else spool_seconds
    spool_after = None if math.isinf(spool_seconds) else int(spool_seconds * sample_rate)
    decoded = _decode(source, name, sample_rate, max_seconds, spool_after)
    _check_complete(decoded, name, allow_truncated)
    _check_samples(name, decoded.count, decoded.peak, decoded.finite, allow_silence)
    return decoded.samples


def _peak(audio: np.ndarray) -> tuple[float, bool]:
    finite = bool(np.all(np.isfinite(audio)))
    return (float(np.max(np.abs(audio))) if audio.size and finite else 0.0), finite


def _check_samples(name: str, count: int, peak: float, finite: bool, allow_silence: bool) -> None:
    if count == 0:
        raise AudioError(f"{name}: no audio samples (zero-length)")
    if not finite:
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    if not allow_silence and peak < SILENCE_PEAK:
        raise AudioError(f"{name}: audio is silent (peak below -80 dBFS)")


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds, from the header where possible (cheap), else by decoding."""
    name = describe_source(path)
    with _opened(path, name) as stream:
        seconds = _header_seconds(stream)
    if seconds is not None:
        return seconds
    return len(open_audio(path, allow_silence=True, allow_truncated=True)) / SAMPLE_RATE


def describe_source(source: AudioInput) -> str:
    """How an input is named in messages and results: its path, a file object's name, or <array>/<bytes>."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (np.ndarray, Spooled)):
        return "<array>"
    return getattr(source, "name", None) or "<bytes>"


@dataclass
class _Decoded:
    samples: np.ndarray | Spooled
    seconds: float  # decoded, at the file's own rate
    declared: float | None  # what the header says, where it says anything
    slack: float  # how much shorter than declared still counts as whole
    damaged: bool = False  # decoding stopped with an error after some audio
    count: int = 0  # samples at the output rate
    peak: float = 0.0  # largest absolute sample
    finite: bool = True


def _from_array(source: np.ndarray) -> np.ndarray:
    audio = np.asarray(source, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1 if audio.shape[1] <= 8 else 0)
    return audio


def _check_complete(decoded: _Decoded, name: str, allow_truncated: bool) -> None:
    short = decoded.declared is not None and decoded.seconds < decoded.declared - decoded.slack
    if not (short or decoded.damaged):
        return
    error = TruncatedAudioError(name, decoded.seconds, decoded.declared)
    if not allow_truncated:
        raise error
    logger.warning("%s; using the %.1f s that decoded", error, decoded.seconds)


def _decode(
    source: str | os.PathLike | bytes | BinaryIO, name: str, rate: int, max_seconds: float | None,
    spool_after: int | None,
) -> _Decoded:
    with _opened(source, name) as stream:
        result = None
        if stream.read(4) in _SNDFILE_MAGIC:
            result = _read_with_soundfile(stream, name, rate, max_seconds, spool_after)
        # not a format libsndfile reads, or one of its streams that does not declare a length: FFmpeg decodes it
        return result or _read_with_av(stream, name, rate, max_seconds, spool_after)


@contextlib.contextmanager
def _opened(source: str | os.PathLike | bytes | BinaryIO, name: str) -> Iterator[BinaryIO]:
    """A seekable binary stream over ``source`` (opened and closed here for a path), at position 0."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise AudioError(f"{name}: file not found")
        if path.is_dir():
            raise AudioError(f"{name}: is a directory, not an audio file")
        if not path.is_file():  # a FIFO, socket or device would block or never end
            raise AudioError(f"{name}: not a regular file")
        if path.stat().st_size == 0:
            raise AudioError(f"{name}: file is empty (0 bytes)")
        with open(path, "rb") as stream:
            yield stream
        return
    if isinstance(source, (bytes, bytearray, memoryview)):
        stream: BinaryIO = io.BytesIO(source)
    elif _seekable_at_start(source):
        stream = source
    else:
        stream = io.BytesIO(source.read())
    if not stream.read(1):
        raise AudioError(f"{name}: file is empty (0 bytes)")
    stream.seek(0)
    yield stream


def _seekable_at_start(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable()) and stream.tell() == 0
    except (AttributeError, OSError, ValueError):
        return False


class _Samples:
    """Decoded samples appended block by block into one buffer that grows in place (``ndarray.resize`` is a
    ``realloc``, so growing it does not copy), and that refuses to hold more than ``limit`` samples. Past
    ``spool_after`` samples, the buffer is moved to a :class:`Spooled` file and later blocks go there."""

    def __init__(self, limit: int | None, expected: float | None, spool_after: int | None = None) -> None:
        self.limit, self.spool_after = limit, spool_after
        capacity = int(expected) + _BLOCK_FRAMES if expected else 4 * _BLOCK_FRAMES
        for bound in (limit, spool_after):
            capacity = min(capacity, bound + 1) if bound is not None else capacity
        self.buffer = np.zeros(capacity, dtype=np.float32)
        self.count, self.peak, self.finite = 0, 0.0, True
        self.spool: Spooled | None = None

    def append(self, block: np.ndarray) -> None:
        needed = self.count + len(block)
        if self.limit is not None and needed > self.limit:
            raise _LimitReached
        if len(block):
            peak, finite = _peak(block)
            self.peak, self.finite = max(self.peak, peak), self.finite and finite
        if self.spool is None and self.spool_after is not None and needed > self.spool_after:
            self.spool = Spooled()
            self.spool.write(self.buffer[: self.count])
            self.buffer = np.zeros(0, dtype=np.float32)
        if self.spool is not None:
            self.spool.write(block)
            self.count = needed
            return
        if needed > len(self.buffer):
            grown = max(needed, 2 * len(self.buffer))
            self.buffer.resize(min(grown, self.limit + 1) if self.limit is not None else grown, refcheck=False)
        self.buffer[self.count : needed] = block
        self.count = needed

    def result(self) -> np.ndarray | Spooled:
        if self.spool is not None:
            return self.spool
        self.buffer.resize(self.count, refcheck=False)
        return self.buffer

    def decoded(self, seconds: float, declared: float | None, slack: float, damaged: bool) -> _Decoded:
        return _Decoded(self.result(), seconds, declared, slack, damaged, self.count, self.peak, self.finite)


class _LimitReached(Exception):
    pass


def _read_with_soundfile(
    stream: BinaryIO, name: str, rate: int, max_seconds: float | None, spool_after: int | None
) -> _Decoded | None:
    """Decode with libsndfile; None where it cannot (PyAV tries next)."""
    declared_wav = _wav_declared_frames(stream)
    stream.seek(0)
    try:
        handle = sf.SoundFile(stream)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None
    with handle:
        if handle.frames >= _UNKNOWN_FRAMES:
            return None
        native = handle.samplerate
        declared = (declared_wav if declared_wav is not None else handle.frames) / native
        _check_declared(declared, max_seconds, name)
        samples = _Samples(_limit(max_seconds, rate), declared * rate, spool_after)
        resampler = soxr.ResampleStream(native, rate, 1, dtype="float32") if native != rate else None
        frames, damaged = 0, False
        try:
            while len(block := handle.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)):
                frames += len(block)
                mono = block.mean(axis=1, dtype=np.float32)
                samples.append(resampler.resample_chunk(mono) if resampler else mono)
            if resampler:
                samples.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        except _LimitReached:
            raise AudioTooLongError(name, max_seconds or 0.0) from None
        except sf.LibsndfileError:
            if not frames:
                return None
            damaged = True  # e.g. FLAC "lost sync" where the file was cut
    return samples.decoded(frames / native, declared, 0.0, damaged)


def _read_with_av(
    stream: BinaryIO, name: str, rate: int, max_seconds: float | None, spool_after: int | None
) -> _Decoded:
    import av  # PyAV: FFmpeg's decoders without a subprocess; shipped with faster-whisper

    stream.seek(0)
    try:
        container = av.open(stream, mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, ValueError, OSError, UnicodeDecodeError) as exc:
        raise AudioError(f"{name}: cannot decode audio ({_short(exc)})") from exc
    with container:
        if not container.streams.audio:
            raise AudioError(f"{name}: no audio stream (not an audio or video file)")
        audio = container.streams.audio[0]
        declared = _av_declared_seconds(container, audio)
        _check_declared(declared, max_seconds, name)
        samples = _Samples(_limit(max_seconds, rate), declared * rate if declared else None, spool_after)
        try:
            damaged = _av_decode_into(container, audio, samples, rate)
        except _LimitReached:
            raise AudioTooLongError(name, max_seconds or 0.0) from None
        except (av.error.FFmpegError, ValueError, OSError, UnicodeDecodeError) as exc:
            raise AudioError(f"{name}: cannot decode audio ({_short(exc)})") from exc
    if not samples.count:
        raise AudioError(f"{name}: cannot decode audio (no audio frames; corrupt or truncated file)")
    fixed, relative = COMPRESSED_LENGTH_SLACK
    slack = fixed + relative * (declared or 0.0)
    return samples.decoded(samples.count / rate, declared, slack, damaged)


def _av_decode_into(container: object, audio: object, samples: _Samples, rate: int) -> bool:
    """Decode ``audio`` into ``samples``; a packet that does not decode is skipped, as FFmpeg's own tools do.
    Returns whether decoding stopped early on an error (a file cut short), after some audio."""
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    try:
        for packet in container.demux(audio):  # type: ignore[attr-defined]
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                continue
            for frame in frames:
                for out in resampler.resample(frame):
                    samples.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            samples.append(out.to_ndarray().reshape(-1))
    except (av.error.FFmpegError, OSError):
        if not samples.count:
            raise
        return True
    return False


def _av_declared_seconds(container: object, audio: object) -> float | None:
    if audio.duration and audio.time_base:  # type: ignore[attr-defined]
        return float(audio.duration * audio.time_base)  # type: ignore[attr-defined]
    if container.duration:  # type: ignore[attr-defined]
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _header_seconds(stream: BinaryIO) -> float | None:
    """Duration from the header alone (no decoding), or None where the header does not say."""
    if stream.read(4) in _SNDFILE_MAGIC:
        stream.seek(0)
        with contextlib.suppress(sf.LibsndfileError, RuntimeError, TypeError), sf.SoundFile(stream) as handle:
            if handle.frames < _UNKNOWN_FRAMES:
                return handle.frames / handle.samplerate
    import av

    stream.seek(0)
    with contextlib.suppress(av.error.FFmpegError, ValueError, OSError, UnicodeDecodeError), av.open(
        stream, mode="r", metadata_errors="ignore"
    ) as container:
        if container.streams.audio:
            return _av_declared_seconds(container, container.streams.audio[0])
    return None


def _wav_declared_frames(stream: BinaryIO) -> int | None:
    """Frames a RIFF/WAVE header declares (its data chunk's size over the block size), or None.

    Read by hand because libsndfile replaces a length that runs past the end of the file by what is there
    (which hides truncation), and the standard library's ``wave`` refuses float WAVs.
    """
    stream.seek(0)
    head = stream.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    block_align = None
    for _ in range(64):  # a WAV has a handful of chunks; a hostile one gets no endless walk
        chunk = stream.read(8)
        if len(chunk) < 8:
            return None
        kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if kind == b"fmt " and size >= 16:
            fmt = stream.read(16)
            if len(fmt) < 16:
                return None
            block_align = struct.unpack("<H", fmt[12:14])[0]
            stream.seek(size - 16 + (size & 1), io.SEEK_CUR)
        elif kind == b"data":
            # 0 and 0xFFFFFFFF are what streaming writers leave when they cannot go back to fill the size in
            unknown = size in (0, 0xFFFFFFFF) or not block_align
            return None if unknown else size // block_align
        else:
            stream.seek(size + (size & 1), io.SEEK_CUR)
    return None


def _check_declared(declared: float | None, max_seconds: float | None, name: str) -> None:
    if max_seconds is not None and declared is not None and declared > max_seconds:
        raise AudioTooLongError(name, max_seconds, declared)


def _limit(max_seconds: float | None, rate: int) -> int | None:
    return None if max_seconds is None else int(max_seconds * rate) + 1


def _short(exc: Exception) -> str:
    """One line for an exception; FFmpeg's errors without the '<none>' file name PyAV appends to them."""
    text = getattr(exc, "strerror", None) or str(exc).strip() or type(exc).__name__
    return str(text).strip().splitlines()[0][:160]

"""Audio a live stream has received ahead of its transcription, kept on disk until the session has room for it.

A client may send faster than real time (a file streamed from disk, a replay, a slow network catching up). The
server must keep reading its socket all the same: WebSocket keep-alive pings and pongs travel in the same byte
stream as the audio, so a server that stops reading to push back (TCP back-pressure) stops answering pings, and
after ``ping_interval + ping_timeout`` (40 s with uvicorn's and the `websockets` client's defaults) one side closes
the connection with 1011 "keepalive ping timeout" and the transcript is lost. So the session holds at most
``max_buffer_seconds`` in memory, and what arrives beyond it waits here, in an anonymous temporary file (unlinked
at once by the OS, so nothing is left behind even if the process dies), until decoding catches up.
"""

from __future__ import annotations

import tempfile
from typing import IO

import numpy as np

from whisper_zh.audio import SAMPLE_RATE

_WIDTH = 4  # float32


class AudioSpool:
    """A first-in first-out file of 16 kHz float32 samples: :meth:`write` at the end, :meth:`read` from the front."""

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self._read = self._written = 0  # byte offsets

    @property
    def seconds(self) -> float:
        """Audio waiting in the spool."""
        return (self._written - self._read) / _WIDTH / SAMPLE_RATE

    def __len__(self) -> int:
        return (self._written - self._read) // _WIDTH

    def write(self, samples: np.ndarray) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="whisper-zh-live-")  # noqa: SIM115 - closed by close()
        self._file.seek(self._written)
        self._file.write(np.ascontiguousarray(samples, dtype="<f4").tobytes())
        self._written = self._file.tell()

    def read(self, max_samples: int) -> np.ndarray:
        """Up to ``max_samples`` samples from the front (fewer if fewer are waiting)."""
        n = min(max_samples, len(self))
        if n <= 0 or self._file is None:
            return np.zeros(0, np.float32)
        self._file.seek(self._read)
        data = self._file.read(n * _WIDTH)
        self._read += len(data)
        if self._read == self._written:  # empty: start the file again from its beginning
            self._file.truncate(0)
            self._read = self._written = 0
        return np.frombuffer(data, dtype="<f4").astype(np.float32)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._read = self._written = 0

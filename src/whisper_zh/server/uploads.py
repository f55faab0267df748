"""Uploads: the gate that limits how many request bodies are read at once, and an uploaded file to 16 kHz
samples within the server's limits on length (and so on memory)."""

from __future__ import annotations

import math
import threading
import time
from typing import Any, BinaryIO

import numpy as np
from fastapi import UploadFile

from whisper_zh.audio import Spooled, open_audio
from whisper_zh.errors import AudioError
from whisper_zh.server.errors import audio_error


class UploadGate:
    """Admission for requests reading their body: at most ``limit`` at once."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the upload limit must be at least 1")
        self.limit = limit
        self.active = 0
        self._typical = 1.0  # running estimate of one upload's seconds, for Retry-After
        self._lock = threading.Lock()

    def try_enter(self) -> UploadPermit | None:
        with self._lock:
            if self.active >= self.limit:
                return None
            self.active += 1
        return UploadPermit(self)

    def retry_after(self) -> int:
        return max(1, math.ceil(self._typical))

    def _leave(self, seconds: float) -> None:
        with self._lock:
            self.active -= 1
            self._typical = 0.7 * self._typical + 0.3 * seconds


class UploadPermit:
    """One upload being read; :meth:`release` (idempotent) when its body is complete or the request ends."""

    def __init__(self, gate: UploadGate) -> None:
        self._gate, self._started, self._released = gate, time.monotonic(), False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._gate._leave(time.monotonic() - self._started)


def decode_upload(upload: UploadFile, max_seconds: float, *, allow_truncated: bool) -> np.ndarray | Spooled:
    """Decode the upload straight from Starlette's spool (memory up to 1 MB, then an unnamed temporary file,
    closed and removed with the request): the request holds at most ``max_seconds`` of samples, whatever the
    file's header claims, and a long one is spooled to a temporary file as the transcriber reads files
    (audio.open_audio). Raises :class:`ApiError` (400/413) for audio it cannot use."""
    upload.file.seek(0)
    source = _Named(upload.file, upload.filename or "file")
    try:
        return open_audio(source, max_seconds=max_seconds, allow_truncated=allow_truncated)
    except AudioError as exc:
        raise audio_error(exc) from exc


class _Named:
    """A file object under the name the client gave it (the spool's own name is a number or None)."""

    def __init__(self, stream: BinaryIO, name: str) -> None:
        self._stream, self.name = stream, name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._stream, attribute)

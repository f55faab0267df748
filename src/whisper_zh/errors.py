"""Error types: one hierarchy, so the CLI and server can turn any failure into a one-line message."""

from __future__ import annotations


class WhisperZhError(Exception):
    """Base class for every error whisper-zh raises on purpose."""


class UsageError(WhisperZhError, ValueError):
    """A flag, option or argument the user gave that cannot work as given (also a ValueError, for API callers)."""


class AudioError(WhisperZhError):
    """Audio that is missing, unreadable, corrupt, empty or silent."""


class AudioTooLongError(AudioError):
    """Audio longer than a limit: known from its header before decoding, or found when decoding passed the limit."""

    def __init__(self, name: str, limit_seconds: float, declared_seconds: float | None = None) -> None:
        self.limit_seconds, self.declared_seconds = limit_seconds, declared_seconds
        if declared_seconds is not None:
            said = f"audio is {_duration(declared_seconds)} long (from its header)"
        else:
            said = "audio is longer than that (decoding stopped at the limit)"
        super().__init__(f"{name}: {said}; the limit is {_duration(limit_seconds)}")


class TruncatedAudioError(AudioError):
    """Audio that ends before its header says it should (a file cut short), or that stops decoding with an error
    part of the way through. ``declared_seconds`` is None where the header gives no length."""

    def __init__(self, name: str, decoded_seconds: float, declared_seconds: float | None) -> None:
        self.decoded_seconds, self.declared_seconds = decoded_seconds, declared_seconds
        if declared_seconds is not None:
            said = f"truncated: decoded {decoded_seconds:.1f} s of the {declared_seconds:.1f} s its header declares"
        else:
            said = f"truncated or damaged: decoding stopped with an error after {decoded_seconds:.1f} s"
        super().__init__(f"{name}: {said}")


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class ModelNotFoundError(WhisperZhError):
    """A model name that resolves to nothing loadable."""


class ModelLoadError(WhisperZhError):
    """A model that exists but cannot be loaded or run as asked (device, compute type, library version)."""


class DataError(WhisperZhError):
    """A dataset or manifest that cannot be read."""


class MetricError(WhisperZhError):
    """A metric asked for on text it cannot be computed on honestly."""

"""Error types: one hierarchy, so the CLI and server can turn any failure into a one-line message."""

from __future__ import annotations


class WhisperZhError(Exception):
    """Base class for every error whisper-zh raises on purpose."""


class UsageError(WhisperZhError, ValueError):
    """A flag, option or argument the user gave that cannot work as given (also a ValueError, for API callers)."""


class AudioError(WhisperZhError):
    """Audio that is missing, unreadable, corrupt, empty or silent."""


class ModelNotFoundError(WhisperZhError):
    """A model name that resolves to nothing loadable."""


class ModelLoadError(WhisperZhError):
    """A model that exists but cannot be loaded or run as asked (device, compute type, library version)."""


class DataError(WhisperZhError):
    """A dataset or manifest that cannot be read."""


class MetricError(WhisperZhError):
    """A metric asked for on text it cannot be computed on honestly."""

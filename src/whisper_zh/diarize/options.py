"""What diarization is asked for (:class:`DiarizeOptions`) and what an engine answers (:class:`SpeakerTurn`)."""

from __future__ import annotations

from dataclasses import dataclass

# Cosine distance between the centroids of two groups of speech windows above which they are different speakers
# (average linkage). Tuned on AISHELL-3 voices only (bench/diarization.py --tune); checked on S0150, S0252 and
# the narrator, which it never saw (bench/RESULTS.md).
DEFAULT_THRESHOLD = 0.35
MAX_SPEAKERS = 20


@dataclass(frozen=True)
class DiarizeOptions:
    """``speakers`` fixes the number of speakers; otherwise it is found (distance ``threshold``) and kept within
    ``min_speakers``..``max_speakers``. Bad values raise ValueError with a one-line message."""

    speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        for name in ("speakers", "min_speakers", "max_speakers"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= MAX_SPEAKERS:
                raise ValueError(f"{name.replace('_', '-')} must be between 1 and {MAX_SPEAKERS}, not {value}")
        if self.min_speakers and self.max_speakers and self.min_speakers > self.max_speakers:
            raise ValueError(f"min-speakers ({self.min_speakers}) is more than max-speakers ({self.max_speakers})")
        if self.speakers and (self.min_speakers or self.max_speakers):
            raise ValueError("speakers is an exact count: give it without min-speakers/max-speakers")
        if not 0.0 < self.threshold < 2.0:
            raise ValueError(f"the speaker distance threshold must be between 0 and 2, not {self.threshold}")

    @property
    def bounds(self) -> tuple[int, int]:
        """The least and the most speakers allowed."""
        if self.speakers:
            return self.speakers, self.speakers
        return self.min_speakers or 1, self.max_speakers or MAX_SPEAKERS


@dataclass(frozen=True)
class SpeakerTurn:
    """One speaker talking from ``start`` to ``end`` (seconds); ``speaker`` is a number from 0."""

    start: float
    end: float
    speaker: int


def speaker_name(index: int) -> str:
    """The label written in transcripts: SPEAKER_1, SPEAKER_2, ... in order of first appearance."""
    return f"SPEAKER_{index + 1}"

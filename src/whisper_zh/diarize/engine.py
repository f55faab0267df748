"""The diarization engine protocol, and the engines that fit it.

An engine answers one question: who spoke from when to when in this recording (16 kHz mono). The transcript's
words are given speakers afterwards (:mod:`whisper_zh.diarize.assign`), so any engine that returns
:class:`~whisper_zh.diarize.options.SpeakerTurn` fits: the built-in Resemblyzer engine, or a pyannote.audio
pipeline where the user has its weights::

    from pyannote.audio import Pipeline
    engine = PyannoteEngine(Pipeline.from_pretrained("pyannote/speaker-diarization-3.1", token=...))
    Transcriber("base", diarizer=engine)
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.diarize.options import DiarizeOptions, SpeakerTurn


class DiarizationEngine(Protocol):
    name: str

    def turns(self, audio: np.ndarray, options: DiarizeOptions) -> list[SpeakerTurn]:
        """Speaker turns of ``audio`` (16 kHz mono float32), speakers numbered from 0, in time order."""
        ...


class PyannoteEngine:
    """A pyannote.audio speaker-diarization pipeline (3.x or 4.x) behind the engine protocol."""

    name = "pyannote"

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def turns(self, audio: np.ndarray, options: DiarizeOptions) -> list[SpeakerTurn]:
        import torch

        if options.speakers:
            bounds: dict[str, int] = {"num_speakers": options.speakers}
        else:
            low, high = options.bounds
            bounds = {"min_speakers": low, "max_speakers": high}
        output = self.pipeline({"waveform": torch.from_numpy(audio)[None], "sample_rate": SAMPLE_RATE}, **bounds)
        annotation = getattr(output, "speaker_diarization", output)  # pyannote.audio 4 wraps the annotation
        numbers: dict[str, int] = {}
        return [SpeakerTurn(float(seg.start), float(seg.end), numbers.setdefault(label, len(numbers)))
                for seg, _track, label in annotation.itertracks(yield_label=True)]


def load_engine(name: str = "resemblyzer", *, device: str = "cpu") -> DiarizationEngine:
    """The built-in engine (loaded on first use: it imports torch, librosa and SciPy)."""
    if name != "resemblyzer":
        raise ValueError(f"unknown diarization engine '{name}': the built-in one is resemblyzer "
                         "(a pyannote pipeline is passed in as PyannoteEngine(pipeline))")
    try:
        from whisper_zh.diarize.resemblyzer_engine import ResemblyzerEngine
    except ImportError as exc:
        raise ImportError(f"speaker diarization needs Resemblyzer and librosa ({exc}); install them with "
                          "pip install 'whisper-zh[diarize]' (see docs/diarization.md)") from exc
    return ResemblyzerEngine(device)

"""Who spoke when: speaker diarization, a stage after decoding.

A :class:`~whisper_zh.diarize.engine.DiarizationEngine` turns a recording into speaker turns (who spoke from when
to when); :func:`~whisper_zh.diarize.assign.label_speakers` gives every word the speaker whose turns overlap it most
and splits segments where the speaker changes. The default engine (:mod:`whisper_zh.diarize.resemblyzer_engine`)
embeds short windows of speech with Resemblyzer and clusters them with SciPy; a pyannote.audio pipeline can
take its place (:class:`~whisper_zh.diarize.engine.PyannoteEngine`).

This package's ``__init__`` imports only the light parts (options and types): the decoding options refer to
them, and the heavy engines load only when a recording is diarized.
"""

from whisper_zh.diarize.options import DiarizeOptions, SpeakerTurn, speaker_name

__all__ = ["DiarizeOptions", "SpeakerTurn", "speaker_name"]

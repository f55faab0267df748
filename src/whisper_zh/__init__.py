"""whisper-zh: Mandarin Chinese speech recognition with Whisper.

Public API::

    from whisper_zh import Transcriber, DecodeOptions
    result = Transcriber("base").transcribe("clip.wav")
    print(result.text)
    for segment in result.segments:
        print(segment.start, segment.end, segment.text)
"""

from whisper_zh.decoding import DecodeOptions
from whisper_zh.results import Segment, Transcription, Word
from whisper_zh.transcriber import Transcriber

__all__ = ["DecodeOptions", "Segment", "Transcriber", "Transcription", "Word"]
__version__ = "0.1.0"  # the package's version (pyproject.toml reads it from here)

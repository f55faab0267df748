"""Speech data sources: one loader interface over the corpus layouts Mandarin ASR data comes in.

``load_source(spec, format=None, **options) -> DataSource``; a :class:`DataSource` iterates
:class:`Utterance` (id, audio, text, duration, speaker), where ``audio`` is a file path or a 16 kHz mono float32
array. Formats (detected from ``spec`` unless ``format`` forces one):

=============  ======================================================================================================
``jsonl``      a JSONL manifest: ``audio`` (path relative to the manifest), ``text``, optional ``id``, ``duration``,
               ``speaker`` (NeMo's ``audio_filepath`` also works). A directory holding ``manifest.jsonl`` works too.
``csv``        a CSV manifest with a header line and the same columns as ``jsonl``.
``kaldi``      a Kaldi data directory: ``wav.scp`` + ``text`` (+ optional ``utt2spk``, ``utt2dur``).
``aishell``    AISHELL-1: ``transcript/aishell_transcript_v0.8.txt`` + ``wav/<split>/<speaker>/*.wav``
               (the release root or its ``data_aishell`` folder; ``split`` picks train/dev/test).
``commonvoice`` a Common Voice release directory (``<split>.tsv`` with ``path`` and ``sentence``, ``clips/*.mp3``)
               or one of its ``.tsv`` files; ``split`` defaults to ``test``.
``hf-disk``    a Hugging Face dataset saved with ``save_to_disk``; audio as a float32 list column, an ``Audio``
               column (read undecoded, then decoded here) or a path column.
``hub``        a Hugging Face hub id (``mozilla-foundation/common_voice_17_0`` with ``config="zh-CN"``), online only.
``folder``     a folder (searched recursively) of audio files, each with a same-named ``.txt`` transcript.
=============  ======================================================================================================

Column names are configurable (``audio_column``, ``text_column``, ``id_column``, ``speaker_column``,
``duration_column``) for the formats that have columns. Rows that cannot be used (no audio file, empty text,
malformed line, a line that is not UTF-8) are never silently dropped: they are listed in ``DataSource.problems``
(a :class:`BadRow` with a ``kind`` that names the reason) and not yielded. Text files may start with a UTF-8 BOM.
Kaldi and AISHELL transcripts are word-segmented; their spaces between CJK characters are removed so the text
reads as Whisper writes it. Audio is decoded without torchcodec (soundfile / PyAV, see :mod:`whisper_zh.audio`).
"""

from whisper_zh.data.base import (
    AUDIO_EXTENSIONS,
    BAD_ROW_KINDS,
    DEFAULT_COLUMNS,
    BadRow,
    DataSource,
    TextLine,
    Utterance,
    count_kinds,
    read_lines,
)
from whisper_zh.data.sources import FORMATS, Format, detect_format, load_source

__all__ = [
    "AUDIO_EXTENSIONS",
    "BAD_ROW_KINDS",
    "DEFAULT_COLUMNS",
    "FORMATS",
    "BadRow",
    "DataSource",
    "Format",
    "TextLine",
    "Utterance",
    "count_kinds",
    "detect_format",
    "load_source",
    "read_lines",
]

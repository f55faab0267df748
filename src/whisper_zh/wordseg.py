"""Chinese word boundaries, from jieba: where a line may break and what WER counts as a word.

One cached jieba tokenizer serves the scorer (:mod:`whisper_zh.metrics`) and the subtitle cutter
(:mod:`whisper_zh.subtitles`).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _jieba() -> Any:
    import jieba

    jieba.setLogLevel(logging.WARNING)  # silence "Building prefix dict..." on first use
    tokenizer = jieba.Tokenizer()
    tokenizer.initialize()
    return tokenizer


def segment_words(text: str) -> list[str]:
    """Split ``text`` into words with jieba (Latin words and numbers stay whole; whitespace is dropped)."""
    return [word for word in _jieba().lcut(text) if word.strip()]


def word_boundaries(text: str) -> set[int]:
    """Character offsets in ``text`` where one word ends and the next begins (0 and len(text) excluded)."""
    ends, position = set(), 0
    for token in _jieba().lcut(text):
        position += len(token)
        ends.add(position)
    ends.discard(len(text))
    return ends

"""Text normalisation: Traditional -> Simplified conversion for output, and the scoring normaliser.

OpenCC does the script conversion (t2s for output, s2t on request).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import opencc

Script = Literal["simplified", "traditional", "as-is"]


@lru_cache(maxsize=4)
def _converter(config: str) -> opencc.OpenCC:
    return opencc.OpenCC(config)


def convert_script(text: str, script: Script = "simplified") -> str:
    """Convert ``text`` to the requested Chinese script: 'simplified' (t2s), 'traditional' (s2t) or 'as-is'."""
    if script == "as-is" or not text:
        return text
    if script == "simplified":
        return _converter("t2s").convert(text)
    if script == "traditional":
        return _converter("s2t").convert(text)
    raise ValueError(f"unknown script '{script}': use simplified, traditional or as-is")

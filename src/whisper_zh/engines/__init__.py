"""Decoding engines: one :class:`Decoder` protocol, two implementations, one way to load them.

- :mod:`whisper_zh.engines.ctranslate2`: CTranslate2 through faster-whisper (the default; fast; aligns words).
- :mod:`whisper_zh.engines.transformers`: a Transformers checkpoint as it is (no conversion).

:func:`load_decoder` picks the implementation; nothing else in the package branches on the engine. It is handed
a directory already in the engine's layout (:func:`whisper_zh.convert.local_model` resolves, converts and caches
before): an engine only loads.
"""

from __future__ import annotations

import os
from typing import Literal

from whisper_zh.engines.base import Decoded, Decoder, RawSegment, RawWord
from whisper_zh.errors import UsageError

Engine = Literal["ctranslate2", "transformers"]
ENGINES: tuple[str, ...] = ("ctranslate2", "transformers")


def load_decoder(
    path: str | os.PathLike, engine: Engine = "ctranslate2", *, storage_type: str = "unknown", device: str = "cpu",
    compute_type: str = "int8", cpu_threads: int = 0, workers: int = 1,
) -> Decoder:
    """Load the model directory ``path``, in ``engine``'s layout, with ``engine``. ``storage_type``: how its
    weights are stored (reports name it). ``workers``: decodes that may run at once from several threads
    (CTranslate2 only; a Transformers model decodes one call at a time)."""
    if engine == "ctranslate2":
        from whisper_zh.engines.ctranslate2 import CTranslate2Decoder

        return CTranslate2Decoder(str(path), device=device, compute_type=compute_type, cpu_threads=cpu_threads,
                                  workers=workers, storage_type=storage_type)
    if engine == "transformers":
        if workers != 1:
            raise UsageError("parallel decodes (workers > 1) need the ctranslate2 engine")
        from whisper_zh.engines.transformers import TransformersDecoder  # torch only for this engine

        return TransformersDecoder.load(path, device=device)
    raise ValueError(f"unknown engine '{engine}': use {' or '.join(ENGINES)}")


__all__ = ["ENGINES", "Decoded", "Decoder", "Engine", "RawSegment", "RawWord", "load_decoder"]

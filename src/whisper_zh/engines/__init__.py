"""Decoding engines: one :class:`Decoder` protocol, two implementations, one way to load them.

- :mod:`whisper_zh.engines.ctranslate2`: CTranslate2 through faster-whisper (the default; fast; aligns words).
- :mod:`whisper_zh.engines.transformers`: a Transformers checkpoint as it is (no conversion).

:func:`load_decoder` picks the implementation; nothing else in the package branches on the engine.
"""

from __future__ import annotations

from typing import Literal

from whisper_zh.engines.base import Decoded, Decoder, RawSegment, RawWord
from whisper_zh.errors import UsageError
from whisper_zh.models import ResolvedModel

Engine = Literal["ctranslate2", "transformers"]
ENGINES: tuple[str, ...] = ("ctranslate2", "transformers")


def load_decoder(
    resolved: ResolvedModel, engine: Engine = "ctranslate2", *, device: str = "cpu", compute_type: str = "int8",
    cpu_threads: int = 0, workers: int = 1,
) -> Decoder:
    """Load ``resolved`` with ``engine``. A Transformers checkpoint given to CTranslate2 is converted once (and
    cached) with float16 storage, as the embedded model is stored, so the same weights quantise the same way
    at load whichever layout they came in. ``workers``: decodes that may run at once from several threads
    (CTranslate2 only; a Transformers model decodes one call at a time)."""
    if engine == "ctranslate2":
        from whisper_zh.convert import ct2_storage_type, ensure_ctranslate2
        from whisper_zh.engines.ctranslate2 import CTranslate2Decoder

        path = ensure_ctranslate2(resolved)
        return CTranslate2Decoder(str(path), device=device, compute_type=compute_type, cpu_threads=cpu_threads,
                                  workers=workers, storage_type=ct2_storage_type(path))
    if engine == "transformers":
        if workers != 1:
            raise UsageError("parallel decodes (workers > 1) need the ctranslate2 engine")
        from whisper_zh.engines.transformers import TransformersDecoder  # torch only for this engine

        return TransformersDecoder.load(resolved, device=device)
    raise ValueError(f"unknown engine '{engine}': use {' or '.join(ENGINES)}")


__all__ = ["ENGINES", "Decoded", "Decoder", "Engine", "RawSegment", "RawWord", "load_decoder"]

"""The HTTP server: OpenAI's audio API (transcriptions, translations, models), health, metrics and the web page.

``create_app(config)`` builds a FastAPI app around ONE shared :class:`~whisper_zh.Transcriber`. The modules:

- :mod:`.config`: :class:`ServerConfig`, every setting and its default;
- :mod:`.app`: wiring (state, routers, middleware, lifespan);
- :mod:`.routes`: the routes; :mod:`.forms`: a request's fields, checked, as a frozen ``TranscriptionRequest``;
- :mod:`.guard`: the pure-ASGI front door (framing, origin, API key, size, upload admission, body deadlines);
- :mod:`.queue`: the model queue that batches several clients' audio into one ``transcribe_batch`` call;
- :mod:`.uploads`, :mod:`.formats`, :mod:`.streaming`: upload to samples, results to OpenAI's formats, SSE;
- :mod:`.errors`: OpenAI-shaped errors and their handlers; :mod:`.metrics`: Prometheus; :mod:`.security`:
  origins and security headers; :mod:`.runner`: uvicorn with deliberate limits (``serve_in_thread``).
"""


from __future__ import annotations

import importlib
from typing import Any

from whisper_zh.server.config import ServerConfig

__all__ = ["ApiError", "ServerConfig", "create_app", "serve_in_thread"]

# Imported on first use, so that `whisper-zh --help` (which reads ServerConfig's defaults) does not load FastAPI.
_LAZY = {"create_app": "whisper_zh.server.app", "serve_in_thread": "whisper_zh.server.runner",
         "ApiError": "whisper_zh.server.errors"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

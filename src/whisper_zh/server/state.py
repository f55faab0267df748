"""What every route shares: the app's one model, queue, upload gate, metrics and settings.

Built once by :func:`~whisper_zh.server.app.create_app` and kept on ``app.state.server``; a route (of any
router, including ones added later) gets it with ``Depends(server_state)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from whisper_zh.server.config import ServerConfig
from whisper_zh.server.forms import ServedModel
from whisper_zh.server.metrics import ServerMetrics
from whisper_zh.server.queue import BatchingQueue
from whisper_zh.server.uploads import UploadGate


@dataclass(frozen=True)
class ServerState:
    config: ServerConfig
    transcriber: Any  # whisper_zh.transcriber.Transcriber (not imported: loading it pulls in the engines)
    queue: BatchingQueue
    uploads: UploadGate
    metrics: ServerMetrics
    model: ServedModel


def server_state(request: Request) -> ServerState:
    """FastAPI dependency: the state of the app serving ``request``."""
    return request.app.state.server

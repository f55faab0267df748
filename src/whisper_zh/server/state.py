"""What every route shares: the app's one model, queue, upload gate, live-stream count, metrics and settings.

Built once by :func:`~whisper_zh.server.app.create_app` and kept on ``app.state.server``; a route (of any
router, including ones added later) gets it with ``Depends(server_state)``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Request

from whisper_zh.server.config import ServerConfig
from whisper_zh.server.forms import ServedModel
from whisper_zh.server.keys import KeyFailures
from whisper_zh.server.metrics import ServerMetrics
from whisper_zh.server.queue import BatchingQueue
from whisper_zh.server.uploads import UploadGate


class Drainable(Protocol):
    async def drain(self) -> None:
        """Take no more audio; finish with the final text and close."""


class StreamGate:
    """How many live streams are open, at most ``limit``, and which, so that a shutdown can drain them (per app;
    only the event loop's thread touches it)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.open = limit, 0
        self.closing = False
        self.connections: set[Drainable] = set()

    def try_enter(self) -> bool:
        if self.open >= self.limit or self.closing:
            return False
        self.open += 1
        return True

    def leave(self) -> None:
        self.open -= 1

    async def drain(self, timeout_s: float) -> None:
        """Take no new streams; tell each open one to finish, and wait (up to ``timeout_s``) until all have."""
        self.closing = True
        for connection in list(self.connections):
            await connection.drain()
        deadline = time.monotonic() + timeout_s
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


@dataclass(frozen=True)
class ServerState:
    config: ServerConfig
    transcriber: Any  # whisper_zh.transcriber.Transcriber (not imported: loading it pulls in the engines)
    queue: BatchingQueue
    uploads: UploadGate
    metrics: ServerMetrics
    model: ServedModel
    streams: StreamGate
    key_failures: KeyFailures


def server_state(request: Request) -> ServerState:
    """FastAPI dependency: the state of the app serving ``request``."""
    return request.app.state.server

"""Running an app with uvicorn, with the connection limits set deliberately (the serve command, tests and
benchmarks all start it through here).

- ``limit_concurrency`` = ``max_connections`` (1000): open connections before uvicorn answers 503. Slow or
  stalled clients are limited by the guard's upload gate and deadlines, not by this, so it is set well above
  them: 300 half-open connections leave /health answering 200.
- A header deadline (``header_timeout_s``, 10 s) per request. uvicorn has none: a client that sends half a
  request line would hold its connection (and a file descriptor) for ever. Here it is closed.
- ``timeout_keep_alive`` 5 s (uvicorn's default) for idle keep-alive connections; ``backlog`` 2048.
- ``timeout_graceful_shutdown`` = ``shutdown_timeout_s``.
"""

from __future__ import annotations

import resource
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from whisper_zh.server.config import ServerConfig


def uvicorn_config(app: FastAPI, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> uvicorn.Config:
    config: ServerConfig = app.state.server.config
    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, http=_with_header_deadline(config.header_timeout_s),
        limit_concurrency=config.max_connections, timeout_keep_alive=5, backlog=2048,
        timeout_graceful_shutdown=int(config.shutdown_timeout_s),
    )


def serve(app: FastAPI, *, host: str, port: int, log_level: str) -> None:
    """Serve until SIGTERM/SIGINT: uvicorn stops accepting, waits for requests in flight (up to the shutdown
    timeout), then the app's lifespan finishes anything still queued."""
    _allow_open_files(app.state.server.config.max_connections + 64)
    uvicorn.Server(uvicorn_config(app, host=host, port=port, log_level=log_level)).run()


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread (port 0: a free one); yields the base URL.

    For tests, notebooks and benchmarks; on exit the server shuts down gracefully (requests in flight finish).
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, host=host, port=bound_port))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(app.state.server.config.shutdown_timeout_s + 30)
        sock.close()


def _with_header_deadline(seconds: float) -> type[H11Protocol]:
    class HeaderDeadlineProtocol(_HeaderDeadlineProtocol):
        header_timeout = seconds

    return HeaderDeadlineProtocol


class _HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request head within
    ``header_timeout`` seconds of opening (or of its previous response). uvicorn offers no such setting; this
    subclass only arms a timer around its public protocol callbacks."""

    header_timeout = 10.0
    _header_timer: Any = None

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_deadline_passed)

    def _header_deadline_passed(self) -> None:
        self._header_timer = None
        waiting_for_head = self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)
        if waiting_for_head and not self.transport.is_closing():
            self.transport.close()


def _allow_open_files(wanted: int) -> None:
    """Raise the soft limit on open files to ``wanted`` (within the hard limit): each connection takes one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))

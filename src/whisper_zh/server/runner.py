"""Running an app with uvicorn, with the connection limits set deliberately (the serve command, tests and
benchmarks all start it through here).

- ``limit_concurrency`` = ``max_connections`` (1000): open connections before uvicorn answers 503. Slow or
  stalled clients are limited by the guard's upload gate and deadlines, not by this, so it is set well above
  them: 300 half-open connections leave /health answering 200.
- A header deadline (``header_timeout_s``, 10 s) per request. uvicorn has none: a client that sends half a
  request line would hold its connection (and a file descriptor) for ever. Here it is closed.
- ``timeout_keep_alive`` 5 s (uvicorn's default) for idle keep-alive connections; ``backlog`` 2048.
- ``timeout_graceful_shutdown`` = ``shutdown_timeout_s``.
- ``ws_max_size`` = twice the live endpoint's message limit (uvicorn's default is 16 MiB).
- ``proxy_headers`` off: forwarding headers are believed only from ``--forwarded-allow-ips``, by the app's own
  :class:`~whisper_zh.server.security.ForwardedHeaders` (uvicorn's default trusts 127.0.0.1).
- Access-log lines have secrets in query strings replaced by ``***`` (:class:`RedactSecrets`): a WebSocket
  client may put its API key in the URL, and log files are read by more people than the key's owner.
- Shutdown drains live streams first (:class:`DrainingServer`): listening stops, each live session is told, takes
  no more audio and finishes with its final text, then uvicorn's own shutdown runs.
"""

from __future__ import annotations

import logging
import re
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
    uv_config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, http=_with_header_deadline(config.header_timeout_s),
        limit_concurrency=config.max_connections, timeout_keep_alive=5, backlog=2048,
        timeout_graceful_shutdown=int(config.shutdown_timeout_s),
        # uvicorn's default WebSocket frame limit (16 MiB, queued 32 deep per stream) is far beyond what a live
        # stream needs; frames between the endpoint's own limit and this one get a readable error event, larger
        # ones close the connection (1009)
        ws_max_size=2 * config.live.max_message_bytes,
        proxy_headers=False,
    )
    _install_redaction(config.api_key)
    return uv_config


# Query parameters whose values are secrets, whatever a client calls them.
SECRET_PARAMS = re.compile(r"(?i)([?&](?:api[_-]?key|key|token|access[_-]?token|auth|authorization|password|secret"
                           r"|client[_-]?secret)=)[^&#\s\"]*")


class RedactSecrets(logging.Filter):
    """Replaces secret query values (and the server's own API key, wherever it appears) in log records."""

    def __init__(self, api_key: str | None = None) -> None:
        super().__init__("whisper_zh.redact")
        self.api_key = api_key

    def redact(self, value: object) -> object:
        if not isinstance(value, str):
            return value
        value = SECRET_PARAMS.sub(r"\1***", value)
        return value.replace(self.api_key, "***") if self.api_key else value

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.redact(arg) for arg in record.args)
        record.msg = self.redact(record.msg)
        return True


def _install_redaction(api_key: str | None) -> None:
    """On uvicorn's access and error loggers (the error logger writes WebSocket handshakes), once per key."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, RedactSecrets)]:
            logger.removeFilter(old)
        logger.addFilter(RedactSecrets(api_key))


def serve(app: FastAPI, *, host: str, port: int, log_level: str) -> None:
    """Serve until SIGTERM/SIGINT: uvicorn stops accepting, waits for requests in flight (up to the shutdown
    timeout), then the app's lifespan finishes anything still queued."""
    _allow_open_files(app.state.server.config.max_connections + 64)
    DrainingServer(uvicorn_config(app, host=host, port=port, log_level=log_level)).run()


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread (port 0: a free one); yields the base URL.

    For tests, notebooks and benchmarks; on exit the server shuts down gracefully (requests in flight finish).
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    server = DrainingServer(uvicorn_config(app, host=host, port=bound_port))
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


class DrainingServer(uvicorn.Server):
    """uvicorn's server, whose shutdown first stops listening and drains the app's live streams (each finishes
    with its final text; up to the shutdown timeout), then runs uvicorn's own shutdown (which would close them
    with 1012 at once)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        state = getattr(getattr(self.config.app, "state", None), "server", None)
        if state is not None and state.streams.connections:
            logging.getLogger("uvicorn.error").info("Finishing %d live stream(s)", len(state.streams.connections))
            await state.streams.drain(state.config.shutdown_timeout_s)
        await super().shutdown(sockets)


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

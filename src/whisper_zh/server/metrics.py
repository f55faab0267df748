"""Prometheus metrics of one app, in a registry of its own (no process-global state)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from whisper_zh.server.queue import BatchStats

if TYPE_CHECKING:
    from whisper_zh.server.queue import BatchingQueue
    from whisper_zh.server.uploads import UploadGate

_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, math.inf)


class _StreamCount(Protocol):
    """What the metrics read of the live-stream gate (server.state.StreamGate, which imports this module)."""

    open: int
    limit: int


class ServerMetrics:
    """Request, audio and batch metrics; queue and upload gauges once :meth:`watch` is called."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("whisper_zh_requests", "API requests answered", ["endpoint", "status"], registry=r)
        self.errors = Counter(
            "whisper_zh_request_errors", "API requests answered with status >= 400", ["endpoint", "status"],
            registry=r,
        )
        self.audio_seconds = Counter("whisper_zh_audio_seconds", "seconds of audio transcribed or translated",
                                     registry=r)
        self.latency = Histogram(
            "whisper_zh_request_latency_seconds", "API request latency (received to answered)", ["endpoint"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "whisper_zh_batch_size", "requests decoded together in one model call",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, math.inf), registry=r,
        )
        self.batch_seconds = Histogram(
            "whisper_zh_batch_seconds", "time of one batched model call",
            buckets=(0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, math.inf), registry=r,
        )

    def watch(self, queue: BatchingQueue, uploads: UploadGate, streams: _StreamCount) -> None:
        """Gauges read from the queue, the upload gate and the live-stream count at each scrape."""
        r = self.registry
        Gauge("whisper_zh_live_streams_open", "live streams open on /v1/realtime", registry=r).set_function(
            lambda: streams.open
        )
        Gauge("whisper_zh_live_streams_capacity", "live streams allowed at once", registry=r).set(streams.limit)
        Gauge("whisper_zh_queue_depth", "requests waiting for the model", registry=r).set_function(
            lambda: queue.depth
        )
        Gauge("whisper_zh_requests_in_flight", "uploaded requests admitted to the model queue, not yet answered",
              registry=r).set_function(lambda: queue.in_flight)
        Gauge("whisper_zh_queue_capacity", "requests admitted to the model queue at once", registry=r).set(
            queue.max_pending
        )
        Gauge("whisper_zh_uploads_in_progress", "requests reading their body", registry=r).set_function(
            lambda: uploads.active
        )
        Gauge("whisper_zh_upload_capacity", "requests allowed to read their body at once", registry=r).set(
            uploads.limit
        )

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.size)
        self.batch_seconds.observe(stats.seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

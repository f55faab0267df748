"""The server's settings: one frozen dataclass, filled by `whisper-zh serve` from its flags or built by tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from whisper_zh.decoding import DecodeOptions


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs; the defaults here are the defaults of `whisper-zh serve`."""

    model: str = "base"
    engine: str = "ctranslate2"
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = 0
    # Decoding defaults; a request's language/prompt/temperature/granularities override them.
    # No packing: clips of different clients must never share one 30 s decoder window (a word split back
    # to the wrong clip would leak one client's speech into another's transcript); they share a batch
    # as separate rows instead.
    decode: DecodeOptions = field(default_factory=lambda: DecodeOptions(pack=False))
    api_key: str | None = None
    # Origins (scheme://host[:port]) whose web pages may call /v1 from a browser. Empty: only the server's own
    # page; a browser request from any other origin gets 403, and no CORS headers are sent.
    cors_origins: tuple[str, ...] = ()

    # -- what one request may take ------------------------------------------------------------------------
    max_upload_bytes: int = 25 * 1024 * 1024  # OpenAI's limit
    # Bounds the samples one request holds: 30 min x 16 kHz x 4 bytes = 115 MB of float32. A longer file is
    # refused from its header before decoding, or as soon as decoding passes the limit (the header may lie).
    max_audio_seconds: float = 1800.0

    # -- uploading: requests reading their body ------------------------------------------------------------
    max_uploading: int = 32  # bodies read at once; more get 429 before their body is read
    upload_timeout_s: float = 300.0  # the whole body must arrive within this
    # ... and at this average rate once the first upload_grace_s are over (a stalled client gets 408).
    min_upload_bytes_per_s: int = 32 * 1024
    upload_grace_s: float = 10.0

    # -- decoding: requests waiting for or in the model ------------------------------------------------------
    max_pending: int = 16  # uploaded requests waiting for or in the model before 429
    max_batch: int = 8  # requests passed to one transcribe_batch call
    batch_window_s: float = 0.05  # how long the worker waits to gather a batch once a job arrives

    # -- connections (uvicorn) ---------------------------------------------------------------------------------
    # A connection must send a request's headers within this (uvicorn has no such deadline of its own).
    header_timeout_s: float = 10.0
    # Open connections before uvicorn answers 503 to new requests (each costs a file descriptor and a few kB).
    max_connections: int = 1000
    # On SIGTERM: time for requests in flight to finish. Stalled uploads no longer hold it (they get 408 within
    # upload_grace_s); it is spent on decoding, so it is sized to decode a long upload on a CPU.
    shutdown_timeout_s: float = 120.0

    # The web page's streamed requests decode long audio in pieces of about this length, cut at pauses,
    # so the first segments show while the rest is decoded.
    stream_piece_seconds: float = 60.0

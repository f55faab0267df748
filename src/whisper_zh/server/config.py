"""The server's settings: frozen dataclasses, filled by `whisper-zh serve` from its flags or built by tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from whisper_zh.decoding import DecodeOptions

if TYPE_CHECKING:
    from whisper_zh.live import LiveOptions


@dataclass(frozen=True)
class LiveLimits:
    """Live transcription over WebSocket (``/v1/realtime``, :mod:`~whisper_zh.server.realtime`): its limits."""

    max_streams: int = 4  # streams open at once (each holds one model-queue slot); 0 turns the endpoint off
    max_buffer_seconds: float = 60.0  # audio held in memory per stream; what arrives beyond it waits on disk
    # Audio a stream may send ahead of its transcription (on disk, server/spool.py): 1 h is 230 MB of float32.
    # Past it the stream is told so in an error event, and what it sent is transcribed and finished.
    max_spool_seconds: float = 3600.0
    idle_timeout_s: float = 30.0  # a stream that sends nothing this long is closed
    # ... and one that sends no speech this long (seconds of wall time with no utterance heard or in progress), so
    # that a byte now and then cannot hold a stream open; audio still waiting to be transcribed does not count.
    speech_timeout_s: float = 120.0
    max_message_bytes: int = 1 << 20  # one WebSocket message; uvicorn closes the connection above twice this
    # How sessions decide when to decode and where to cut; None: LiveOptions' defaults. Not imported at run time:
    # whisper_zh.live loads the VAD (faster-whisper), and the settings stay importable without it.
    # realtime.session_options checks that the buffer holds the longest utterance.
    options: LiveOptions | None = None

    def __post_init__(self) -> None:
        if self.max_streams < 0:
            raise ValueError("max_streams must be 0 (live transcription off) or more")
        if min(self.idle_timeout_s, self.speech_timeout_s, self.max_buffer_seconds) <= 0 or self.max_spool_seconds < 0:
            raise ValueError("the idle timeout and the buffer cap must be positive, the spool cap 0 or more")
        if self.max_message_bytes < 1024:
            raise ValueError("max_message_bytes must be at least 1024")


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs; the defaults here are the defaults of `whisper-zh serve`."""

    model: str = "base"
    engine: str = "ctranslate2"
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = 0
    # Decodes run at once, each on cpu_threads threads (CTranslate2; the queue gets as many workers). A live stream
    # keeps up to this many decodes in flight, which is what lowers its latency: on 2 cores, 2 workers of 1 thread.
    workers: int = 1
    # Decoding defaults; a request's language/prompt/temperature/granularities override them.
    # No packing: clips of different clients must never share one 30 s decoder window (a word split back
    # to the wrong clip would leak one client's speech into another's transcript); they share a batch
    # as separate rows instead.
    decode: DecodeOptions = field(default_factory=lambda: DecodeOptions(pack=False))
    api_key: str | None = None
    # Origins (scheme://host[:port]) whose web pages may call /v1 from a browser. Empty: only the server's own
    # page; a browser request from any other origin gets 403, and no CORS headers are sent.
    cors_origins: tuple[str, ...] = ()
    # The address the server is bound to, and the host names it answers to besides IP addresses and localhost
    # (DNS rebinding, server/security.py): bound to loopback, any other Host gets 403; "*" turns the check off.
    bind_host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()
    # Proxies (addresses or networks) whose X-Forwarded-For/-Proto/-Host are believed; nobody's by default.
    forwarded_allow_ips: tuple[str, ...] = ()
    # Wrong API keys from one address before it is answered 429 for the rest of the window (server/keys.py).
    max_key_failures: int = 10
    key_failure_window_s: float = 60.0

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

    # Live transcription over WebSocket: streams at once, buffer cap, idle timeout, message size.
    live: LiveLimits = field(default_factory=LiveLimits)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("workers must be at least 1")

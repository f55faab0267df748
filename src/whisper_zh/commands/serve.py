"""`whisper-zh serve`: OpenAI's audio API and a web page for one model, with FastAPI and uvicorn."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from whisper_zh.commands.common import add_model_arguments, decode_options
from whisper_zh.errors import UsageError
from whisper_zh.server.config import LiveLimits, ServerConfig

DEFAULTS = ServerConfig()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model behind OpenAI's /v1/audio API, with a web page at /",
        description="Serve a model behind OpenAI's audio API (POST /v1/audio/transcriptions, /translations, "
        "GET /v1/models, /health, /metrics) and a web page at /. Requests name the model as the served name "
        "or 'whisper-1'. Decoding flags below are the defaults; a request's language, prompt and "
        "temperature override them.",
    )
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("WHISPER_ZH_API_KEY") or None,
        help="require 'Authorization: Bearer KEY' on /v1 (default: $WHISPER_ZH_API_KEY; unset: no key)",
    )
    p.add_argument(
        "--cors-origin", action="append", default=[], metavar="ORIGIN",
        help="let web pages from ORIGIN (e.g. https://app.example.com) call /v1 from a browser; repeatable "
        "(default: none, only this server's own page)",
    )
    p.add_argument(
        "--allowed-hosts", action="append", default=[], metavar="NAME",
        help="host names this server answers to besides IP addresses and localhost (against DNS rebinding: bound to "
        "a loopback address, a request naming any other Host gets 403); '.example.com' allows a domain and its "
        "subdomains, '*' any name; repeatable (default: none; not checked when bound to another address unless "
        "given)",
    )
    p.add_argument(
        "--forwarded-allow-ips", default="", metavar="ADDRESSES",
        help="comma-separated addresses or networks of reverse proxies whose X-Forwarded-For/-Proto/-Host headers "
        "are believed (default: none, nobody's)",
    )
    p.add_argument("--max-key-failures", type=int, default=DEFAULTS.max_key_failures,
                   help=f"wrong API keys from one address within {DEFAULTS.key_failure_window_s:g} s before it gets "
                   "429 for the rest of that time (default: %(default)s; 0: no limit)")
    _add_limit_arguments(p)
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="the server's log level (default: info)")
    p.set_defaults(func=run)


def _add_limit_arguments(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / 2**20,
                   help="largest upload accepted (default: %(default)g)")
    p.add_argument("--max-audio-minutes", type=float, default=d.max_audio_seconds / 60,
                   help="longest audio accepted; bounds the samples a request holds (default: %(default)g)")
    p.add_argument("--max-uploads", type=int, default=d.max_uploading,
                   help="uploads read at once; more get 429 (default: %(default)s)")
    p.add_argument("--upload-timeout", type=float, default=d.upload_timeout_s,
                   help="seconds an upload may take in all; slower gets 408 (default: %(default)g)")
    p.add_argument("--min-upload-kbps", type=float, default=d.min_upload_bytes_per_s / 1024,
                   help=f"slowest average upload rate in kB/s after the first {d.upload_grace_s:g} s; slower gets "
                   "408 (default: %(default)g)")
    p.add_argument("--max-queue", type=int, default=d.max_pending,
                   help="uploaded requests waiting for or in the model; more get 429 (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=d.max_batch,
                   help="queued requests decoded in one batch (default: %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="decodes run at once, each on --threads threads (ctranslate2); a live stream overlaps up to "
                   "this many decodes, which lowers its latency (on 2 cores: --workers 2 --threads 1) "
                   "(default: %(default)s)")
    p.add_argument("--batch-window-ms", type=float, default=d.batch_window_s * 1000,
                   help="wait this long to gather a batch (default: %(default)g)")
    p.add_argument("--max-connections", type=int, default=d.max_connections,
                   help="open connections before new requests get 503 (default: %(default)s)")
    p.add_argument("--header-timeout", type=float, default=d.header_timeout_s,
                   help="seconds a connection has to send a request's headers (default: %(default)g)")
    p.add_argument("--shutdown-timeout", type=float, default=d.shutdown_timeout_s,
                   help="on SIGTERM/Ctrl-C, seconds to let requests in flight finish (default: %(default)g)")
    live = d.live
    p.add_argument("--max-streams", type=int, default=live.max_streams,
                   help="live-transcription WebSocket streams (/v1/realtime) at once; each holds one queue slot while "
                   "open, so this must stay below --max-queue; 0 turns live transcription off (default: %(default)s)")
    p.add_argument("--stream-idle-timeout", type=float, default=live.idle_timeout_s,
                   help="close a live stream that sends nothing for this many seconds (default: %(default)g)")
    p.add_argument("--stream-speech-timeout", type=float, default=live.speech_timeout_s,
                   help="close a live stream in which no speech was heard for this many seconds (bytes alone do not "
                   "keep it open) (default: %(default)g)")
    p.add_argument("--stream-max-buffer", type=float, default=live.max_buffer_seconds,
                   help="seconds of audio a live stream may hold in memory undecoded; what a client sends faster than "
                   "real time beyond it waits on disk (default: %(default)g)")
    p.add_argument("--stream-max-spool", type=float, default=live.max_spool_seconds,
                   help="seconds of audio a live stream may send ahead of its transcription on top of "
                   "--stream-max-buffer (kept on disk, 230 MB an hour); past it the stream gets an error event and "
                   "finishes with the text of what it sent (default: %(default)g)")


def run(args: argparse.Namespace) -> int:
    from whisper_zh.server import create_app
    from whisper_zh.server.runner import serve

    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be at least 1")

    config = ServerConfig(
        model=args.model,
        engine=args.engine,
        device=args.device,
        compute_type=args.compute_type,
        cpu_threads=args.threads,
        workers=args.workers,
        decode=decode_options(args, pack=False),  # see ServerConfig.decode
        api_key=args.api_key,
        cors_origins=tuple(args.cors_origin),
        bind_host=args.host,
        allowed_hosts=tuple(args.allowed_hosts),
        forwarded_allow_ips=tuple(a.strip() for a in args.forwarded_allow_ips.split(",") if a.strip()),
        max_key_failures=args.max_key_failures,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_audio_seconds=args.max_audio_minutes * 60,
        max_uploading=args.max_uploads,
        upload_timeout_s=args.upload_timeout,
        min_upload_bytes_per_s=int(args.min_upload_kbps * 1024),
        max_pending=args.max_queue,
        max_batch=args.max_batch,
        batch_window_s=args.batch_window_ms / 1000,
        max_connections=args.max_connections,
        header_timeout_s=args.header_timeout,
        shutdown_timeout_s=args.shutdown_timeout,
        live=_live_limits(args),
    )
    app = create_app(config)
    print(
        f"whisper-zh: serving '{args.model}' ({app.state.server.model.engine}) at http://{args.host}:{args.port}/ "
        f"(API: http://{args.host}:{args.port}/v1, key {'required' if args.api_key else 'not required'})",
        file=sys.stderr,
        flush=True,
    )
    # uvicorn re-raises SIGTERM once it has shut down; this handler turns that into a clean exit status 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    serve(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _live_limits(args: argparse.Namespace) -> LiveLimits:
    from whisper_zh.server.realtime import session_options

    if args.max_streams and args.max_streams >= args.max_queue:
        raise UsageError(f"--max-streams {args.max_streams}: must be below --max-queue ({args.max_queue}), or "
                         "uploads could never get a queue slot")
    try:
        live = LiveLimits(max_streams=args.max_streams, idle_timeout_s=args.stream_idle_timeout,
                          speech_timeout_s=args.stream_speech_timeout,
                          max_buffer_seconds=args.stream_max_buffer, max_spool_seconds=args.stream_max_spool)
        session_options(live)
    except ValueError as exc:
        raise UsageError(f"--max-streams/--stream-*: {exc}") from exc
    return live


def _exit_cleanly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


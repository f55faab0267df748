"""`whisper-zh serve`: OpenAI's audio API and a web page for one model, with FastAPI and uvicorn."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from whisper_zh.commands.common import add_model_arguments, decode_options
from whisper_zh.errors import UsageError


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
    p.add_argument("--max-upload-mb", type=float, default=25.0, help="largest upload accepted (default: 25)")
    p.add_argument(
        "--max-audio-minutes", type=float, default=30.0, help="longest audio accepted (default: 30)"
    )
    p.add_argument(
        "--max-queue", type=int, default=16, help="requests admitted at once; more get 429 (default: 16)"
    )
    p.add_argument(
        "--max-batch", type=int, default=8, help="queued requests decoded in one batch (default: 8)"
    )
    p.add_argument(
        "--batch-window-ms", type=float, default=50.0, help="wait this long to gather a batch (default: 50)"
    )
    p.add_argument(
        "--max-streams", type=int, default=4,
        help="live-transcription WebSocket streams (/v1/realtime) at once; each holds one queue slot while open, "
        "so this must stay below --max-queue; 0 turns live transcription off (default: 4)",
    )
    p.add_argument(
        "--stream-idle-timeout", type=float, default=30.0,
        help="close a live stream that sends nothing for this many seconds (default: 30)",
    )
    p.add_argument(
        "--stream-max-buffer", type=float, default=60.0,
        help="seconds of audio a live stream may hold undecoded; beyond it the server stops reading that stream "
        "until decoding catches up (default: 60)",
    )
    p.add_argument(
        "--shutdown-timeout", type=float, default=120.0,
        help="on SIGTERM/Ctrl-C, seconds to let requests in flight finish (default: 120)",
    )
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from whisper_zh.live_server import LiveLimits
    from whisper_zh.server import ServerConfig, create_app

    if args.max_streams and args.max_streams >= args.max_queue:
        raise UsageError(f"--max-streams {args.max_streams}: must be below --max-queue ({args.max_queue}), or "
                         "uploads could never get a queue slot")
    try:
        live = LiveLimits(max_streams=args.max_streams, idle_timeout_s=args.stream_idle_timeout,
                          max_buffer_seconds=args.stream_max_buffer)
    except ValueError as exc:
        raise UsageError(f"live stream limits: {exc}") from exc
    config = ServerConfig(
        model=args.model,
        engine=args.engine,
        device=args.device,
        compute_type=args.compute_type,
        cpu_threads=args.threads,
        decode=decode_options(args, pack=False),  # see ServerConfig.decode
        api_key=args.api_key,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_audio_seconds=args.max_audio_minutes * 60,
        max_pending=args.max_queue,
        max_batch=args.max_batch,
        batch_window_s=args.batch_window_ms / 1000,
        shutdown_timeout_s=args.shutdown_timeout,
        live=live,
    )
    app = create_app(config)
    print(
        f"whisper-zh: serving '{args.model}' at http://{args.host}:{args.port}/ "
        f"(API: http://{args.host}:{args.port}/v1, key {'required' if args.api_key else 'not required'})",
        file=sys.stderr,
        flush=True,
    )
    # uvicorn stops accepting on SIGTERM/SIGINT and waits for requests in flight (up to the timeout);
    # the app's lifespan then finishes anything still queued. uvicorn re-raises the signal once it has
    # shut down; this handler turns that SIGTERM into a clean exit status 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.shutdown_timeout,
        limit_concurrency=max(256, args.max_queue * 8),
        # uvicorn's default frame limit (16 MiB, queued 32 deep per stream) is far beyond what a live stream needs;
        # frames between the endpoint's own limit and this one get a readable error event, larger ones close 1009
        ws_max_size=2 * live.max_message_bytes,
    )
    return 0


def _exit_cleanly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)

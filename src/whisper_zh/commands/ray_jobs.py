"""`--ray` for `transcribe` and `evaluate`: the flags, and the two commands' runs on a Ray cluster.

`transcribe ... --ray` writes sharded JSONL (and, as asked, per-file txt/srt/vtt/json/tsv or a pseudo-label
manifest) into ``--output-dir``; `evaluate ... --ray` transcribes there and scores with the very code the
single-process `evaluate` uses. Both resume: a re-run skips what the output directory already holds. Ray itself is
imported only when ``--ray`` is given (:mod:`whisper_zh.distributed.pipeline`).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whisper_zh.commands.common import ensure_writable
from whisper_zh.decoding import DecodeOptions
from whisper_zh.distributed.plan import Item, probe_duration
from whisper_zh.distributed.pseudolabels import ConfidenceFilter, write_manifest
from whisper_zh.distributed.store import ResultStore
from whisper_zh.distributed.worker import WorkerSpec
from whisper_zh.errors import AudioError, UsageError
from whisper_zh.files import atomic_write_text
from whisper_zh.transcriber import GROUP_SECONDS
from whisper_zh.writers import FORMATS, format_transcription

if TYPE_CHECKING:
    from whisper_zh.evaluation import Evaluation

# Output formats only a Ray job writes: the shards alone, or the shards and a pseudo-label manifest.
RAY_FORMATS: tuple[str, ...] = ("jsonl", "manifest")
# --ray's value: nothing (start Ray here), auto, a ray:// (or other scheme) address, or host:port.
_ADDRESS = re.compile(r"^(local|auto|[a-z][a-z0-9+.-]*://\S+|[\w.-]+:\d+)$")


def add_ray_arguments(parser: argparse.ArgumentParser, *, manifest: bool = False) -> None:
    """``--ray [ADDRESS]`` and the worker flags; with ``manifest``, the pseudo-label filters too."""
    group = parser.add_argument_group("many machines (Ray)")
    group.add_argument(
        "--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
        help="run on Ray: alone, Ray starts on this machine; 'auto' or ray://host:10001 joins a running cluster "
        "(resumable; needs --output-dir)",
    )
    group.add_argument("--num-workers", type=int, help="actors, one model each (default: as many as fit)")
    group.add_argument("--threads-per-worker", type=int, default=1, help="CPU threads per actor (default: 1)")
    group.add_argument("--gpus-per-worker", type=float, default=None,
                       help="GPUs per actor (default: 1 with --device cuda, else 0)")
    group.add_argument("--max-retries", type=int, default=3,
                       help="times a group of files is retried when its worker dies (default: 3)")
    group.add_argument("--group-seconds", type=float, default=None,
                       help=f"audio per actor call: the unit of packing, retry and resume (default: up to "
                       f"{GROUP_SECONDS:g}, less where that would leave workers idle; at most {GROUP_SECONDS:g})")
    if not manifest:
        return
    keep = ConfidenceFilter()
    group.add_argument("--min-avg-logprob", type=float, default=keep.min_avg_logprob,
                       help=f"--format manifest: keep rows at or above this mean log-probability "
                       f"(default: {keep.min_avg_logprob})")
    group.add_argument("--max-no-speech", type=float, default=keep.max_no_speech,
                       help="--format manifest: keep rows at or below this no-speech probability (default: off)")
    group.add_argument("--max-compression-ratio", type=float, default=keep.max_compression_ratio,
                       help=f"--format manifest: keep rows at or below this compression ratio "
                       f"(default: {keep.max_compression_ratio})")


def transcribe_with_ray(args: argparse.Namespace, sources: list[str], names: list[str],
                        options: DecodeOptions) -> int:
    """`transcribe --ray`: exit status 0, or 1 when some inputs failed (listed in errors.jsonl)."""
    from whisper_zh.distributed.pipeline import run_job

    store, spec, ray_options = _prepare(args, options)
    items = [Item(source, name, probe_duration(source)) for source, name in zip(sources, names, strict=True)]
    write = _file_writer(store.root, args.format) if args.format in FORMATS else None
    summary = run_job(items, store, spec, ray_options, on_outcome=write, progress=not args.quiet)
    lines = [summary.line()]
    if write is not None:  # inputs completed by an earlier run with another --format get their files too
        merged = store.merged().outcomes
        for item in items:
            if item.key in merged and not (store.root / f"{item.name}.{args.format}").exists():
                write(merged[item.key])
    if args.format == "manifest":
        merged = store.merged().outcomes
        keep = ConfidenceFilter(args.min_avg_logprob, args.max_no_speech, args.max_compression_ratio)
        counts = write_manifest((merged[i.key] for i in items if i.key in merged), store.root, keep)
        lines.append(f"manifest: {counts.kept} rows kept in {counts.path}, {counts.rejected} below the "
                     f"confidence filters in {counts.rejected_path}")
    for failure in summary.failures[:10]:
        lines.append(f"error: {failure.error}")
    lines.append(f"results in {store.shard_dir}" + (f"; failures in {store.root / 'errors.jsonl'}"
                                                     if summary.failures else ""))
    if not args.quiet or summary.failures:
        print("\n".join(lines), file=sys.stderr)
    return 1 if summary.failures else 0


def evaluate_with_ray(args: argparse.Namespace, source: Any, options: DecodeOptions, scorings: dict,
                      output_dir: Path, write_report: Callable[[Evaluation, Path], int]) -> int:
    """`evaluate --ray`: transcribe on Ray into ``output_dir``, then score exactly as `evaluate` does."""
    from whisper_zh.distributed.pipeline import run_job
    from whisper_zh.evaluation import evaluation_from_results

    utterances = list(source)
    if any(not isinstance(u.audio, str) for u in utterances):
        raise UsageError(f"{args.data}: --ray needs audio files (this dataset holds decoded arrays)")
    store, spec, ray_options = _prepare(args, options, output_dir)
    items = [Item(u.audio, u.id, u.duration if u.duration is not None else probe_duration(u.audio))
             for u in utterances]
    summary = run_job(items, store, spec, ray_options, progress=not args.quiet)
    print(summary.line(), file=sys.stderr)
    merged = store.merged().outcomes
    results: dict[int, Any] = {}
    for index, utt in enumerate(utterances):
        outcome = merged.get(utt.audio)
        if outcome is not None:
            results[index] = outcome.transcription or AudioError(outcome.error or "unknown error")
    evaluation = evaluation_from_results(
        utterances, results, source, options, model=store.model() or {}, wall_seconds=summary.wall_seconds,
        scorings=scorings, n_resamples=args.resamples, seed=args.seed, diagnostics=args.diagnostics,
    )
    evaluation.report["timing"]["ray"] = {"workers": summary.workers, "skipped": summary.skipped,
                                          "peak_rss_mb": summary.peak_rss_mb}
    return write_report(evaluation, output_dir)


def ray_options(args: argparse.Namespace) -> Any:
    """The RayOptions the flags ask for (UsageError for values that cannot work)."""
    from whisper_zh.distributed.pipeline import RayOptions

    if not _ADDRESS.match(args.ray):
        raise UsageError(
            f"--ray {args.ray}: not a Ray address (use auto, ray://host:10001 or host:6379); "
            "give the inputs before --ray"
        )
    gpus = args.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if args.device.startswith("cuda") else 0.0
    return RayOptions(
        address=None if args.ray == "local" else args.ray,
        num_workers=args.num_workers,
        threads_per_worker=args.threads_per_worker,
        gpus_per_worker=gpus,
        max_retries=args.max_retries,
        group_seconds=args.group_seconds,
    )


def _prepare(args: argparse.Namespace, options: DecodeOptions,
             output_dir: Path | None = None) -> tuple[ResultStore, WorkerSpec, Any]:
    """Check the flags and the model cheaply, here, before any worker starts; claim the output directory."""
    from whisper_zh.models import resolve_model

    if output_dir is None:
        if not args.output_dir:
            raise UsageError("--ray needs --output-dir (where results are kept, and a re-run resumes)")
        output_dir = Path(args.output_dir)
    ray_opts = ray_options(args)
    ensure_writable(output_dir)  # the same one-line error as without Ray, before the model or Ray is touched
    resolve_model(args.model)  # an unknown model fails here, with its reason, not in every worker
    spec = WorkerSpec(args.model, args.engine, args.device, args.compute_type, ray_opts.threads_per_worker, options)
    store = ResultStore(output_dir)
    store.claim({"model": args.model, "engine": args.engine, "device": args.device,
                 "compute_type": args.compute_type, "decoding": asdict(options)})
    return store, spec, ray_opts


def _file_writer(directory: Path, fmt: str) -> Callable[[Any], None]:
    """Writes each new transcription's per-file output (``<name>.<fmt>``) as its result arrives."""

    def write(outcome: Any) -> None:
        if outcome.transcription is not None:
            atomic_write_text(directory / f"{outcome.name}.{fmt}", format_transcription(outcome.transcription, fmt))

    return write

"""Running a job on Ray: connect (or start Ray here), stream the groups through an actor pool of transcribers, and
store each finished group as it arrives.

The only module of the project that imports Ray. Ray Data does the scheduling: a dataset with one row per group
(:mod:`~whisper_zh.distributed.plan`), ``map_batches`` over an ``ActorPoolStrategy`` pool of
:class:`~whisper_zh.distributed.worker.TranscribeWorker` (one model per actor, ``threads`` CPUs and ``gpus`` GPUs
each), consumed in the driver with ``iter_batches`` as groups finish. Fault tolerance is Ray's: a dead actor is
restarted and its in-flight groups are retried up to ``max_retries`` times; a group that still fails is dropped
(``max_errored_blocks``) and its inputs are reported as failed, so the job goes on. A re-run skips every input the
output directory already holds (:mod:`~whisper_zh.distributed.store`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from whisper_zh.distributed.plan import Item, encode_group, plan_groups, unique
from whisper_zh.distributed.store import Outcome, ResultStore, transcription_from_dict
from whisper_zh.distributed.worker import TranscribeWorker, WorkerSpec
from whisper_zh.errors import UsageError
from whisper_zh.transcriber import GROUP_SECONDS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """How the job runs on Ray. ``address=None`` starts Ray on this machine (every core); ``"auto"`` or
    ``"ray://host:10001"`` joins a running cluster. ``num_workers=None``: as many actors as the cluster's CPUs
    (or GPUs, with ``gpus_per_worker``) allow. ``group_seconds=None``: groups of up to the transcriber's
    :data:`~whisper_zh.transcriber.GROUP_SECONDS`, cut smaller where a job holds fewer groups than workers, so that
    every worker gets one (packs then follow those smaller groups; give a size to keep the single-process one)."""

    address: str | None = None
    num_workers: int | None = None
    threads_per_worker: int = 1
    gpus_per_worker: float = 0.0
    max_retries: int = 3
    group_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.num_workers is not None and self.num_workers < 1:
            raise UsageError("--num-workers must be at least 1")
        if self.threads_per_worker < 1:
            raise UsageError("--threads-per-worker must be at least 1")
        if self.gpus_per_worker < 0:
            raise UsageError("--gpus-per-worker cannot be negative")
        if self.max_retries < 0:
            raise UsageError("--max-retries cannot be negative")
        if self.group_seconds is not None and not 0 < self.group_seconds <= GROUP_SECONDS:
            # Larger groups would be cut again inside the actor, and differently from the single-process path.
            raise UsageError(f"the group size must be between 0 and {GROUP_SECONDS:g} seconds")


@dataclass
class JobSummary:
    """What one run did. ``skipped``: inputs already complete in the output directory before it started."""

    inputs: int
    skipped: int = 0
    done: int = 0
    failed: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    workers: int = 0
    peak_rss_mb: dict[str, float] = field(default_factory=dict)  # per actor process (host:pid)
    busy_seconds: float = 0.0  # wall seconds the actors spent decoding (the rest of their time: startup, waiting)
    cpu_seconds: float = 0.0  # CPU seconds the actors spent decoding
    failures: list[Outcome] = field(default_factory=list)

    @property
    def real_time_factor(self) -> float | None:
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else None

    def line(self) -> str:
        """The one-line summary the commands print."""
        rtf = self.real_time_factor
        speed = f", {self.audio_seconds / self.wall_seconds:.2f} audio-s/s" if self.audio_seconds else ""
        rss = sorted(self.peak_rss_mb.values())
        memory = f", peak RSS per worker {rss[0]:.0f}-{rss[-1]:.0f} MB" if rss else ""
        return (
            f"{self.done} done, {self.failed} failed, {self.skipped} skipped (already complete) of {self.inputs} "
            f"files; {self.audio_seconds / 3600:.3f} h of audio in {self.wall_seconds:.1f} s"
            + (f", real-time factor {rtf:.3f}" if rtf is not None else "") + speed
            + f"; {self.workers} workers{memory}"
            + (f", busy {self.busy_seconds / (self.workers * self.wall_seconds):.0%} of the time"
               if self.workers and self.wall_seconds else "")
        )


OnOutcome = Callable[[Outcome], None]


def run_job(
    items: Sequence[Item],
    store: ResultStore,
    spec: WorkerSpec,
    options: RayOptions,
    *,
    on_outcome: OnOutcome | None = None,
    progress: bool = True,
) -> JobSummary:
    """Transcribe every item not yet complete in ``store`` on Ray; ``on_outcome`` sees each new result.

    The caller has claimed ``store`` (:meth:`ResultStore.claim`). Returns when every pending input has a result
    or a recorded failure; errors.jsonl lists the inputs left without a result."""
    items = unique(items)
    complete = store.merged().completed()
    pending = [item for item in items if item.key not in complete]
    summary = JobSummary(inputs=len(items), skipped=len(items) - len(pending))
    started = time.perf_counter()
    if pending:
        with ray_session(options.address):
            groups, summary.workers = plan_job(pending, options, _pool_size(options))
            seen = _consume(_dataset(groups, spec, options, summary.workers), store, summary, pending,
                            on_outcome, progress)
        reason = f"not transcribed: its group failed on all {options.max_retries + 1} tries (its worker died)"
        lost = [Outcome(item.key, item.name, item.duration, error=f"{item.key}: {reason}")
                for item in pending if item.key not in seen]
        if lost:
            store.write_shard(lost)
            summary.failures += lost
        summary.failed = len(summary.failures)
    summary.wall_seconds = time.perf_counter() - started
    # Every input without a transcription was pending, so tried again by this run: its failures are the list.
    order = {item.key: n for n, item in enumerate(items)}
    store.write_errors(sorted(summary.failures, key=lambda outcome: order[outcome.key]))
    return summary


# A Ray started here serves one job: no idle workers started ahead of the actors (Ray starts one per CPU and
# whisper-zh's actors start their own processes), no metrics export, no per-task event records and no event-loop
# statistics (nothing reads them: no dashboard, no state API). On 2 cores Ray's own processes cost 69 CPU s in a
# 500-clip job with all of these on (bench/RESULTS.md, "Many machines").
LOCAL_RAY_CONFIG = {"enable_worker_prestart": False, "prestart_worker_first_driver": False,
                    "enable_metrics_collection": False, "task_events_report_interval_ms": 0, "event_stats": False}
# Nor usage statistics: with them on, Ray Data starts one more actor process to collect them.
LOCAL_RAY_ENVIRONMENT = {"RAY_USAGE_STATS_ENABLED": "0"}


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Join the cluster at ``address``, or start Ray on this machine when ``address`` is None. A session that
    is already open (a caller's own ``ray.init``) is used as it is and left open."""
    import ray

    if ray.is_initialized():
        yield
        return
    with _defaults_in_environment(LOCAL_RAY_ENVIRONMENT if address is None else {}):
        try:
            # "local": a new Ray on this machine, even where RAY_ADDRESS or another job's cluster would be found.
            local = {"include_dashboard": False, "_system_config": LOCAL_RAY_CONFIG} if address is None else {}
            ray.init(address=address or "local", logging_level=logging.WARNING, configure_logging=False, **local)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UsageError(f"--ray {address or ''}: cannot start or reach Ray ({_first_line(exc)})") from exc
        try:
            yield
        finally:
            ray.shutdown()


@contextmanager
def _defaults_in_environment(defaults: dict[str, str]) -> Iterator[None]:
    """``defaults`` set in the environment where not set already, for the block's duration (a user's own value
    wins and is left alone)."""
    added = [name for name in defaults if name not in os.environ]
    os.environ.update({name: defaults[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def plan_job(pending: Sequence[Item], options: RayOptions, workers: int) -> tuple[list[list[Item]], int]:
    """(groups, actors): with no group size given, groups are cut small enough that each of ``workers`` gets one
    (a job under 1200 s of audio was one group, so "every core" ran one worker); never more actors than groups."""
    size = options.group_seconds
    if size is None:
        total = sum(item.duration for item in pending)
        size = min(GROUP_SECONDS, total / workers) if total > 0 else GROUP_SECONDS
    groups = plan_groups(pending, size)
    return groups, max(1, min(workers, len(groups)))


def _pool_size(options: RayOptions) -> int:
    """Actors that fit: as asked, else as many as the cluster's CPUs (GPUs) hold."""
    import ray

    if options.num_workers is not None:
        return options.num_workers
    resources = ray.cluster_resources()
    if options.gpus_per_worker > 0:
        fit = int(resources.get("GPU", 0) // options.gpus_per_worker)
        if fit < 1:
            raise UsageError(f"--gpus-per-worker {options.gpus_per_worker:g}: the Ray cluster has no GPU for it")
    else:
        fit = int(resources.get("CPU", 1) // options.threads_per_worker)
    return max(1, fit)


def _dataset(groups: list[list[Item]], spec: WorkerSpec, options: RayOptions, workers: int) -> Any:
    import ray.data

    # Its one warning says that the progress bars are off, which they are because whisper-zh draws its own.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    rows = [{"items": encode_group(group)} for group in groups]
    with warnings.catch_warnings():
        # Ray 2.60 sets retries only through ray_remote_args, deprecated for 2.64 (which names no replacement
        # yet); without them Ray Data retries a dying group forever.
        warnings.simplefilter("ignore", DeprecationWarning)
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            TranscribeWorker,
            fn_constructor_args=(spec,),
            batch_size=1,  # one group per call: the actor packs and batches within it
            # One group in flight per actor: a finished actor takes the next group, none waits behind a busy one.
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
            num_cpus=options.threads_per_worker,
            num_gpus=options.gpus_per_worker or None,
            max_restarts=-1,  # Ray replaces a dead actor...
            max_task_retries=options.max_retries,  # ...and retries its group this many times
        )
    context = dataset.context  # this dataset's own copy of Ray Data's settings
    context.enable_progress_bars = False  # whisper-zh's own bar counts files and audio seconds
    context.print_on_execution_start = False
    context.max_errored_blocks = -1  # a group that fails on every retry is reported, the job goes on
    return dataset


def _consume(dataset: Any, store: ResultStore, summary: JobSummary, pending: list[Item],
             on_outcome: OnOutcome | None, progress: bool) -> set[str]:
    """Store each group as it arrives (one shard per group), count it, move the bar; returns the keys seen."""
    from tqdm import tqdm

    seen: set[str] = set()
    bar = tqdm(total=round(sum(item.duration for item in pending), 1), unit="s", unit_scale=True,
               desc=f"0/{len(pending)} files", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    model_recorded = False
    with bar:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            outcomes = _outcomes(batch)
            if not outcomes:
                continue
            if not model_recorded:
                store.record_model(json.loads(str(batch["model"][0])))
                model_recorded = True
            for outcome in outcomes if on_outcome is not None else ():
                on_outcome(outcome)  # before the shard: a group is complete only once its outputs exist too
            store.write_shard(outcomes)
            for outcome, worker, rss in zip(outcomes, batch["worker"], batch["rss_mb"], strict=True):
                _count(summary, outcome, str(worker), float(rss))
                seen.add(outcome.key)
            summary.busy_seconds += float(sum(batch["busy_s"]))
            summary.cpu_seconds += float(sum(batch["cpu_s"]))
            bar.update(round(sum(o.duration for o in outcomes), 1))
            bar.set_description(f"{summary.done + summary.failed}/{len(pending)} files")
    return seen


def _outcomes(batch: dict[str, Any]) -> list[Outcome]:
    out = []
    for key, name, duration, data, error in zip(batch["key"], batch["name"], batch["duration"],
                                                batch["transcription"], batch["error"], strict=True):
        transcription = transcription_from_dict(json.loads(str(data))) if data else None
        out.append(Outcome(str(key), str(name), float(duration), transcription, str(error) or None))
    return out


def _count(summary: JobSummary, outcome: Outcome, worker: str, rss: float) -> None:
    summary.peak_rss_mb[worker] = max(rss, summary.peak_rss_mb.get(worker, 0.0))
    if outcome.transcription is None:
        summary.failures.append(outcome)
        summary.failed += 1
    else:
        summary.done += 1
        summary.audio_seconds += outcome.transcription.duration


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__

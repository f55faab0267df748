"""The server's bounded, batching queue in front of the one shared model.

HTTP handlers whose upload has been read take a slot (admission control: at most ``max_pending`` requests wait
for or are in the model at once, the rest get 429), decode their upload, and submit the audio. A worker thread
drains the queue: it takes every job waiting (up to ``max_batch``, after a short gathering window), groups the jobs
whose decoding options are identical, and hands each group to ``transcribe_batch`` in one call, so requests from
several clients share one batched decode. ``workers`` such threads drain it side by side when the model runs that
many calls at once (``Transcriber(workers=...)``): on a small CPU, two one-thread decodes at once finish each about as
fast as one alone, which is what lets a live stream overlap its decodes. Memory is bounded by ``max_pending`` x the
largest admitted audio.

``Retry-After`` for a full queue is the time until the batch in the model should finish (a slot frees then),
from the measured cost of decoding one second of audio.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

# Wall seconds to decode one second of audio, assumed until the first batch is measured (the base model, int8,
# on two CPU cores, batched: about 0.1-0.3).
PRIOR_SECONDS_PER_AUDIO_SECOND = 0.3

# batch_fn(audio arrays, options, on_progress) -> one result (or exception) per input, in order;
# on_progress(seconds) is called as audio seconds of the batch are decoded (or is None).
ProgressFn = Callable[[float], None]
BatchFn = Callable[[list[Any], Any, ProgressFn | None], list[Any]]


class QueueFullError(Exception):
    """Every slot is taken; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"server busy: the request queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class QueueClosedError(Exception):
    """The server is shutting down and admits no new work."""


@dataclass
class _Job:
    audio: Any
    options: Any
    key: Hashable
    seconds: float = 0.0
    progress: ProgressFn | None = None  # called with the fraction (0..1) of its batch decoded so far
    gather: bool = True  # a batch it starts waits the gathering window for companions
    future: Future = field(default_factory=Future)


@dataclass(frozen=True)
class BatchStats:
    """What one call of the batch function did (reported to the metrics callback)."""

    size: int
    seconds: float


class Slot:
    """One admitted request. Release it (idempotent) once its job is done or it never submits one."""

    def __init__(self, owner: BatchingQueue) -> None:
        self._owner = owner
        self._released = False
        self._submitted = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._owner._release_slot()

    def submit(
        self,
        audio: Any,
        options: Any,
        *,
        seconds: float = 0.0,
        progress: ProgressFn | None = None,
        keep: bool = False,
        gather: bool = True,
    ) -> Future:
        """Queue ``audio`` for decoding. The slot is released when the job finishes or is cancelled, unless
        ``keep``: then the caller (one request submitting several jobs in turn) releases it itself. Without
        ``gather`` (a live decode: every wait is latency, and its prompt rarely matches another stream's), a
        batch this job starts takes only the jobs already waiting, and none when there are several workers."""
        job = _Job(audio, options, _options_key(options), seconds, progress, gather)
        return self._owner._submit(self, job, release=not keep)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        # A slot whose job was submitted is released by the job's completion, not here: a client that
        # disconnects must not free the slot while its audio still sits in the queue.
        if not self._submitted:
            self.release()


class BatchingQueue:
    """Admission control + a FIFO of jobs + worker threads that decode them in batches."""

    def __init__(
        self,
        batch_fn: BatchFn,
        *,
        max_pending: int = 16,
        max_batch: int = 8,
        batch_window_s: float = 0.05,
        on_batch: Callable[[BatchStats], None] | None = None,
        workers: int = 1,
    ) -> None:
        if max_pending < 1 or max_batch < 1 or workers < 1:
            raise ValueError("max_pending, max_batch and workers must be at least 1")
        self.workers = workers
        self._batch_fn = batch_fn
        self.max_pending = max_pending
        self.max_batch = max_batch
        self.batch_window_s = batch_window_s
        self._on_batch = on_batch
        self._jobs: queue.Queue[_Job | None] = queue.Queue()  # bounded by admission, not by maxsize
        self._lock = threading.Lock()
        self._admitted = 0
        self._closed = False
        self._busy = 0  # jobs inside batch calls now
        self._batch_started = 0.0  # when the latest batch call began
        self._batch_audio = 0.0  # audio seconds in the model now
        self._cost: float | None = None  # running estimate of wall seconds per audio second (None: not measured)
        self._last_batch_seconds = 1.0
        self._threads: list[threading.Thread] = []

    # -- state -------------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Jobs waiting to be decoded (not counting the batch being decoded now)."""
        return self._jobs.qsize()

    @property
    def in_flight(self) -> int:
        """Admitted requests not yet answered: decoding uploads, waiting, or being decoded."""
        return self._admitted

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def closed(self) -> bool:
        return self._closed

    def refusal(self) -> QueueFullError | QueueClosedError | None:
        """What :meth:`acquire` would raise now (the guard asks before an upload is read), without admitting."""
        with self._lock:
            if self._closed:
                return QueueClosedError("server is shutting down")
            if self._admitted >= self.max_pending:
                return QueueFullError(self._retry_after())
        return None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._threads:
                return
            self._closed = False
            self._threads = [threading.Thread(target=self._run, name=f"whisper-zh-batcher-{i}", daemon=True)
                             for i in range(self.workers)]
            for thread in self._threads:
                thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Admit nothing new, finish every job already queued, then stop the workers."""
        with self._lock:
            self._closed = True
            threads = self._threads
        if not threads:
            return
        for _ in threads:  # FIFO: the sentinels come after every job already queued, one for each worker
            self._jobs.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._threads = []

    # -- admission ---------------------------------------------------------------------------------
    def acquire(self) -> Slot:
        """Admit one request or raise :class:`QueueFullError` (→ 429) / :class:`QueueClosedError` (→ 503)."""
        with self._lock:
            if self._closed:
                raise QueueClosedError("server is shutting down")
            if self._admitted >= self.max_pending:
                raise QueueFullError(self._retry_after())
            self._admitted += 1
        return Slot(self)

    def _retry_after(self) -> int:
        """Seconds until a slot should free: the rest of the batch in the model, else one typical batch."""
        if self._busy:
            expected = self._batch_audio * (self._cost or PRIOR_SECONDS_PER_AUDIO_SECOND)
            remaining = expected - (time.monotonic() - self._batch_started)
        else:
            remaining = self._last_batch_seconds
        return max(1, math.ceil(remaining))

    def _release_slot(self) -> None:
        with self._lock:
            self._admitted -= 1

    def _submit(self, slot: Slot, job: _Job, *, release: bool) -> Future:
        slot._submitted = True

        def _done(future: Future) -> None:
            if future.cancelled():
                job.audio = None  # a cancelled job waits in the FIFO until popped: hold no samples meanwhile
            if release:
                slot.release()

        job.future.add_done_callback(_done)
        with self._lock:
            if self._closed or not self._threads:
                job.future.set_exception(QueueClosedError("server is shutting down"))
                return job.future
        self._jobs.put(job)
        return job.future

    # -- worker ------------------------------------------------------------------------------------
    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._jobs.get()
            if first is None:
                break
            batch = [first]
            deadline = time.monotonic() + (self.batch_window_s if first.gather else 0.0)
            # A live job takes no companions where another worker may be free: a second stream's decode (other
            # options, so a second group) would wait here for this one instead of running beside it.
            limit = self.max_batch if first.gather or self.workers == 1 else 1
            while len(batch) < limit:
                try:
                    job = self._jobs.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:  # this worker's sentinel: the batch in hand is its last
                    stop = True
                    break
                batch.append(job)
            # set_running_or_notify_cancel drops jobs whose client went away before decoding started
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            for group in _group_by_key(live):
                self._decode(group)

    def _decode(self, group: list[_Job]) -> None:
        audio_seconds = sum(job.seconds for job in group)
        with self._lock:
            self._batch_started = time.monotonic()
            self._batch_audio += audio_seconds
            self._busy += len(group)
        started = time.perf_counter()
        try:
            results = self._batch_fn([job.audio for job in group], group[0].options, _progress_for(group))
            if len(results) != len(group):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(group)} inputs")
        except Exception as exc:  # noqa: BLE001 - the worker must survive anything the model throws
            logger.exception("batch decode failed")
            results = [exc] * len(group)
        elapsed = time.perf_counter() - started
        with self._lock:
            self._busy -= len(group)
            self._batch_audio -= audio_seconds
            self._last_batch_seconds = elapsed
            if audio_seconds > 0:
                cost = elapsed / audio_seconds
                self._cost = cost if self._cost is None else 0.5 * self._cost + 0.5 * cost
        for job, result in zip(group, results, strict=True):
            job.audio = None  # free the samples now, not when the client reads its answer
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
        if self._on_batch is not None:
            try:
                self._on_batch(BatchStats(len(group), elapsed))
            except Exception:  # noqa: BLE001
                logger.exception("batch metrics callback failed")


def _progress_for(group: list[_Job]) -> ProgressFn | None:
    listeners = [job.progress for job in group if job.progress is not None]
    total = sum(job.seconds for job in group)
    if not listeners or total <= 0:
        return None
    done = 0.0

    def on_progress(seconds: float) -> None:
        nonlocal done
        done += seconds
        for listener in listeners:
            try:
                listener(min(1.0, done / total))
            except Exception:  # noqa: BLE001 - a listener's failure must not stop the batch
                logger.debug("progress listener failed", exc_info=True)

    return on_progress


def _options_key(options: Any) -> Hashable:
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        return tuple(_hashable(v) for v in dataclasses.astuple(options))
    return _hashable(options)


def _hashable(value: Any) -> Hashable:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _group_by_key(jobs: list[_Job]) -> list[list[_Job]]:
    groups: dict[Hashable, list[_Job]] = {}
    for job in jobs:
        groups.setdefault(job.key, []).append(job)
    return list(groups.values())

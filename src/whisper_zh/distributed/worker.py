"""The work one Ray actor does: hold one :class:`~whisper_zh.transcriber.Transcriber` and decode groups of files.

Ray Data builds one :class:`TranscribeWorker` per actor and calls it with batches of rows, each row one group of
inputs (:mod:`whisper_zh.distributed.plan`). The actor reads and decodes the audio itself (it is a CPU worker too:
reading a FLAC clip takes milliseconds, its decoding hundreds), calls
:meth:`~whisper_zh.transcriber.Transcriber.transcribe_batch` on the whole group, so short clips are packed as on
one machine, and returns one row per input. It writes nothing: the driver stores what it returns.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from whisper_zh.decoding import DecodeOptions
from whisper_zh.distributed.plan import Item, decode_group
from whisper_zh.errors import AudioError
from whisper_zh.results import Transcription

logger = logging.getLogger(__name__)

# The columns a worker returns, one value per input.
# busy_s and cpu_s: the wall and CPU seconds the worker spent on the row's group, shared equally by its rows.
COLUMNS = ("key", "name", "duration", "transcription", "error", "worker", "rss_mb", "model", "busy_s", "cpu_s")


@dataclass(frozen=True)
class WorkerSpec:
    """What each actor loads and how it decodes (pickled to every actor)."""

    model: str = "base"
    engine: str = "ctranslate2"
    device: str = "cpu"
    compute_type: str = "int8"
    threads: int = 1
    options: DecodeOptions = field(default_factory=DecodeOptions)


class TranscribeWorker:
    """One model per actor; ``__call__`` decodes a batch of groups and returns one row per input."""

    def __init__(self, spec: WorkerSpec) -> None:
        from whisper_zh.transcriber import Transcriber

        self.spec = spec
        self.transcriber = Transcriber(spec.model, engine=spec.engine, device=spec.device,  # type: ignore[arg-type]
                                       compute_type=spec.compute_type, cpu_threads=spec.threads)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.model = json.dumps(asdict(self.transcriber.info), ensure_ascii=False)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        rows: list[tuple[Item, Transcription | str]] = []
        busy: list[float] = []
        cpu: list[float] = []
        for payload in batch["items"]:
            group = decode_group(str(payload))
            started, cpu_started = time.perf_counter(), time.process_time()
            rows += zip(group, self.transcribe(group), strict=True)
            busy += [(time.perf_counter() - started) / len(group)] * len(group)
            cpu += [(time.process_time() - cpu_started) / len(group)] * len(group)
        rss = peak_rss_mb()
        return {
            "key": [item.key for item, _ in rows],
            "name": [item.name for item, _ in rows],
            "duration": [r.duration if isinstance(r, Transcription) else item.duration for item, r in rows],
            "transcription": [json.dumps(r.to_dict(), ensure_ascii=False) if isinstance(r, Transcription) else ""
                              for _, r in rows],
            "error": ["" if isinstance(r, Transcription) else r for _, r in rows],
            "worker": [self.worker] * len(rows),
            "rss_mb": [rss] * len(rows),
            "model": [self.model] * len(rows),
            "busy_s": busy,
            "cpu_s": cpu,
        }

    def transcribe(self, group: list[Item]) -> list[Transcription | str]:
        """The group's transcriptions, or each failed input's one-line reason.

        A bad file yields its AudioError in its slot. An exception from the decoder itself would lose the whole
        group, so the group is then decoded again file by file, and only the file that fails again is lost."""
        try:
            results = self.transcriber.transcribe_batch([item.key for item in group], self.spec.options)
        except Exception as exc:  # noqa: BLE001 - isolate the input that breaks the decoder
            if len(group) == 1:
                return [f"{group[0].key}: transcription failed ({type(exc).__name__}: {_first_line(exc)})"]
            logger.warning("a group of %d files failed (%s); decoding them one by one", len(group), exc)
            return [result for item in group for result in self.transcribe([item])]
        return [str(r) if isinstance(r, AudioError) else r for r in results]


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""

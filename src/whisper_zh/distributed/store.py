"""The output directory of a distributed job: what settings made it, which inputs are complete, and their results.

Layout (``root`` is the job's ``--output-dir``)::

    job.json            the settings the results were made with (a re-run with other settings is refused)
    shards/part-*.jsonl one row per input of one decoded group: its transcription, or the one-line reason it failed
    errors.jsonl        written at the end of each run: the inputs that have no result, with their reason

Only the driver writes here (workers hand their results back through Ray), and every file is written to a
temporary name and renamed into place (:func:`whisper_zh.files.atomic_write_text`). So a shard that exists is
complete: a killed driver leaves at most a temporary file, which is ignored and removed on the next run. An input
is complete when some shard holds its transcription; inputs that only have an error are tried again by a re-run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whisper_zh.errors import UsageError
from whisper_zh.files import atomic_write_text
from whisper_zh.results import Segment, Transcription, Word
from whisper_zh.writers import json_content

logger = logging.getLogger(__name__)

JOB_FILE = "job.json"
SHARD_DIR = "shards"
ERRORS_FILE = "errors.jsonl"


@dataclass(frozen=True)
class Outcome:
    """One input's result: a transcription, or the reason there is none."""

    key: str
    name: str
    duration: float
    transcription: Transcription | None = None
    error: str | None = None

    def to_json(self) -> str:
        row: dict[str, Any] = {"key": self.key, "name": self.name, "duration": round(self.duration, 3)}
        if self.transcription is not None:
            # the json format's content, as the README says (no empty "tokens" or "words" fields)
            row["transcription"] = json_content(self.transcription)
        else:
            row["error"] = self.error or "unknown error"
        return json.dumps(row, ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> Outcome:
        row = json.loads(line)
        data = row.get("transcription")
        return cls(row["key"], row["name"], float(row["duration"]),
                   transcription_from_dict(data) if data is not None else None, row.get("error"))


def transcription_from_dict(data: dict[str, Any]) -> Transcription:
    """The inverse of the json format (:meth:`Transcription.to_dict` less its empty fields; the text is rebuilt
    from the segments, as it was made)."""
    segments = []
    for fields in data["segments"]:
        fields = dict(fields)
        words = fields.pop("words", None)
        segments.append(Segment(**fields, words=[Word(**w) for w in words] if words is not None else None))
    return Transcription(data["source"], segments, data["language"], float(data["duration"]))


@dataclass
class Merged:
    """Every input's best outcome across all shards: a transcription wins over an error, the first shard (in
    name order) over later ones. ``duplicates`` counts inputs transcribed in more than one shard (0 unless two
    runs wrote into one directory at once)."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    duplicates: int = 0
    unreadable_shards: list[str] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        known = self.outcomes.get(outcome.key)
        if known is None or (known.transcription is None and outcome.transcription is not None):
            self.outcomes[outcome.key] = outcome
        elif known.transcription is not None and outcome.transcription is not None:
            self.duplicates += 1

    def completed(self) -> set[str]:
        return {key for key, outcome in self.outcomes.items() if outcome.transcription is not None}


class ResultStore:
    """A job's output directory (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.shard_dir = self.root / SHARD_DIR

    def claim(self, settings: dict[str, Any]) -> None:
        """Record the job's settings, or check that earlier results in this directory were made with the same
        ones (mixing two models' results in one corpus would go unnoticed otherwise)."""
        settings = json.loads(json.dumps(settings))  # tuples become lists, as they are read back
        path = self.root / JOB_FILE
        if path.is_file():
            try:
                old = json.loads(path.read_text(encoding="utf-8")).get("settings")
            except (OSError, json.JSONDecodeError) as exc:
                raise UsageError(f"{path}: cannot read the earlier job's settings ({exc})") from exc
            if old != settings:
                before, now = _flat(old or {}), _flat(settings)
                changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
                raise UsageError(
                    f"{self.root}: holds results made with other settings ({', '.join(changed)} differ); "
                    "use another --output-dir, or delete it to start again"
                )
        else:
            atomic_write_text(path, json.dumps({"settings": settings}, ensure_ascii=False, indent=2) + "\n")
        self._remove_temporaries()

    def record_model(self, model: dict[str, Any]) -> None:
        """Keep the model a worker really ran (engine, compute type after fallbacks) beside the settings."""
        path = self.root / JOB_FILE
        job = json.loads(path.read_text(encoding="utf-8"))
        if job.get("model") != model:
            job["model"] = model
            atomic_write_text(path, json.dumps(job, ensure_ascii=False, indent=2) + "\n")

    def model(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.root / JOB_FILE).read_text(encoding="utf-8")).get("model")
        except (OSError, json.JSONDecodeError):
            return None

    def write_shard(self, outcomes: list[Outcome]) -> Path:
        """Write one shard atomically; its name is a hash of its inputs, so writing the same group twice
        replaces the shard instead of duplicating its rows."""
        digest = hashlib.sha1("\0".join(o.key for o in outcomes).encode("utf-8")).hexdigest()[:20]
        return atomic_write_text(self.shard_dir / f"part-{digest}.jsonl",
                                 "".join(o.to_json() + "\n" for o in outcomes))

    def shards(self) -> list[Path]:
        return sorted(self.shard_dir.glob("part-*.jsonl")) if self.shard_dir.is_dir() else []

    def merged(self) -> Merged:
        """Read every shard (a shard that cannot be parsed is reported and its inputs are done again)."""
        merged = Merged()
        for path in self.shards():
            try:
                outcomes = [Outcome.from_json(line) for line in _lines(path)]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("%s: unreadable shard, its inputs will be transcribed again (%s)", path, exc)
                merged.unreadable_shards.append(str(path))
                continue
            for outcome in outcomes:
                merged.add(outcome)
        return merged

    def write_errors(self, outcomes: Iterable[Outcome]) -> Path:
        """errors.jsonl: one row per input without a result (``audio`` and its one-line ``error``)."""
        rows = [json.dumps({"audio": o.key, "error": o.error}, ensure_ascii=False) + "\n" for o in outcomes]
        return atomic_write_text(self.root / ERRORS_FILE, "".join(rows))

    def _remove_temporaries(self) -> None:
        """Temporary files a killed driver left behind (never read as results: they lack the final name)."""
        if self.shard_dir.is_dir():
            for path in self.shard_dir.glob(".part-*.tmp"):
                path.unlink(missing_ok=True)


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"decoding": {"beam_size": 5}} -> {"decoding.beam_size": 5}, to name exactly what changed."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield line

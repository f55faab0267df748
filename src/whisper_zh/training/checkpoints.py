"""Atomic training checkpoints: written to a temporary directory, fsynced, renamed, then marked complete.

A checkpoint directory ``checkpoints/step-000120`` counts only when it holds ``COMPLETE``, a JSON manifest of
every file with its size, written last. A kill -9 at any moment leaves either no directory under that name
(the staging one, built by :func:`whisper_zh.files.atomic_dir`, starts with '.tmp-') or a complete one;
``latest_complete`` also checks the manifest's sizes, so a torn copy made by other means is skipped, never
resumed from.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from whisper_zh.errors import DataError, UsageError
from whisper_zh.files import atomic_dir, atomic_write_text, leftovers

MARKER = "COMPLETE"
CHECKPOINTS = "checkpoints"  # under the run's output directory
TRAIN_LOG = "train_log.jsonl"
# What a run writes that a second run into the same folder would mix with its own (the exported model files
# are replaced whole at the end; these would be resumed from, appended to, or averaged).
RUN_STATE = (CHECKPOINTS, TRAIN_LOG, "averaged", "interpolated", "model.safetensors")
_STEP_DIR = re.compile(r"^step-(\d+)$")


def previous_run(out_dir: str | Path) -> list[str]:
    """The names in ``out_dir`` that an earlier fine-tuning run left there (empty when there is none)."""
    return [name for name in RUN_STATE if (Path(out_dir) / name).exists()]


def check_output_dir(out_dir: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run where one already is, unless ``resume`` (continue it) or ``overwrite`` (its
    checkpoints, log and intermediate models are deleted first)."""
    found = previous_run(out_dir)
    if not found or resume:
        return
    if not overwrite:
        raise UsageError(f"{out_dir}: already holds a fine-tuning run ({', '.join(found)}); pass --resume to "
                         "continue it, --overwrite to start again, or choose another --output-dir")
    for name in found:
        path = Path(out_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif name != "model.safetensors":  # the exported model is replaced whole when the new run ends
            path.unlink()


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:06d}"


def write_checkpoint(root: Path, step: int, writer: Callable[[Path], None], *, meta: dict | None = None) -> Path:
    """Create ``root/step-NNNNNN`` atomically: ``writer(staging_dir)`` fills it, then fsync, rename, marker.

    An existing checkpoint of the same step is replaced (after the new one is complete on disk).
    """
    final = checkpoint_dir(root, step)
    with atomic_dir(final) as staging:  # an existing checkpoint of this step is replaced only once this one is whole
        writer(staging)
        files = {str(p.relative_to(staging)): p.stat().st_size for p in sorted(staging.rglob("*")) if p.is_file()}
    # The marker goes last: only now does the checkpoint count as complete.
    atomic_write_text(final / MARKER, json.dumps({"step": step, "files": files, **(meta or {})}, indent=1))
    return final


def is_complete(path: Path) -> bool:
    """True when ``path`` has a marker and every file it lists exists with the recorded size."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return False
    try:
        manifest = json.loads(marker.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError):
        return False
    for name, size in files.items():
        candidate = Path(path) / name
        if not candidate.is_file() or candidate.stat().st_size != size:
            return False
    return True


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """All step directories under ``root`` (complete or not), sorted by step."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_complete(root: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    for _, path in reversed(list_checkpoints(root)):
        if is_complete(path):
            return path
    return None


def complete_or_latest(root: Path, step: int | None, purpose: str) -> tuple[int, Path]:
    """(step, directory) of the complete checkpoint of ``step`` under ``root``, else of the latest complete one;
    DataError when there is none ("no complete checkpoint to ``purpose``")."""
    chosen = checkpoint_dir(root, step) if step is not None else None
    if chosen is None or not is_complete(chosen):
        chosen = latest_complete(root)
    if chosen is None:
        raise DataError(f"{root}: no complete checkpoint to {purpose}")
    return int(_STEP_DIR.match(chosen.name).group(1)), chosen


def prune(root: Path, keep_last: int, protect: tuple[Path, ...] = ()) -> list[Path]:
    """Delete old checkpoints (and leftover temporary dirs), keeping the newest ``keep_last`` and ``protect``."""
    root = Path(root)
    removed = []
    complete = [p for _, p in list_checkpoints(root) if is_complete(p)]
    keep = set(complete[-keep_last:]) | {Path(p).resolve() for p in protect} | set(complete[-keep_last:])
    keep = {p.resolve() for p in keep}
    for _, path in list_checkpoints(root):
        if path.resolve() not in keep:
            # Remove the marker first, so a kill mid-delete leaves an incomplete (ignored) directory.
            (path / MARKER).unlink(missing_ok=True)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    for child in leftovers(root):  # staging directories of saves that were killed
        shutil.rmtree(child, ignore_errors=True)
    return removed

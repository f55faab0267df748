"""Writing files and directories so that a reader never sees half of one: build beside the target, fsync, rename.

:func:`atomic_write_bytes` / :func:`atomic_write_text` write one file; :func:`atomic_dir` builds a directory (a
converted model, the assembled embedded model, a training checkpoint, an exported model). Both stage under a
hidden name in the same directory as the target (so the rename never crosses a file system), fsync what they
wrote, rename it into place, and remove the staging on any failure, Ctrl-C included. What they publish gets the
mode any tool's output gets under the process umask (0644 / 0755 by default), not mkstemp's private 0600.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Staging and trash names start with these; `leftovers` finds them after a crash (kill -9 skips every cleanup).
STAGING_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (temporary file in the same directory, fsync, os.replace)."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; on any failure the target is untouched and no temp file remains."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp made it 0600
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)  # make the rename itself durable
    return target


@contextmanager
def atomic_dir(
    target: str | os.PathLike, *, merge: bool = False, last: tuple[str, ...] = ()
) -> Iterator[Path]:
    """Build a directory in a staging place and publish it as ``target`` only when the block succeeds.

    ``with atomic_dir(out) as staging: write files into staging``. On a normal exit every file is fsynced and
    the staging directory is renamed to ``target``; a ``target`` that exists is replaced (moved aside, then
    deleted, so a reader sees the old directory or the new one, never a mix). On an exception nothing is
    published and the staging directory is removed.

    ``merge=True`` keeps what else ``target`` holds (a training run's logs and checkpoints beside its exported
    model): each entry built in staging replaces its namesake in ``target`` by one rename, the names in ``last``
    (e.g. the weights) after all others, so a reader never pairs new weights with old configuration files.
    """
    target = Path(target)
    if merge:
        target.mkdir(parents=True, exist_ok=True)
        home = target  # stage inside: the target exists, and its parent may be another file system
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        home = target.parent
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{target.name}-", dir=home))
    try:
        yield staging
        _fsync_tree(staging)
        if merge:
            _merge_into(staging, target, last)
        else:
            os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp made it 0700
            _replace_dir(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _merge_into(staging: Path, target: Path, last: tuple[str, ...]) -> None:
    entries = sorted(staging.iterdir(), key=lambda p: (p.name in last, last.index(p.name) if p.name in last else 0))
    for entry in entries:
        destination = target / entry.name
        if entry.is_dir():
            os.chmod(entry, 0o777 & ~current_umask())
            _replace_dir(entry, destination)
        else:
            os.replace(entry, destination)
    fsync_dir(target)


def _replace_dir(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``, moving an existing ``target`` (directory or file) out of the way first."""
    trash = None
    if target.exists() or target.is_symlink():
        trash = Path(tempfile.mkdtemp(prefix=f"{TRASH_PREFIX}{target.name}-", dir=target.parent)) / "old"
        os.replace(target, trash)
    os.replace(staging, target)
    fsync_dir(target.parent)
    if trash is not None:
        shutil.rmtree(trash.parent, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    """fsync every file under ``root`` and every directory in it, so the content is on disk before the rename;
    each file gets the mode the umask gives (safetensors' ``save_file`` writes through a 0600 temporary file)."""
    mask = current_umask()
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                executable = os.stat(path).st_mode & 0o111
                os.chmod(path, (0o777 if executable else 0o666) & ~mask)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


def leftovers(directory: str | os.PathLike) -> list[Path]:
    """Staging and trash entries that a killed process left in ``directory`` (safe to delete once it is dead)."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith((STAGING_PREFIX, TRASH_PREFIX)))


def current_umask() -> int:
    """The process umask, read without changing it where the platform allows (Linux: /proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            match = re.search(r"^Umask:\s*([0-7]+)", status.read(), re.MULTILINE)
        if match:
            return int(match.group(1), 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory, so that renames and new entries in it survive a crash (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""Command-line inputs (files, directories, JSONL manifests) expanded into the audio files to transcribe, the
inputs refused with their reason, and a distinct output name for each file.

Output names mirror the inputs: a file named on the command line or in a manifest is named after its stem
(``talk.mp3`` -> ``talk``), a file found in a directory keeps its place below that directory (``rec/a/x.wav`` ->
``a/x``). Where two names would still be equal, they are made distinct by construction, never by a counter that
can collide with another input's name: two files of one folder that differ only in their extension keep it
(``clip.mp3``, ``clip.m4a``), and files of different folders take as many of their parent folders as it takes
(``a/x.flac``, ``b/x.flac`` -> ``a/x``, ``b/x``). An input whose name still collides is refused, never
overwritten (``transcribe`` also refuses to replace a file it wrote earlier in the same run, which catches names
that differ only in case on a case-insensitive file system).
"""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from whisper_zh.data import AUDIO_EXTENSIONS, read_lines


@dataclass(frozen=True)
class InputFile:
    """One audio file to transcribe, and its output name: a relative POSIX path without extension."""

    path: str
    output: str


@dataclass(frozen=True)
class Rejected:
    """An input that will not be transcribed (``where`` is a path, or a manifest and line), and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True)
class Inputs:
    """What :func:`expand_inputs` found: files in order, refused inputs, and files given more than once."""

    files: list[InputFile] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    repeated: list[str] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]


def expand_inputs(items: Iterable[str]) -> Inputs:
    """Expand command-line inputs: a file stays as given; a directory gives its audio/video files (recursively,
    sorted); a .jsonl manifest gives its ``audio`` paths (relative to the manifest).

    Missing files are kept, so that they fail with their reason where they are decoded. Things that are not
    regular files (a FIFO, a device, a socket: reading one can block for ever) and manifest rows that cannot be
    read (not JSON, no ``audio``, not UTF-8) are refused with a one-line reason. A file given twice is kept once.
    """
    found: list[tuple[str, int]] = []  # (path, how many trailing path parts its natural output name keeps)
    rejected: list[Rejected] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.suffix.lower() not in AUDIO_EXTENSIONS or child.is_dir():
                    continue
                if reason := not_a_regular_file(child):
                    rejected.append(Rejected(str(child), reason))
                else:
                    found.append((str(child), len(child.relative_to(path).parts)))
        elif path.suffix.lower() == ".jsonl" and path.is_file():
            paths, bad = _manifest_paths(path)
            rejected += bad
            found += [(p, 1) for p in paths]
        elif reason := not_a_regular_file(path):
            rejected.append(Rejected(item, reason))
        else:
            found.append((item, 1))
    unique, repeated = _drop_repeats(found)
    files, collided = _name_outputs(unique)
    return Inputs(files, rejected + collided, repeated)


def not_a_regular_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as an audio file without risk (None when it is a regular file or missing)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None  # decoding reports "file not found" with the other decode errors
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory, not an audio file"
    kind = (
        "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
        else "a character device" if stat.S_ISCHR(mode)
        else "a block device" if stat.S_ISBLK(mode)
        else "a socket" if stat.S_ISSOCK(mode)
        else "not a regular file"
    )
    return f"{kind}, not a regular audio file; skipped"


def _manifest_paths(manifest: Path) -> tuple[list[str], list[Rejected]]:
    paths: list[str] = []
    rejected: list[Rejected] = []
    for line in read_lines(manifest):
        where = f"{manifest}:{line.number}"
        if line.text is None:
            rejected.append(Rejected(where, line.problem))
            continue
        if not line.text.strip():
            continue
        try:
            audio = json.loads(line.text)["audio"]
            if not isinstance(audio, str) or not audio:
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            rejected.append(Rejected(where, "not a JSON object with an 'audio' path"))
            continue
        audio_path = Path(audio) if Path(audio).is_absolute() else manifest.parent / audio
        if not audio_path.exists() and not audio_path.is_symlink():
            relative = "" if Path(audio).is_absolute() else " (a relative path is read from the manifest's folder)"
            rejected.append(Rejected(where, f"audio file not found: {audio_path}{relative}"))
        elif reason := not_a_regular_file(audio_path):
            rejected.append(Rejected(f"{where}: {audio_path}", reason))
        else:
            paths.append(str(audio_path))
    return paths, rejected


def _drop_repeats(found: list[tuple[str, int]]) -> tuple[list[tuple[str, int]], list[str]]:
    seen: set[str] = set()
    unique, repeated = [], []
    for path, depth in found:
        key = os.path.abspath(path)
        if key in seen:
            repeated.append(path)
        else:
            seen.add(key)
            unique.append((path, depth))
    return unique, repeated


@dataclass
class _Name:
    """An output name under construction: the last ``depth`` parts of the absolute path, the suffix dropped
    unless ``keep_suffix``."""

    parts: tuple[str, ...]
    depth: int
    keep_suffix: bool = False

    def render(self) -> str:
        *folders, name = self.parts[-self.depth :]
        if not self.keep_suffix:
            name = Path(name).stem or name
        return "/".join([*folders, name])



def _name_outputs(found: list[tuple[str, int]]) -> tuple[list[InputFile], list[Rejected]]:
    names = [_Name(Path(os.path.abspath(p)).parts[1:], depth) for p, depth in found]  # no anchor: stays relative
    while _separate(names):
        pass
    files: list[InputFile] = []
    rejected: list[Rejected] = []
    taken: dict[str, str] = {}
    for (path, _), name in zip(found, names, strict=True):
        if name.render() in taken:
            reason = f"its output name '{name.render()}' is also that of {taken[name.render()]}; skipped, not overwritten"
            rejected.append(Rejected(path, reason))
            continue
        taken[name.render()] = path
        files.append(InputFile(path, name.render()))
    return files, rejected


def _separate(names: list[_Name]) -> bool:
    """One round of making colliding names distinct; False when nothing more can be done."""
    groups: dict[str, list[_Name]] = {}
    for name in names:
        groups.setdefault(name.render(), []).append(name)
    changed = False
    for group in (g for g in groups.values() if len(g) > 1):
        folders = Counter(n.parts[:-1] for n in group)
        shared = [n for n in group if folders[n.parts[:-1]] > 1 and not n.keep_suffix]
        for name in shared:  # same folder, same stem: only the extension tells them apart
            name.keep_suffix = True
        different_folders = len(folders) > 1
        longer = [n for n in group if n.depth < len(n.parts)] if different_folders and not shared else []
        for name in longer:  # different folders: name as many parent folders as it takes
            name.depth += 1
        changed = changed or bool(shared or longer)
    return changed

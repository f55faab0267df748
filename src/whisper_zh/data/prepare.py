"""`whisper-zh prepare`: a dataset as users have it -> ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` in one folder,
the manifests ``finetune`` and ``doctor`` take.

Any source :func:`~whisper_zh.data.load_source` reads goes in (a JSONL or CSV manifest, a Kaldi or AISHELL folder,
a Common Voice TSV, a folder of audio with one ``.txt`` per file). Each row is checked as training needs it:

- the audio decodes, is not silent and fits Whisper's 30 s window; its duration is measured from the samples
  (a duration written in the input is not trusted). Audio that is not 16 kHz mono WAV or FLAC is written once as
  16 kHz mono FLAC under ``FOLDER/audio/``, so training never resamples it again; the same samples twice are one
  utterance, not two;
- the transcript is converted to the target script (Simplified by default, OpenCC), its half-width marks next to
  Chinese made full-width and the spaces of word-segmented corpora removed;
- a row that fails is dropped and named with its reason (``dropped.jsonl``, ``summary.json``, the printed summary).

Splits: by speaker when the data has at least three speakers (no speaker in two splits), otherwise by utterance,
drawn with a fixed seed across the whole id order (:func:`~whisper_zh.data.splits.stratified_split`, so every
run of neighbouring ids, one article or one kind of prompt, gives its share to each split), and every reading of
one sentence in the split of its first. No utterance is in two splits.

Targets are written as the model should learn to speak, with punctuation. Where the transcripts have none (fewer
than half the rows carry a mark, as in AISHELL), the train and dev targets get it back as the fine-tuning bench
does: the base model transcribes the audio and its marks are carried over to the transcript's own characters
(:func:`~whisper_zh.data.punctuation.restore_punctuation`; the characters never change). Test targets stay
as written: CER scoring removes punctuation, and the test set stays the users' own words.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from whisper_zh.audio import SAMPLE_RATE, SILENCE_PEAK, load_audio
from whisper_zh.data.base import BadRow, Utterance, count_kinds
from whisper_zh.data.sources import load_source
from whisper_zh.errors import AudioError, AudioTooLongError, DataError, UsageError
from whisper_zh.files import atomic_write_text
from whisper_zh.normalize import chinese_punctuation, convert_script, normalize_whitespace, remove_punctuation

SPLITS = ("train", "dev", "test")
MAX_SECONDS = 30.0  # Whisper's window: audio past it would be trained on without being heard
MIN_SPEAKERS = 3  # fewer speakers than splits: split by utterance
PUNCTUATED_SHARE = 0.5  # "auto": restore punctuation when fewer rows than this share carry any mark
PUNCTUATE = ("auto", "always", "never")
SHOWN = 20  # dropped rows printed by name (all of them are in dropped.jsonl)


@dataclass(frozen=True)
class PrepareOptions:
    """How ``prepare`` reads, checks and splits (the CLI flags of the same names)."""

    dev_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    format: str | None = None  # forced source format; detected when None
    split: str | None = None  # the source's own split (AISHELL wav/<split>, Common Voice <split>.tsv)
    script: str = "simplified"
    max_seconds: float = MAX_SECONDS
    punctuate: str = "auto"
    punctuation_model: str = "base"
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name in ("dev_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) < 1:
                flag = f"--{name.replace('_', '-')} {getattr(self, name)}"
                raise UsageError(f"{flag}: give a fraction from 0 to below 1")
        if self.dev_fraction + self.test_fraction >= 1:
            raise UsageError("--dev-fraction plus --test-fraction must leave something to train on (sum below 1)")
        if self.punctuate not in PUNCTUATE:
            raise UsageError(f"--punctuate {self.punctuate}: use one of {', '.join(PUNCTUATE)}")
        if not 0 < self.max_seconds <= MAX_SECONDS:
            raise UsageError(f"--max-seconds {self.max_seconds}: give a length above 0 and at most "
                             f"{MAX_SECONDS:.0f} s")


@dataclass
class Row:
    """One checked utterance as it will be written (``audio``: absolute, or relative to the output folder)."""

    id: str
    audio: str
    text: str
    duration: float
    speaker: str | None

    def to_dict(self) -> dict[str, Any]:
        row = {"id": self.id, "audio": self.audio, "text": self.text, "duration": round(self.duration, 3)}
        return row | ({"speaker": self.speaker} if self.speaker else {})


@dataclass
class PrepareSummary:
    """What ``prepare`` wrote and why it left rows out (also written as ``summary.json``)."""

    source: str
    format: str
    output: str
    split_by: str  # "speaker" | "utterance"
    seed: int
    counts: dict[str, int]
    hours: dict[str, float]
    speakers: dict[str, int]
    dropped: list[BadRow] = field(default_factory=list)
    converted_script: int = 0
    resampled: int = 0
    punctuation: str = "kept"  # "kept" (transcripts had it, or --punctuate never) | "restored"
    punctuated: int = 0  # train and dev rows that got punctuation back
    punctuation_candidates: int = 0  # train and dev rows it was tried on
    punctuation_model: str = ""  # whose transcripts lent their marks

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["dropped"] = [row.to_dict() for row in self.dropped]
        return data

    def lines(self) -> list[str]:
        """The summary as printed: sizes, how it split, what it changed, every dropped row's reason."""
        total = sum(self.counts.values())
        sizes = ", ".join(f"{name} {self.counts[name]} ({self.hours[name] * 60:.1f} min)" for name in SPLITS)
        spk = f"{sum(self.speakers.values())} speakers" if self.split_by == "speaker" else "fewer than 3 speakers"
        out = [f"prepared {total} utterances from {self.source} ({self.format}) into {self.output}/",
               f"  {sizes}; split by {self.split_by} ({spk}), seed {self.seed}"]
        if self.converted_script:
            out.append(f"  Traditional characters converted in {self.converted_script} transcript(s)")
        if self.resampled:
            out.append(f"  {self.resampled} clip(s) written as 16 kHz mono FLAC under {self.output}/audio/")
        if self.punctuation == "restored":
            out.append(f"  punctuation restored in {self.punctuated} of {self.punctuation_candidates} train and "
                       "dev target(s) (the transcripts had almost none; marks from the "
                       f"'{self.punctuation_model}' model's transcripts of the audio); test targets kept as written")
        if self.dropped:
            out.append(f"  dropped {len(self.dropped)}: {count_kinds(self.dropped)} "
                       f"(all in {self.output}/dropped.jsonl)")
            out += [f"    {row.id}: {row.reason}" + (f" ({row.where})" if row.where else "")
                    for row in self.dropped[:SHOWN]]
            if len(self.dropped) > SHOWN:
                out.append(f"    ... and {len(self.dropped) - SHOWN} more")
        return out


def prepare(
    source: str | os.PathLike,
    output: str | os.PathLike,
    options: PrepareOptions | None = None,
    *,
    progress: bool = False,
    transcriber: Any = None,
) -> PrepareSummary:
    """Check, convert and split ``source`` into ``output``/{train,dev,test}.jsonl (see the module docstring).

    ``transcriber``: a ready :class:`~whisper_zh.transcriber.Transcriber` for restoring punctuation (one is
    loaded from ``options.punctuation_model`` when needed). Raises :class:`DataError` when no row is usable and
    :class:`UsageError` when ``output`` already holds prepared data and ``overwrite`` is off.
    """
    options = options or PrepareOptions()
    out = Path(output)
    _check_output(out, options.overwrite)
    data = load_source(source, options.format, split=options.split)
    dropped = list(data.problems)
    rows, counts = _check_rows(data, out, options, dropped, progress)
    if not rows:
        raise DataError(f"{source}: no usable utterance ({count_kinds(dropped) or 'the source is empty'})")
    split_by, splits = split_rows(rows, options.dev_fraction, options.test_fraction, options.seed)
    summary = PrepareSummary(
        str(source), data.format, str(out), split_by, options.seed,
        counts={name: len(splits[name]) for name in SPLITS},
        hours={name: sum(r.duration for r in splits[name]) / 3600 for name in SPLITS},
        speakers={name: len({r.speaker for r in splits[name] if r.speaker}) for name in SPLITS},
        dropped=dropped, converted_script=counts["converted"], resampled=counts["resampled"],
    )
    if _wants_punctuation(rows, options.punctuate):
        targets = splits["train"] + splits["dev"]
        summary.punctuated = restore_targets(targets, out, options.punctuation_model, transcriber, progress)
        summary.punctuation, summary.punctuation_candidates = "restored", len(targets)
        summary.punctuation_model = options.punctuation_model
    _write(out, splits, summary)
    return summary


def _check_output(out: Path, overwrite: bool) -> None:
    names = [f"{name}.jsonl" for name in SPLITS] + ["summary.json"]
    existing = [name for name in names if (out / name).exists()]
    if existing and not overwrite:
        raise UsageError(f"{out}: already holds prepared data ({', '.join(existing)}); "
                         "pass --overwrite to replace it, or choose another folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from exc


def _check_rows(data: Iterable[Utterance], out: Path, options: PrepareOptions, dropped: list[BadRow],
                progress: bool) -> tuple[list[Row], dict[str, int]]:
    """Every utterance decoded once, checked and converted; the ones that fail go to ``dropped``."""
    from tqdm import tqdm

    rows: list[Row] = []
    counts = {"converted": 0, "resampled": 0}
    seen: dict[str, str] = {}  # hash of the samples -> the first id that had them
    utterances = list(data)
    for utt in tqdm(utterances, desc="checking audio", unit="clip", file=sys.stderr, disable=not progress):
        text = normalize_whitespace(utt.text)
        target = chinese_punctuation(convert_script(text, options.script))
        where = utt.audio if isinstance(utt.audio, str) else ""
        if not remove_punctuation(target).strip():
            dropped.append(BadRow(utt.id, "transcript is empty without its punctuation", where, "empty_text"))
            continue
        try:
            audio = _decode(utt, options.max_seconds)
        except AudioError as exc:
            kind = "too_long" if isinstance(exc, AudioTooLongError) else (
                "silent_audio" if "silent" in str(exc) else "unreadable_audio")
            dropped.append(BadRow(utt.id, str(exc), where, kind))
            continue
        digest = hashlib.sha1(audio.tobytes()).hexdigest()
        if digest in seen:
            dropped.append(BadRow(utt.id, f"the same audio as {seen[digest]}", where, "duplicate_audio"))
            continue
        seen[digest] = utt.id
        path, written = _audio_path(utt, audio, out)
        counts["resampled"] += written
        counts["converted"] += convert_script(text, options.script) != text
        rows.append(Row(utt.id, path, target, len(audio) / SAMPLE_RATE, utt.speaker))
    return rows, counts


def _decode(utt: Utterance, max_seconds: float) -> np.ndarray:
    """The 16 kHz samples; AudioError when they do not decode, are silent or are longer than ``max_seconds``."""
    audio = load_audio(utt.audio, allow_silence=True, max_seconds=max_seconds)
    if len(audio) > max_seconds * SAMPLE_RATE:
        raise AudioTooLongError(str(utt.audio), max_seconds, len(audio) / SAMPLE_RATE)
    if float(np.max(np.abs(audio))) < SILENCE_PEAK:
        raise AudioError("audio is silent (peak below -80 dBFS)")
    return audio


def _audio_path(utt: Utterance, audio: np.ndarray, out: Path) -> tuple[str, bool]:
    """The file to train from: the input when it is already 16 kHz mono WAV or FLAC (absolute path), else a
    16 kHz mono FLAC written once under ``out/audio/`` (path relative to ``out``); True when it wrote one."""
    if isinstance(utt.audio, str):
        try:
            info = sf.info(utt.audio)
            if info.samplerate == SAMPLE_RATE and info.channels == 1 and info.format in ("WAV", "FLAC"):
                return str(Path(utt.audio).resolve()), False
        except (sf.LibsndfileError, RuntimeError, TypeError):
            pass  # not a file libsndfile reads (mp3, m4a, ...): converted below
    name = Path("audio") / (utt.id.replace("/", "__").replace(os.sep, "__") + ".flac")
    target = out / name
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp")
    sf.write(staging, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    os.replace(staging, target)
    return name.as_posix(), True


def split_rows(rows: Sequence[Row], dev_fraction: float, test_fraction: float,
               seed: int) -> tuple[str, dict[str, list[Row]]]:
    """("speaker" or "utterance", {split: rows}): whole speakers per split when there are at least
    :data:`MIN_SPEAKERS`, otherwise utterances drawn across the id order, a sentence read twice in one split. No
    row is in two splits."""
    from whisper_zh.data.splits import stratified_split

    n_dev, n_test = round(len(rows) * dev_fraction), round(len(rows) * test_fraction)
    speakers = sorted({r.speaker for r in rows if r.speaker})
    if len(speakers) >= MIN_SPEAKERS:
        return "speaker", _split_speakers(rows, n_dev, n_test, seed)
    chosen = stratified_split([r.id for r in rows], dev=n_dev, test=n_test, seed=seed)
    # one sentence read twice goes where its first reading went: the same words in train and test would flatter
    first: dict[str, str] = {}
    for row in sorted(rows, key=lambda r: r.id):
        first.setdefault(remove_punctuation(row.text), chosen.of(row.id))
    return "utterance", {name: [r for r in rows if first[remove_punctuation(r.text)] == name] for name in SPLITS}


def _split_speakers(rows: Sequence[Row], n_dev: int, n_test: int, seed: int) -> dict[str, list[Row]]:
    """Speakers in a seeded order fill test, then dev, up to their utterance quotas; the rest train. A row
    without a speaker counts as a speaker of its own."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.speaker or f"\0{row.id}", []).append(row)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    splits: dict[str, list[Row]] = {name: [] for name in SPLITS}
    for speaker in order:
        name = "test" if len(splits["test"]) < n_test else "dev" if len(splits["dev"]) < n_dev else "train"
        splits[name] += groups[speaker]
    if not splits["train"]:
        raise DataError(f"{len(groups)} speakers are too few to hold out {n_dev} + {n_test} utterances by speaker; "
                        "lower --dev-fraction or --test-fraction")
    return splits


def _wants_punctuation(rows: Sequence[Row], mode: str) -> bool:
    from whisper_zh.data.punctuation import is_mark

    if mode != "auto":
        return mode == "always"
    marked = sum(any(is_mark(c) for c in row.text) for row in rows)
    return marked < PUNCTUATED_SHARE * len(rows)


def restore_targets(rows: Sequence[Row], out: Path, model: str, transcriber: Any, progress: bool) -> int:
    """Put punctuation back into ``rows``' targets from the model's transcripts of their audio; returns how many
    targets changed. A clip the model cannot transcribe keeps its bare target."""
    from tqdm import tqdm

    from whisper_zh.data.punctuation import restore_punctuation

    if not rows:
        return 0
    if transcriber is None:
        from whisper_zh.transcriber import Transcriber

        transcriber = Transcriber(model)
    paths = [str(out / row.audio) if not os.path.isabs(row.audio) else row.audio for row in rows]
    changed = 0
    with tqdm(total=len(rows), desc="restoring punctuation", unit="clip", file=sys.stderr,
              disable=not progress) as bar:
        for index, result in transcriber.transcribe_iter(paths):
            bar.update(1)
            if isinstance(result, AudioError):
                continue
            punctuated = restore_punctuation(rows[index].text, result.text)
            changed += punctuated != rows[index].text
            rows[index].text = punctuated
    return changed


def _write(out: Path, splits: dict[str, list[Row]], summary: PrepareSummary) -> None:
    """The manifests, the dropped rows and the summary; each file whole or not at all."""
    for name in SPLITS:
        atomic_write_text(out / f"{name}.jsonl",
                          "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in splits[name]))
    atomic_write_text(out / "dropped.jsonl",
                      "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in summary.dropped))
    atomic_write_text(out / "summary.json", json.dumps(summary.to_dict(), ensure_ascii=False, indent=1) + "\n")

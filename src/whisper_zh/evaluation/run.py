"""Running a model over a data source: transcribe it (batched, with a progress bar), score it, build the
:class:`~whisper_zh.evaluation.report.Evaluation`; or score again the predictions an earlier run wrote."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whisper_zh.data import BadRow, DataSource, Utterance
from whisper_zh.errors import AudioError, DataError
from whisper_zh.evaluation.report import Evaluation, build_evaluation, jsonable
from whisper_zh.evaluation.scoring import Prediction, default_scorings, no_usable_rows, score_predictions
from whisper_zh.metrics import (
    DEFAULT_RESAMPLES,
)
from whisper_zh.normalize import TextNormalizer

if TYPE_CHECKING:
    from whisper_zh.decoding import DecodeOptions
    from whisper_zh.results import Transcription
    from whisper_zh.transcriber import Transcriber

def evaluate(
    transcriber: Transcriber,
    source: DataSource,
    options: DecodeOptions | None = None,
    *,
    scorings: dict[str, TextNormalizer] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    progress: bool = True,
    diagnostics: str = "plain",
) -> Evaluation:
    """Transcribe every utterance of ``source`` with ``transcriber`` and score the results.

    Unreadable audio, missing files and empty references are skipped and listed (never a crash, never silent).
    ``diagnostics`` names the scoring whose alignments feed the worst-utterance list and confusion pairs.
    """
    from whisper_zh.decoding import DecodeOptions

    options = options or DecodeOptions()
    scorings = scorings or default_scorings()
    utterances: list[Utterance] = list(source)  # for streamed sources this also fills source.problems
    if not utterances:
        raise DataError(f"{source.location}: {no_usable_rows(source.problems)}")
    bar = _progress_bar(utterances, progress)
    started = time.perf_counter()
    results: dict[int, Any] = {}
    for index, result in transcriber.transcribe_iter(
        [u.audio for u in utterances], options, on_progress=(lambda s: _advance(bar, s)) if bar is not None else None
    ):
        results[index] = result
        if bar is not None and isinstance(result, AudioError):
            _advance(bar, utterances[index].duration or 0.0)  # the bar's total counts it as 0 if unreadable
    wall = time.perf_counter() - started
    if bar is not None:
        bar.close()
    return evaluation_from_results(
        utterances,
        results,
        source,
        options,
        model=asdict(transcriber.info),  # the engine, storage and compute types that really ran
        wall_seconds=wall,
        scorings=scorings,
        n_resamples=n_resamples,
        seed=seed,
        diagnostics=diagnostics,
    )


def evaluation_from_results(
    utterances: Sequence[Utterance],
    results: Mapping[int, Transcription | AudioError],
    source: DataSource,
    options: DecodeOptions,
    *,
    model: dict[str, Any],
    wall_seconds: float,
    scorings: dict[str, TextNormalizer] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    diagnostics: str = "plain",
) -> Evaluation:
    """Score ``results`` (utterance index -> transcription or the AudioError of its input) into an evaluation:
    what :func:`evaluate` does once it has transcribed, for transcriptions made elsewhere (e.g. on Ray)."""
    predictions: list[Prediction] = []
    audio_seconds = 0.0
    for index, utt in enumerate(utterances):
        result = results.get(index)
        audio = utt.audio if isinstance(utt.audio, str) else "<array>"
        if isinstance(result, AudioError) or result is None:
            reason = f"unreadable audio: {result}" if result is not None else "not transcribed"
            predictions.append(Prediction(utt.id, utt.text, None, audio, utt.duration, utt.speaker, reason))
            continue
        audio_seconds += result.duration
        predictions.append(
            Prediction(utt.id, utt.text, result.text, audio, utt.duration or result.duration, utt.speaker)
        )
    scores = score_predictions(predictions, scorings, n_resamples=n_resamples, seed=seed, dropped=source.problems)
    timing = {
        "wall_seconds": round(wall_seconds, 3),
        "audio_seconds": round(audio_seconds, 3),
        "real_time_factor": round(wall_seconds / audio_seconds, 4) if audio_seconds else None,
    }
    return build_evaluation(
        scores,
        source,
        model=model,
        decoding=jsonable(asdict(options)),
        timing=timing,
        n_resamples=n_resamples,
        seed=seed,
        diagnostics=diagnostics,
        all_predictions=predictions,
    )


def _progress_bar(utterances: list[Utterance], enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(
        total=round(sum(_seconds(u) for u in utterances), 1),
        unit="s",
        unit_scale=True,
        desc=f"transcribing {len(utterances)} utterances",
        file=sys.stderr,
        dynamic_ncols=True,
    )


def _seconds(utterance: Utterance) -> float:
    """The utterance's duration, from the manifest or else from the audio (as `transcribe` sizes its bar);
    0 where the audio cannot be read (it is skipped and listed later)."""
    try:
        return utterance.measured_duration()
    except (AudioError, OSError):
        return 0.0


def _advance(bar: Any, seconds: float) -> None:
    """Move the bar on, never past its total (decoded durations can exceed the manifest's by a few ms)."""
    if bar.total is not None:
        seconds = min(seconds, bar.total - bar.n)
    bar.update(round(seconds, 2))


def rescore(
    path: str | Path,
    scorings: dict[str, TextNormalizer] | None = None,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    diagnostics: str = "plain",
) -> Evaluation:
    """Score an earlier run's predictions again (new normalisation, seed or diagnostics) without transcribing.

    ``path`` is the run's ``report.json``, its ``predictions.jsonl`` or the directory holding them. Model,
    decoding options and timing are carried over from the old report when there is one; ``rescored`` records
    when. Nothing is written here: :meth:`Evaluation.write` puts the result where the caller says.
    """
    old, predictions_path = _rescore_sources(Path(path))
    try:
        lines = predictions_path.read_text(encoding="utf-8")
        rows = [json.loads(line) for line in lines.splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{predictions_path}: cannot read the predictions ({exc})") from exc
    predictions: list[Prediction] = []
    problems: list[BadRow] = []
    for row in rows:
        if "reference" not in row:  # a row the loader could not use: no reference, nothing to score
            problems.append(
                BadRow(row["id"], row.get("skipped", "skipped"), row.get("audio", ""), row.get("kind", "malformed_row"))
            )
            continue
        error = row.get("skipped") if row.get("hypothesis") is None else None
        predictions.append(
            Prediction(
                row["id"],
                row["reference"],
                row.get("hypothesis"),
                row.get("audio", ""),
                row.get("duration"),
                row.get("speaker"),
                error,
            )
        )
    data = old.get("data", {})
    source = DataSource(data.get("location", str(predictions_path)), data.get("format", "?"), [], problems)
    scores = score_predictions(predictions, scorings, n_resamples=n_resamples, seed=seed, dropped=problems)
    evaluation = build_evaluation(
        scores,
        source,
        model=old.get("model"),
        decoding=old.get("decoding"),
        timing=old.get("timing"),
        n_resamples=n_resamples,
        seed=seed,
        diagnostics=diagnostics,
        all_predictions=predictions,
    )
    evaluation.report["created"] = old.get("created")
    evaluation.report["rescored"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    evaluation.report["rescored_from"] = str(predictions_path)
    return evaluation


def _rescore_sources(path: Path) -> tuple[dict[str, Any], Path]:
    """(the old report, or {} when there is none; the predictions file) for a report, predictions file or dir."""
    if path.is_dir():
        path = path / "report.json" if (path / "report.json").is_file() else path / "predictions.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: no such file (give a report.json, a predictions.jsonl or their directory)")
    if path.suffix == ".jsonl":
        report_path = path.parent / "report.json"
        old = _read_json(report_path) if report_path.is_file() else {}
        return old, path
    old = _read_json(path)
    if "metrics" not in old:
        raise DataError(f"{path}: not a whisper-zh evaluation report (no 'metrics')")
    return old, path.parent / old.get("predictions_file", "predictions.jsonl")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the report ({exc})") from exc
    if not isinstance(value, dict):
        raise DataError(f"{path}: not a whisper-zh evaluation report")
    return value

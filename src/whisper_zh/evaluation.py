"""Evaluation: transcribe a data source, score it honestly, write the report; compare two reports.

Flow: :class:`~whisper_zh.data.DataSource` -> :class:`~whisper_zh.transcriber.Transcriber` (batched) ->
hypotheses -> each scoring normaliser -> :mod:`whisper_zh.metrics` -> ``report.json``, ``report.md`` and
``predictions.jsonl`` (one row per utterance, skipped rows included with their reason).

Every utterance is scored under several normalisers ("scorings"): by default ``plain`` (the standard
:class:`~whisper_zh.normalize.TextNormalizer`) and ``numbers`` (the same plus cn2an number normalisation, so
二十九 and 29 match). CER is the headline metric, with a bootstrap confidence interval; MER, WER on jieba words
and the sentence error rate come beside it. :func:`score_predictions` scores hypotheses that came from elsewhere
(a training loop, another toolkit) the same way.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whisper_zh.data import BadRow, DataSource, Utterance, count_kinds
from whisper_zh.errors import AudioError, DataError, MetricError
from whisper_zh.files import atomic_write_text
from whisper_zh.metrics import (
    DEFAULT_RESAMPLES,
    Alignment,
    align,
    confusion_pairs,
    paired_bootstrap,
    rate_from_alignments,
    tokenize,
)
from whisper_zh.normalize import TextNormalizer

if TYPE_CHECKING:
    from whisper_zh.decoding import DecodeOptions
    from whisper_zh.results import Transcription
    from whisper_zh.transcriber import Transcriber

REPORT_VERSION = 1
WORST_COUNT = 20
CONFUSION_COUNT = 20
UNITS = {"cer": "char", "mer": "mixed", "wer": "word"}
METRIC_TITLES = {"cer": "CER", "mer": "MER (mixed)", "wer": "WER (jieba words)", "ser": "SER (sentences)"}


def default_scorings(numbers: str = "arabic", **steps: Any) -> dict[str, TextNormalizer]:
    """``plain`` and ``numbers`` normalisers; ``steps`` switch steps off for both (e.g. ``punctuation=False``)."""
    return {"plain": TextNormalizer(**steps), "numbers": TextNormalizer(numbers=numbers, **steps)}  # type: ignore[arg-type]


@dataclass
class Prediction:
    """One utterance's reference and hypothesis (``error`` set instead when it could not be transcribed)."""

    id: str
    reference: str
    hypothesis: str | None
    audio: str = ""
    duration: float | None = None
    speaker: str | None = None
    error: str | None = None


@dataclass
class Scores:
    """Corpus metrics per scoring, and the per-utterance alignments behind them."""

    scorings: dict[str, TextNormalizer]
    metrics: dict[str, dict[str, Any]]
    scored: list[Prediction]
    # scoring -> unit ("char", "mixed", "word") -> one alignment per scored prediction
    alignments: dict[str, dict[str, list[Alignment]]]
    normalized: dict[str, list[tuple[str, str]]]
    skipped: list[BadRow] = field(default_factory=list)


def score_predictions(
    predictions: Sequence[Prediction],
    scorings: dict[str, TextNormalizer] | None = None,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
    dropped: Sequence[BadRow] = (),
) -> Scores:
    """Score predictions under each normaliser: CER, MER, WER (jieba) with bootstrap CIs, and SER.

    Predictions with an ``error`` or whose reference is empty after normalisation are not scored; they are
    returned in ``Scores.skipped`` with the reason. Raises :class:`MetricError` when nothing is left to score,
    counting each reason on its own, ``dropped`` (rows the data loader could not use) included.
    """
    scorings = scorings or default_scorings()
    skipped: list[BadRow] = []
    scored: list[Prediction] = []
    for p in predictions:
        if p.error is not None or p.hypothesis is None:
            kind = "unreadable_audio" if p.error and p.error.startswith("unreadable audio") else "not_transcribed"
            skipped.append(BadRow(p.id, p.error or "no hypothesis", p.audio, kind))
        elif not p.reference.strip():
            skipped.append(BadRow(p.id, "empty reference text", p.audio, "empty_text"))
        elif empty := [name for name, norm in scorings.items() if not tokenize(norm(p.reference), "char")]:
            reason = f"reference empty after normalisation ({', '.join(empty)})"
            skipped.append(BadRow(p.id, reason, p.audio, "empty_after_normalisation"))
        else:
            scored.append(p)
    if not scored:
        raise MetricError(no_usable_rows([*dropped, *skipped]))
    metrics: dict[str, dict[str, Any]] = {}
    alignments: dict[str, dict[str, list[Alignment]]] = {}
    normalized: dict[str, list[tuple[str, str]]] = {}
    for name, normalizer in scorings.items():
        pairs = [(normalizer(p.reference), normalizer(p.hypothesis or "")) for p in scored]
        normalized[name] = pairs
        alignments[name] = {
            unit: [align(tokenize(r, unit), tokenize(h, unit)) for r, h in pairs]  # type: ignore[arg-type]
            for unit in UNITS.values()
        }
        metrics[name] = {
            metric: rate_from_alignments(
                alignments[name][unit], unit, n_resamples=n_resamples, confidence=confidence, seed=seed
            ).to_dict()
            for metric, unit in UNITS.items()
        }
        metrics[name]["wer"]["segmenter"] = "jieba"
        metrics[name]["ser"] = {
            "rate": sum(a.errors > 0 for a in alignments[name]["char"]) / len(scored),
            "utterances": len(scored),
        }
    return Scores(scorings, metrics, scored, alignments, normalized, skipped)


def no_usable_rows(bad: Sequence[BadRow]) -> str:
    """The one-line message for data in which nothing can be scored: each reason counted, the first row named."""
    if not bad:
        return "no utterance could be scored: the data holds no rows"
    first = bad[0]
    where = f"{first.where}: " if first.where else ""
    return (f"no utterance could be scored: all {len(bad)} row(s) are unusable ({count_kinds(list(bad))}); "
            f"the first: {where}{first.reason}")


def check_source(source: DataSource) -> None:
    """Raise :class:`DataError` now, before a model is loaded, when an indexed source has no usable utterance."""
    if not source.streamed and len(source) == 0:
        raise DataError(f"{source.location}: {no_usable_rows(source.problems)}")


# ---------------------------------------------------------------------------------------------------------------
# Running a model over a data source


@dataclass
class Evaluation:
    """Everything an evaluation run produced; :meth:`write` puts it on disk."""

    report: dict[str, Any]
    predictions: list[dict[str, Any]]

    def write(self, output_dir: str | Path) -> dict[str, Path]:
        """Write report.json, report.md and predictions.jsonl (each atomically) into ``output_dir``."""
        out = Path(output_dir)
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in self.predictions)
        return {
            "predictions": atomic_write_text(out / "predictions.jsonl", lines),
            "report": atomic_write_text(
                out / "report.json", json.dumps(self.report, ensure_ascii=False, indent=2) + "\n"
            ),
            "markdown": atomic_write_text(out / "report.md", render_markdown(self.report)),
        }


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
            _advance(bar, utterances[index].duration or 0.0)
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
        decoding=_jsonable(asdict(options)),
        timing=timing,
        n_resamples=n_resamples,
        seed=seed,
        diagnostics=diagnostics,
        all_predictions=predictions,
    )


def build_evaluation(
    scores: Scores,
    source: DataSource | None,
    *,
    model: dict[str, Any] | None = None,
    decoding: dict[str, Any] | None = None,
    timing: dict[str, Any] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    diagnostics: str = "plain",
    all_predictions: Sequence[Prediction] | None = None,
) -> Evaluation:
    """Assemble report.json's content and the predictions rows from :func:`score_predictions` output."""
    if diagnostics not in scores.scorings:
        diagnostics = next(iter(scores.scorings))
    bad = list(source.problems if source is not None else []) + scores.skipped
    total = len(scores.scored) + len(bad)
    char = scores.alignments[diagnostics]["char"]
    order = sorted(
        range(len(char)), key=lambda i: (-char[i].errors, -char[i].errors / max(char[i].ref_len, 1))
    )
    worst = [
        {
            "id": scores.scored[i].id,
            "errors": char[i].errors,
            "ref_len": char[i].ref_len,
            "cer": round(char[i].errors / max(char[i].ref_len, 1), 4),
            "diff": char[i].markup(),
        }
        for i in order[:WORST_COUNT]
        if char[i].errors > 0
    ]
    confusions = [
        {"ref": r, "hyp": h, "count": n} for (r, h), n in confusion_pairs(char).most_common(CONFUSION_COUNT)
    ]
    report = {
        "report_version": REPORT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model or {},
        "decoding": decoding or {},
        "data": {
            **(source.describe() if source is not None else {}),
            "utterances": total,
            "scored": len(scores.scored),
            "skipped": len(bad),
        },
        "normalisation": {name: norm.to_dict() for name, norm in scores.scorings.items()},
        "primary": {"metric": "cer", "scoring": "plain" if "plain" in scores.scorings else diagnostics},
        "metrics": scores.metrics,
        "bootstrap": {
            "n_resamples": n_resamples,
            "seed": seed,
            "confidence": 0.95,
            "resampled": "utterances",
        },
        "timing": timing or {},
        "versions": versions(),
        "diagnostics_scoring": diagnostics,
        "worst": worst,
        "confusions": confusions,
        "bad_rows": [b.to_dict() for b in bad],
        "predictions_file": "predictions.jsonl",
    }
    rows = _prediction_rows(scores, bad, all_predictions)
    return Evaluation(report, rows)


def _prediction_rows(
    scores: Scores, bad: list[BadRow], all_predictions: Sequence[Prediction] | None
) -> list[dict[str, Any]]:
    """One row per utterance, in data order: scored rows with per-scoring counts, skipped rows with the reason."""
    scored_rows: list[dict[str, Any]] = []
    for i, p in enumerate(scores.scored):
        row = {
            "id": p.id,
            "audio": p.audio,
            "speaker": p.speaker,
            "duration": p.duration,
            "reference": p.reference,
            "hypothesis": p.hypothesis,
            "scores": {},
        }
        for name in scores.scorings:
            a = scores.alignments[name]["char"][i]
            ref, hyp = scores.normalized[name][i]
            row["scores"][name] = {
                "ref": ref,
                "hyp": hyp,
                "substitutions": a.substitutions,
                "deletions": a.deletions,
                "insertions": a.insertions,
                "ref_len": a.ref_len,
                "errors": a.errors,
            }
        scored_rows.append(row)
    if all_predictions is None:
        return scored_rows + [{"id": b.id, "audio": b.where, "skipped": b.reason, "kind": b.kind} for b in bad]
    # score_predictions keeps the predictions' order in both `scored` and `skipped`: merge them back in order.
    rows: list[dict[str, Any]] = []
    scored_ids = [id(p) for p in scores.scored]
    skipped = iter(scores.skipped)
    position = 0
    for p in all_predictions:
        if position < len(scored_ids) and id(p) == scored_ids[position]:
            rows.append(scored_rows[position])
            position += 1
        else:
            bad_row = next(skipped)
            rows.append(
                {
                    "id": p.id,
                    "audio": p.audio,
                    "reference": p.reference,
                    "hypothesis": p.hypothesis,
                    "skipped": bad_row.reason,
                    "kind": bad_row.kind,
                }
            )
    loader_problems = bad[: len(bad) - len(scores.skipped)]
    rows.extend({"id": b.id, "audio": b.where, "skipped": b.reason, "kind": b.kind} for b in loader_problems)
    return rows


def _progress_bar(utterances: list[Utterance], enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    known = [u.duration for u in utterances if u.duration is not None]
    total = round(sum(known), 1) if len(known) == len(utterances) else None
    return tqdm(
        total=total,
        unit="s",
        unit_scale=True,
        desc=f"transcribing {len(utterances)} utterances",
        file=sys.stderr,
        dynamic_ncols=True,
    )


def _advance(bar: Any, seconds: float) -> None:
    """Move the bar on, never past its total (decoded durations can exceed the manifest's by a few ms)."""
    if bar.total is not None:
        seconds = min(seconds, bar.total - bar.n)
    bar.update(round(seconds, 2))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def versions() -> dict[str, str]:
    """Versions of Python, whisper-zh and the libraries that shape the numbers."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for package in (
        "whisper-zh",
        "faster-whisper",
        "ctranslate2",
        "jiwer",
        "opencc",
        "cn2an",
        "jieba",
        "numpy",
    ):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return out


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


# ---------------------------------------------------------------------------------------------------------------
# report.md


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def metrics_table(report: dict[str, Any]) -> str:
    """The headline table (Markdown): every metric under every scoring, with CIs and S/D/I/N."""
    lines = [
        "| metric | scoring | % | 95% CI | S | D | I | N (ref tokens) |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for metric in ("cer", "mer", "wer", "ser"):
        for name, values in report["metrics"].items():
            m = values[metric]
            numbers = [s for s in report["normalisation"][name]["steps"] if s.startswith("numbers")]
            label = f"{name} ({numbers[0]})" if numbers else name
            if metric == "ser":
                lines.append(
                    f"| {METRIC_TITLES[metric]} | {label} | {_pct(m['rate'])} | | | | | {m['utterances']} utts |"
                )
                continue
            ci = f"{_pct(m['ci_low'])} – {_pct(m['ci_high'])}" if m.get("ci_low") is not None else ""
            lines.append(
                f"| {METRIC_TITLES[metric]} | {label} | {_pct(m['rate'])} | {ci} | {m['substitutions']} | "
                f"{m['deletions']} | {m['insertions']} | {m['ref_len']} |"
            )
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: summary, metrics table, worst utterances with aligned diffs, confusions, skipped rows."""
    model, data, timing = report.get("model", {}), report.get("data", {}), report.get("timing", {})
    out = [f"# Evaluation: {model.get('name', '?')} on {data.get('location', '?')}", ""]
    summary = [
        f"- Utterances: {data.get('scored')} scored of {data.get('utterances')}"
        f" ({data.get('skipped')} skipped, listed below)",
    ]
    if timing.get("audio_seconds"):
        summary.append(
            f"- Audio {timing['audio_seconds'] / 60:.1f} min, wall {timing['wall_seconds']:.1f} s, "
            f"real-time factor {timing['real_time_factor']:.3f}"
            f" ({model.get('device')}, {model.get('compute_type')})"
        )
    decoding = report.get("decoding", {})
    if decoding:
        summary.append(
            f"- Decoding: language {decoding.get('language')}, beam {decoding.get('beam_size')}, "
            f"batch {decoding.get('batch_size')}, prompt {decoding.get('initial_prompt')!r}"
        )
    for name, norm in report["normalisation"].items():
        summary.append(f"- Scoring `{name}`: {' → '.join(norm['steps']) or 'no normalisation'}")
    boot = report.get("bootstrap", {})
    summary.append(
        f"- 95% CIs: percentile bootstrap over utterances, {boot.get('n_resamples')} resamples (seed {boot.get('seed')})"
    )
    out += summary + ["", "## Metrics", "", metrics_table(report), ""]
    diag = report.get("diagnostics_scoring", "plain")
    out += [
        f"## {len(report['worst'])} worst utterances (character errors, scoring `{diag}`)",
        "",
        "Diff: `[ref→hyp]` substitution, `[-ref]` deletion, `[+hyp]` insertion.",
        "",
        "| id | errors / chars | CER % | aligned diff |",
        "|---|---:|---:|---|",
    ]
    out += [
        f"| {_cell(w['id'])} | {w['errors']} / {w['ref_len']} | {100 * w['cer']:.1f} | {_cell(w['diff'])} |"
        for w in report["worst"]
    ]
    out += [
        "",
        f"## Most frequent confusions (scoring `{diag}`)",
        "",
        "| reference | hypothesis | count |",
        "|---|---|---:|",
    ]
    out += [
        f"| {_cell(c['ref']) or '∅'} | {_cell(c['hyp']) or '∅'} | {c['count']} |"
        for c in report["confusions"]
    ]
    out += ["", f"## Skipped rows ({len(report['bad_rows'])})", ""]
    if report["bad_rows"]:
        out += ["| id | reason | where |", "|---|---|---|"]
        out += [
            f"| {_cell(b['id'])} | {_cell(b['reason'])} | {_cell(b['where'])} |" for b in report["bad_rows"]
        ]
    else:
        out.append("None.")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Comparing two reports


@dataclass
class Comparison:
    """B against A on the utterances both scored: per scoring, a paired bootstrap on CER; other metrics' deltas."""

    a: str
    b: str
    utterances: int
    only_a: int
    only_b: int
    cer: dict[str, dict[str, Any]]
    deltas: dict[str, dict[str, float]]
    warnings: list[str]


def compare_reports(
    path_a: str | Path, path_b: str | Path, *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> Comparison:
    """Compare two evaluation reports (B minus A) with a paired bootstrap over their shared utterances.

    Reads each report.json and the predictions.jsonl beside it. Raises :class:`DataError` for unreadable reports
    or when the two share no utterance with the same reference.
    """
    report_a, rows_a, duplicates_a = _load_report(path_a)
    report_b, rows_b, duplicates_b = _load_report(path_b)
    warnings: list[str] = []
    if report_a.get("normalisation") != report_b.get("normalisation"):
        warnings.append("the reports used different normalisation settings")
    for label, count in (("A", duplicates_a), ("B", duplicates_b)):
        if count:
            warnings.append(
                f"report {label} has {count} duplicate utterance ids; the last row of each is used"
            )
    shared = [uid for uid in rows_a if uid in rows_b]
    mismatched = [uid for uid in shared if rows_a[uid]["reference"] != rows_b[uid]["reference"]]
    if mismatched:
        warnings.append(f"{len(mismatched)} shared ids have different references; they are left out")
    shared = [uid for uid in shared if uid not in set(mismatched)]
    if not shared:
        raise DataError(f"{path_a} and {path_b} share no scored utterance: they are not the same test set")
    cer: dict[str, dict[str, Any]] = {}
    for name in report_a["metrics"]:
        if name not in report_b["metrics"]:
            continue
        sa = [rows_a[uid]["scores"][name] for uid in shared]
        sb = [rows_b[uid]["scores"][name] for uid in shared]
        if any(x["ref_len"] != y["ref_len"] for x, y in zip(sa, sb, strict=True)):
            warnings.append(f"scoring '{name}': reference lengths differ between the reports")
        result = paired_bootstrap(
            [x["errors"] for x in sa],
            [y["errors"] for y in sb],
            [x["ref_len"] for x in sa],
            n_resamples=n_resamples,
            seed=seed,
        )
        cer[name] = result.to_dict()
    deltas = {
        name: {
            metric: report_b["metrics"][name][metric]["rate"] - report_a["metrics"][name][metric]["rate"]
            for metric in ("cer", "mer", "wer", "ser")
        }
        for name in cer
    }
    return Comparison(
        str(path_a),
        str(path_b),
        len(shared),
        len(rows_a) - len(shared),
        len(rows_b) - len(shared),
        cer,
        deltas,
        warnings,
    )


def _load_report(path: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]], int]:
    """(report, scored rows by id, number of duplicate ids)."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        predictions = path.parent / report.get("predictions_file", "predictions.jsonl")
        rows = [
            json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the report or its predictions ({exc})") from exc
    if "metrics" not in report:
        raise DataError(f"{path}: not a whisper-zh evaluation report (no 'metrics')")
    scored = [row for row in rows if "scores" in row]
    by_id = {row["id"]: row for row in scored}
    return report, by_id, len(scored) - len(by_id)


def format_comparison(c: Comparison) -> str:
    """A plain-text table of a :class:`Comparison`."""
    lines = [
        f"A: {c.a}",
        f"B: {c.b}",
        f"paired on {c.utterances} utterances"
        + (f" (only in A: {c.only_a}, only in B: {c.only_b})" if c.only_a or c.only_b else ""),
        "",
        f"{'scoring':<10} {'CER A %':>8} {'CER B %':>8} {'B-A pts':>8} {'95% CI of B-A':>18} {'p':>7}  verdict",
    ]
    for name, r in c.cer.items():
        significant = r["ci_high"] < 0 or r["ci_low"] > 0
        verdict = (
            ("B better" if r["delta"] < 0 else "B worse") if significant else "no significant difference"
        )
        ci = f"[{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}]"
        lines.append(
            f"{name:<10} {100 * r['rate_a']:>8.2f} {100 * r['rate_b']:>8.2f} {100 * r['delta']:>+8.2f} "
            f"{ci:>18} {r['p_value']:>7.4f}  {verdict}"
        )
    lines.append("")
    lines.append("other metrics, B-A in points (on each report's own utterances):")
    for name, d in c.deltas.items():
        lines.append(f"  {name:<10} " + "  ".join(f"{m.upper()} {100 * v:+.2f}" for m, v in d.items()))
    if c.cer:
        any_r = next(iter(c.cer.values()))
        lines.append(f"paired bootstrap: {any_r['n_resamples']} resamples of utterances; p is two-sided")
    lines += [f"warning: {w}" for w in c.warnings]
    return "\n".join(lines)


def summary_line(report: dict[str, Any]) -> str:
    """One line: CER with CI under each scoring, plus RTF."""
    parts = []
    for name, m in report["metrics"].items():
        cer = m["cer"]
        ci = f" [{_pct(cer['ci_low'])}, {_pct(cer['ci_high'])}]" if cer.get("ci_low") is not None else ""
        parts.append(f"CER {name} {_pct(cer['rate'])}%{ci}")
    rtf = report.get("timing", {}).get("real_time_factor")
    return "; ".join(parts) + (f"; RTF {rtf:.3f}" if rtf else "")

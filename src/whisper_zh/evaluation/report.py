"""The report of one evaluation: ``report.json`` (built from the scores), ``predictions.jsonl`` (one row per
utterance, skipped rows with their reason), ``report.md`` (summary, metrics table, worst utterances with aligned
diffs, confusions, skipped rows) and the one-line summary the CLI prints."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whisper_zh.data import BadRow, DataSource
from whisper_zh.evaluation.scoring import METRIC_TITLES, Prediction, Scores
from whisper_zh.files import atomic_write_text
from whisper_zh.metrics import (
    DEFAULT_RESAMPLES,
    confusion_pairs,
)

if TYPE_CHECKING:
    pass

REPORT_VERSION = 1
WORST_COUNT = 20
CONFUSION_COUNT = 20


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


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
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
            f" ({model.get('device') or 'device not recorded'}, {model.get('compute_type')})"
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


def summary_line(report: dict[str, Any]) -> str:
    """One line: CER with CI under each scoring, plus RTF."""
    parts = []
    for name, m in report["metrics"].items():
        cer = m["cer"]
        ci = f" [{_pct(cer['ci_low'])}, {_pct(cer['ci_high'])}]" if cer.get("ci_low") is not None else ""
        parts.append(f"CER {name} {_pct(cer['rate'])}%{ci}")
    rtf = report.get("timing", {}).get("real_time_factor")
    return "; ".join(parts) + (f"; RTF {rtf:.3f}" if rtf else "")

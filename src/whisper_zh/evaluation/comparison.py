"""Comparing two reports: B against A on the utterances both scored, a paired bootstrap on CER per scoring and the
other metrics' deltas."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whisper_zh.errors import DataError
from whisper_zh.metrics import (
    DEFAULT_RESAMPLES,
    paired_bootstrap,
)

if TYPE_CHECKING:
    pass


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

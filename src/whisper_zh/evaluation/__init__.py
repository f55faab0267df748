"""Evaluation: transcribe a data source, score it honestly, write the report; compare two reports.

Flow: :class:`~whisper_zh.data.DataSource` -> :class:`~whisper_zh.transcriber.Transcriber` (batched) ->
hypotheses -> each scoring normaliser -> :mod:`whisper_zh.metrics` -> ``report.json``, ``report.md`` and
``predictions.jsonl`` (one row per utterance, skipped rows included with their reason).

Every utterance is scored under several normalisers ("scorings"): by default ``plain`` (the standard
:class:`~whisper_zh.normalize.TextNormalizer`) and ``numbers`` (the same plus cn2an number normalisation, so
二十九 and 29 match). CER is the headline metric, with a bootstrap confidence interval; MER, WER on jieba words
and the sentence error rate come beside it. :func:`score_predictions` scores hypotheses that came from elsewhere
(a training loop, another toolkit) the same way.

Modules: :mod:`~whisper_zh.evaluation.scoring` (scores and intervals), :mod:`~whisper_zh.evaluation.report`
(report.json, predictions.jsonl, report.md), :mod:`~whisper_zh.evaluation.run` (a model over a data source, and
rescoring), :mod:`~whisper_zh.evaluation.comparison` (two reports, paired). Import from here.
"""

from whisper_zh.evaluation.comparison import Comparison, compare_reports, format_comparison
from whisper_zh.evaluation.report import (
    CONFUSION_COUNT,
    REPORT_VERSION,
    WORST_COUNT,
    Evaluation,
    build_evaluation,
    metrics_table,
    render_markdown,
    summary_line,
    versions,
)
from whisper_zh.evaluation.run import evaluate, evaluation_from_results, rescore
from whisper_zh.evaluation.scoring import (
    METRIC_TITLES,
    UNITS,
    Prediction,
    Scores,
    check_source,
    default_scorings,
    no_usable_rows,
    score_predictions,
)

__all__ = [
    "CONFUSION_COUNT",
    "METRIC_TITLES",
    "REPORT_VERSION",
    "UNITS",
    "WORST_COUNT",
    "Comparison",
    "Evaluation",
    "Prediction",
    "Scores",
    "build_evaluation",
    "check_source",
    "compare_reports",
    "default_scorings",
    "evaluate",
    "evaluation_from_results",
    "format_comparison",
    "metrics_table",
    "no_usable_rows",
    "render_markdown",
    "rescore",
    "score_predictions",
    "summary_line",
    "versions",
]

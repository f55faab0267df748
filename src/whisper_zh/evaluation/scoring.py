"""Scoring: hypotheses against references under each normaliser ("scoring"), CER first with a bootstrap interval;
MER, WER on jieba words and the sentence error rate beside it. :func:`score_predictions` scores hypotheses from
anywhere (a training loop, another toolkit) the same way :func:`~whisper_zh.evaluation.evaluate` does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from whisper_zh.data import BadRow, DataSource, count_kinds
from whisper_zh.errors import DataError, MetricError
from whisper_zh.metrics import (
    DEFAULT_RESAMPLES,
    Alignment,
    align,
    rate_from_alignments,
    tokenize,
)
from whisper_zh.normalize import TextNormalizer

if TYPE_CHECKING:
    pass

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

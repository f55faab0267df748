"""Scoring a model under training the way users will run it: one decoding path, one scorer.

Checkpoints are chosen by what ``whisper-zh evaluate --model OUT`` will report for them, not by a decoder users
never run. For each evaluation the weights in memory (LoRA merged into a copy) are

1. saved in Transformers layout and converted to CTranslate2 with float16 storage, exactly as
   :func:`whisper_zh.convert.ensure_ctranslate2` converts an exported model (the embedded base is stored the
   same way, so identical weights give identical bytes and quantise identically at load);
2. loaded by :class:`~whisper_zh.transcriber.Transcriber` (int8 compute on a CPU by default) and run over the
   eval set by :func:`whisper_zh.evaluation.evaluate` with the product's :class:`~whisper_zh.decoding.DecodeOptions`
   (packing, beam 5, the Mandarin prompt, temperature fallback);
3. scored by :func:`whisper_zh.evaluation.score_predictions` under the same normalisers as ``evaluate``.

The selection metric is the number-normalised CER (二十九 and 29 match: number style is not accuracy); the plain
CER is logged beside it. ``engine: transformers`` decodes the in-memory model with the Transformers engine
instead (no conversion, no packing; faster to set up, further from the product).
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from whisper_zh.data.punctuation import punctuation_rates
from whisper_zh.decoding import DecodeOptions

# The scoring that picks checkpoints, and the one logged beside it (names of evaluation.default_scorings()).
SELECTION_SCORING = "numbers"
OTHER_SCORING = "plain"


@dataclass(frozen=True)
class EvalResult:
    """One evaluation of the model being trained, through the product path."""

    cer: float  # number-normalised CER: the selection metric
    cer_ci: tuple[float | None, float | None]
    cer_plain: float
    wer_segmented: float
    wer_unsegmented: float | None  # the naive whitespace WER a new user computes (diagnostics explain it)
    utterances: int
    punctuation_final: float  # share of hypotheses ending in sentence-final punctuation
    punctuation_per_100: float  # marks per 100 characters
    engine: str
    storage_type: str
    compute_type: str
    seconds: float
    eval_loss: float | None = None
    examples: list[dict[str, str]] = field(default_factory=list)

    def to_row(self) -> dict[str, Any]:
        """The eval row of train_log.jsonl (examples left out)."""
        row = asdict(self)
        row.pop("examples")
        row["cer_ci"] = list(self.cer_ci)
        row["eval_utterances"] = row.pop("utterances")
        return row


def decode_options(language: str, task: str, script: str, *, beam_size: int | None = None,
                   max_new_tokens: int | None = None, fallback: bool = True) -> DecodeOptions:
    """The product's decoding options (``DecodeOptions()``, as ``whisper-zh transcribe`` starts from) for the
    run's language, task and script; ``beam_size``, ``max_new_tokens`` and no ``fallback`` only where a config
    asks (quick checks on tiny random models, whose every window would otherwise go through the fallback)."""
    changes: dict[str, Any] = {"language": language, "task": task, "script": script}
    if beam_size is not None:
        changes["beam_size"] = beam_size
    if max_new_tokens is not None:
        changes["max_new_tokens"] = max_new_tokens
    if not fallback:
        changes["temperature"] = (0.0,)
    return DecodeOptions().with_(**changes)


class ProductEvaluator:
    """Evaluates in-memory Whisper weights on one data source through the product's decoder and scorer."""

    def __init__(self, source: str, processor: Any, options: DecodeOptions, *, engine: str = "ctranslate2",
                 limit: int | None = None, compute_type: str = "int8", n_resamples: int = 200) -> None:
        self.source_spec = source
        self.processor = processor
        self.options = options
        self.engine = engine
        self.limit = limit
        self.compute_type = compute_type
        self.n_resamples = n_resamples

    def __call__(self, model: Any) -> EvalResult:
        from whisper_zh.data import load_source
        from whisper_zh.evaluation import evaluate

        started = time.perf_counter()
        source = load_source(self.source_spec, limit=self.limit)
        with tempfile.TemporaryDirectory(prefix="whisper-zh-eval-") as tmp:
            transcriber = self._transcriber(model, Path(tmp))
            report = evaluate(transcriber, source, self.options, n_resamples=self.n_resamples, progress=False)
        return _result(report, time.perf_counter() - started)

    def _transcriber(self, model: Any, tmp: Path) -> Any:
        from whisper_zh.transcriber import Transcriber

        if self.engine == "transformers":
            from whisper_zh.engines.transformers import TransformersDecoder

            return Transcriber("<in memory>", decoder=TransformersDecoder(model, self.processor))
        ct2 = export_ctranslate2(model, self.processor, tmp)
        return Transcriber(str(ct2), compute_type=self.compute_type)


def export_ctranslate2(model: Any, processor: Any, workdir: Path) -> Path:
    """Save ``model`` (a merged copy if it carries LoRA adapters) and convert it as ``ensure_ctranslate2``
    converts an exported model: float16 storage. Returns the CTranslate2 directory under ``workdir``."""
    from whisper_zh.convert import transformers_to_ct2_dir
    from whisper_zh.hf import save_processor

    plain = copy.deepcopy(model).merge_and_unload() if hasattr(model, "merge_and_unload") else model
    hf_dir = workdir / "transformers"
    spec_augment = plain.config.apply_spec_augment
    plain.config.apply_spec_augment = False  # as export_best writes it
    try:
        plain.save_pretrained(str(hf_dir))
    finally:
        plain.config.apply_spec_augment = spec_augment
    save_processor(processor, hf_dir)
    return transformers_to_ct2_dir(hf_dir, workdir / "ctranslate2", quantization="float16")


def _result(evaluation: Any, seconds: float) -> EvalResult:
    report, rows = evaluation.report, evaluation.predictions
    chosen, other = report["metrics"][SELECTION_SCORING], report["metrics"][OTHER_SCORING]
    scored = [row for row in rows if "scores" in row]
    hypotheses = [row["hypothesis"] for row in scored]
    rates = punctuation_rates(hypotheses)
    model = report["model"]
    return EvalResult(
        cer=chosen["cer"]["rate"],
        cer_ci=(chosen["cer"].get("ci_low"), chosen["cer"].get("ci_high")),
        cer_plain=other["cer"]["rate"],
        wer_segmented=chosen["wer"]["rate"],
        wer_unsegmented=_unsegmented_wer(scored),
        utterances=report["data"]["scored"],
        punctuation_final=rates.sentence_final,
        punctuation_per_100=rates.per_100_chars,
        engine=model.get("engine", "?"),
        storage_type=model.get("storage_type", "?"),
        compute_type=model.get("compute_type", "?"),
        seconds=round(seconds, 2),
        examples=[{"id": r["id"], "ref": r["reference"], "hyp": r["hypothesis"]} for r in scored[:5]],
    )


def _unsegmented_wer(rows: list[dict[str, Any]]) -> float | None:
    """jiwer.wer on normalised, unsegmented text: whole sentences as words (the trap diagnostics explain)."""
    import jiwer

    pairs = [(row["scores"][OTHER_SCORING]["ref"], row["scores"][OTHER_SCORING]["hyp"] or "-") for row in rows]
    if not pairs or not all(ref for ref, _ in pairs):
        return None
    return float(jiwer.wer([ref for ref, _ in pairs], [hyp for _, hyp in pairs]))

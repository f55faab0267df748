"""Error metrics for Chinese speech recognition: CER (primary), MER, WER on segmented words, sentence error rate,
bootstrap confidence intervals and paired-bootstrap comparison.

Why this module exists: Chinese is written without spaces, so a word error rate computed the usual way (split on
whitespace) counts each whole sentence as one "word" and any mistake scores 100 %. Here every metric names its unit:

* ``char``  every non-whitespace character is a token (CER). The primary metric for Chinese.
* ``mixed`` each CJK character is a token and each run of other non-space characters (an English word, a number)
  is a token (MER, the "mixed error rate" for code-switched Chinese/English; not jiwer's *match* error rate).
* ``word``  words from a segmenter: ``"jieba"`` (default) or ``"whitespace"`` for text that is already segmented.
  :func:`wer` refuses unsegmented CJK text with a :class:`~whisper_zh.errors.MetricError`.

jiwer does the Levenshtein alignment; this module only chooses the tokens. Functions take raw strings and an
optional :class:`~whisper_zh.normalize.TextNormalizer`; pass one (``TextNormalizer()``) to score honestly.
Corpus rates are micro-averaged: total errors over total reference tokens.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import jiwer
import numpy as np

from whisper_zh.errors import MetricError
from whisper_zh.normalize import CJK_RANGES, TextNormalizer
from whisper_zh.wordseg import segment_words

Unit = Literal["char", "mixed", "word"]
Segmenter = Literal["jieba", "whitespace"]

# Mean characters per whitespace-separated CJK token above which text counts as unsegmented. Segmented Chinese
# averages 1.5-2 characters per word (jieba on news text); an unsegmented sentence is one 10-20 character "word".
MAX_SEGMENTED_WORD_LENGTH = 3.0
DEFAULT_RESAMPLES = 1000

_MIXED_TOKEN = re.compile(f"[{CJK_RANGES}]|[^\\s{CJK_RANGES}]+")
_CJK_TOKEN = re.compile(f"[{CJK_RANGES}]")


# ---------------------------------------------------------------------------------------------------------------
# Tokenisation


def tokenize(text: str, unit: Unit, segmenter: Segmenter = "jieba") -> list[str]:
    """Tokens of ``text`` for ``unit`` (see the module docstring)."""
    if unit == "char":
        return [char for char in text if not char.isspace()]
    if unit == "mixed":
        return _MIXED_TOKEN.findall(text)
    if unit == "word":
        if segmenter == "jieba":
            return segment_words(text)
        if segmenter == "whitespace":
            return text.split()
        raise ValueError(f"unknown segmenter '{segmenter}': use jieba or whitespace")
    raise ValueError(f"unknown unit '{unit}': use char, mixed or word")


def check_segmented(texts: Iterable[str]) -> None:
    """Raise :class:`MetricError` when CJK text looks unsegmented (a WER on it would be meaningless).

    The test: over all whitespace-separated tokens that contain CJK characters, the mean length must not exceed
    :data:`MAX_SEGMENTED_WORD_LENGTH` characters.
    """
    lengths = [len(token) for text in texts for token in text.split() if _CJK_TOKEN.search(token)]
    if lengths and sum(lengths) / len(lengths) > MAX_SEGMENTED_WORD_LENGTH:
        mean = sum(lengths) / len(lengths)
        raise MetricError(
            f"refusing WER on unsegmented Chinese (CJK 'words' average {mean:.1f} characters): split on "
            "whitespace, each sentence is one word and any mistake scores 100%. Use CER (metrics.cer), "
            "or WER with segmenter='jieba'."
        )


# ---------------------------------------------------------------------------------------------------------------
# Alignment of one pair

Op = Literal["equal", "substitute", "delete", "insert"]


@dataclass(frozen=True)
class Alignment:
    """A reference/hypothesis token alignment with its edit counts."""

    ref: list[str]
    hyp: list[str]
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    # (op, ref_start, ref_end, hyp_start, hyp_end), as jiwer's AlignmentChunk.
    chunks: list[tuple[Op, int, int, int, int]] = field(repr=False)

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def ref_len(self) -> int:
        return len(self.ref)

    def pairs(self) -> list[tuple[Op, str, str]]:
        """Token-level operations: (op, ref_token, hyp_token), '' where one side has no token."""
        out: list[tuple[Op, str, str]] = []
        for op, r0, r1, h0, h1 in self.chunks:
            if op in ("equal", "substitute"):
                out.extend((op, self.ref[r0 + k], self.hyp[h0 + k]) for k in range(r1 - r0))
            elif op == "delete":
                out.extend((op, token, "") for token in self.ref[r0:r1])
            else:
                out.extend((op, "", token) for token in self.hyp[h0:h1])
        return out

    def markup(self, spaced: bool = False) -> str:
        """A one-line diff: ``设定二十[九→八]度``; ``[-x]`` deleted, ``[+x]`` inserted, ``[a→b]`` substituted.

        ``spaced`` puts a space between two Latin/number tokens (for word and mixed units; characters join
        without one).
        """
        join = _join if spaced else "".join
        parts = []
        for op, r0, r1, h0, h1 in self.chunks:
            ref, hyp = join(self.ref[r0:r1]), join(self.hyp[h0:h1])
            if op == "equal":
                parts.append(ref)
            elif op == "substitute":
                parts.append(f"[{ref}→{hyp}]")
            elif op == "delete":
                parts.append(f"[-{ref}]")
            else:
                parts.append(f"[+{hyp}]")
        return join(parts)


def _join(tokens: Sequence[str]) -> str:
    """Join tokens without spaces, except between two Latin/number tokens."""
    out = ""
    for token in tokens:
        if out and token and _latin_edge(out[-1]) and _latin_edge(token[0]):
            out += " "
        out += token
    return out


def _latin_edge(char: str) -> bool:
    return char.isascii() and char.isalnum()


def align(ref: Sequence[str], hyp: Sequence[str]) -> Alignment:
    """Align two token lists with jiwer (minimum edit distance) and count S, D, I and hits."""
    ref, hyp = list(ref), list(hyp)
    if not ref or not hyp:  # jiwer's transforms need at least one token per side
        chunks: list[tuple[Op, int, int, int, int]] = []
        if ref:
            chunks.append(("delete", 0, len(ref), 0, 0))
        if hyp:
            chunks.append(("insert", 0, 0, 0, len(hyp)))
        return Alignment(ref, hyp, 0, len(ref), len(hyp), 0, chunks)
    # Tokens never contain whitespace, so joining with spaces and splitting again (jiwer's default) is exact.
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    chunks = [
        (c.type, c.ref_start_idx, c.ref_end_idx, c.hyp_start_idx, c.hyp_end_idx) for c in out.alignments[0]
    ]
    return Alignment(ref, hyp, out.substitutions, out.deletions, out.insertions, out.hits, chunks)


def align_texts(
    ref: str,
    hyp: str,
    unit: Unit = "char",
    *,
    normalizer: TextNormalizer | None = None,
    segmenter: Segmenter = "jieba",
) -> Alignment:
    """Normalise (when a normaliser is given), tokenise and align one reference/hypothesis pair."""
    if normalizer is not None:
        ref, hyp = normalizer(ref), normalizer(hyp)
    return align(tokenize(ref, unit, segmenter), tokenize(hyp, unit, segmenter))


# ---------------------------------------------------------------------------------------------------------------
# Corpus rates


@dataclass(frozen=True)
class ErrorRate:
    """A corpus-level error rate (a fraction; multiply by 100 for %), its counts and, when computed, its CI."""

    unit: str
    rate: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    ref_len: int
    utterances: int
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float | None = None

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rate_from_alignments(
    alignments: Sequence[Alignment],
    unit: str,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> ErrorRate:
    """Micro-averaged rate over ``alignments`` with a bootstrap CI (``n_resamples=0`` skips the CI)."""
    if not alignments:
        raise MetricError("no utterances to score")
    errors = np.array([a.errors for a in alignments], dtype=np.int64)
    lengths = np.array([a.ref_len for a in alignments], dtype=np.int64)
    if lengths.sum() == 0:
        raise MetricError("every reference is empty after normalisation: an error rate is undefined")
    low = high = None
    if n_resamples > 0:
        low, high = bootstrap_ci(errors, lengths, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return ErrorRate(
        unit=unit,
        rate=float(errors.sum() / lengths.sum()),
        substitutions=sum(a.substitutions for a in alignments),
        deletions=sum(a.deletions for a in alignments),
        insertions=sum(a.insertions for a in alignments),
        hits=sum(a.hits for a in alignments),
        ref_len=int(lengths.sum()),
        utterances=len(alignments),
        ci_low=low,
        ci_high=high,
        confidence=confidence if n_resamples > 0 else None,
    )


def error_rate(
    refs: Sequence[str],
    hyps: Sequence[str],
    unit: Unit,
    *,
    normalizer: TextNormalizer | None = None,
    segmenter: Segmenter = "jieba",
    n_resamples: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
) -> ErrorRate:
    """Corpus error rate of ``hyps`` against ``refs`` in ``unit`` tokens (CI only when ``n_resamples > 0``)."""
    refs, hyps = _paired(refs, hyps, normalizer)
    if unit == "word" and segmenter == "whitespace":
        check_segmented(refs)
    alignments = [
        align(tokenize(r, unit, segmenter), tokenize(h, unit, segmenter))
        for r, h in zip(refs, hyps, strict=True)
    ]
    return rate_from_alignments(alignments, unit, n_resamples=n_resamples, confidence=confidence, seed=seed)


def cer(refs: Sequence[str] | str, hyps: Sequence[str] | str, **kwargs: Any) -> ErrorRate:
    """Character error rate (the primary metric for Chinese). Keyword arguments as :func:`error_rate`."""
    return error_rate(_as_list(refs), _as_list(hyps), "char", **kwargs)


def mer(refs: Sequence[str] | str, hyps: Sequence[str] | str, **kwargs: Any) -> ErrorRate:
    """Mixed error rate: CJK characters plus whole Latin words/numbers as tokens (code-switched speech)."""
    return error_rate(_as_list(refs), _as_list(hyps), "mixed", **kwargs)


def wer(
    refs: Sequence[str] | str, hyps: Sequence[str] | str, *, segmenter: Segmenter = "jieba", **kwargs: Any
) -> ErrorRate:
    """Word error rate on segmented words. ``segmenter='whitespace'`` trusts existing spaces and raises
    :class:`MetricError` when the CJK text is not segmented (the "WER 100" trap)."""
    return error_rate(_as_list(refs), _as_list(hyps), "word", segmenter=segmenter, **kwargs)


def sentence_error_rate(
    refs: Sequence[str] | str, hyps: Sequence[str] | str, *, normalizer: TextNormalizer | None = None
) -> float:
    """Fraction of utterances with at least one character error (whitespace ignored)."""
    refs, hyps = _paired(_as_list(refs), _as_list(hyps), normalizer)
    if not refs:
        raise MetricError("no utterances to score")
    wrong = sum(tokenize(r, "char") != tokenize(h, "char") for r, h in zip(refs, hyps, strict=True))
    return wrong / len(refs)


def _as_list(texts: Sequence[str] | str) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)


def _paired(
    refs: Sequence[str], hyps: Sequence[str], normalizer: Callable[[str], str] | None
) -> tuple[list[str], list[str]]:
    if len(refs) != len(hyps):
        raise MetricError(f"{len(refs)} references but {len(hyps)} hypotheses: they must pair up one to one")
    if normalizer is None:
        return list(refs), list(hyps)
    return [normalizer(r) for r in refs], [normalizer(h) for h in hyps]


def confusion_pairs(alignments: Iterable[Alignment]) -> Counter[tuple[str, str]]:
    """Counts of (ref_token, hyp_token) errors: substitutions, ('x', '') deletions and ('', 'x') insertions."""
    counts: Counter[tuple[str, str]] = Counter()
    for alignment in alignments:
        counts.update((r, h) for op, r, h in alignment.pairs() if op != "equal")
    return counts


# ---------------------------------------------------------------------------------------------------------------
# Bootstrap
#
# Hand-rolled on numpy: resampling utterances (not tokens) with replacement is twenty lines, and the libraries
# that offer it (scipy.stats.bootstrap) neither take a ratio of sums nor pair two systems on the same resamples.

_CHUNK = 200  # resamples drawn per step, bounding memory at _CHUNK x n utterance weights


def _resample_weights(n: int, n_resamples: int, seed: int) -> Iterable[np.ndarray]:
    """Yield (k, n) matrices of how often each utterance is drawn in each resample."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_resamples:
        k = min(_CHUNK, n_resamples - done)
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=k)
        done += k


def bootstrap_ci(
    errors: Sequence[int] | np.ndarray,
    ref_lens: Sequence[int] | np.ndarray,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the micro-averaged rate sum(errors)/sum(ref_lens), resampling utterances."""
    errors, lengths = np.asarray(errors, dtype=np.float64), np.asarray(ref_lens, dtype=np.float64)
    rates = []
    for weights in _resample_weights(len(errors), n_resamples, seed):
        total = weights @ lengths
        rates.append((weights @ errors) / np.where(total > 0, total, 1))
    samples = np.concatenate(rates)
    alpha = (1 - confidence) / 2
    return float(np.quantile(samples, alpha)), float(np.quantile(samples, 1 - alpha))


@dataclass(frozen=True)
class PairedComparison:
    """System B minus system A on the same utterances: rate difference, its CI and a two-sided p-value."""

    rate_a: float
    rate_b: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    b_better_fraction: float  # share of resamples in which B's rate is lower than A's
    utterances: int
    n_resamples: int
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_bootstrap(
    errors_a: Sequence[int] | np.ndarray,
    errors_b: Sequence[int] | np.ndarray,
    ref_lens: Sequence[int] | np.ndarray,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Paired bootstrap (Koehn 2004; Bisani and Ney 2004): resample utterances once, score both systems on each
    resample. The p-value is twice the share of resamples on the losing side of zero (two-sided), floored at
    1/n_resamples."""
    a, b = np.asarray(errors_a, dtype=np.float64), np.asarray(errors_b, dtype=np.float64)
    lengths = np.asarray(ref_lens, dtype=np.float64)
    if not (len(a) == len(b) == len(lengths)) or len(a) == 0:
        raise MetricError("paired bootstrap needs the same, non-empty set of utterances for both systems")
    if lengths.sum() == 0:
        raise MetricError("every reference is empty: an error rate is undefined")
    deltas = []
    for weights in _resample_weights(len(a), n_resamples, seed):
        total = weights @ lengths
        total = np.where(total > 0, total, 1)
        deltas.append((weights @ b - weights @ a) / total)
    samples = np.concatenate(deltas)
    alpha = (1 - confidence) / 2
    p_value = min(1.0, max(2 * min(np.mean(samples <= 0), np.mean(samples >= 0)), 1.0 / n_resamples))
    return PairedComparison(
        rate_a=float(a.sum() / lengths.sum()),
        rate_b=float(b.sum() / lengths.sum()),
        delta=float((b.sum() - a.sum()) / lengths.sum()),
        ci_low=float(np.quantile(samples, alpha)),
        ci_high=float(np.quantile(samples, 1 - alpha)),
        p_value=float(p_value),
        b_better_fraction=float(np.mean(samples < 0)),
        utterances=len(a),
        n_resamples=n_resamples,
        confidence=confidence,
    )

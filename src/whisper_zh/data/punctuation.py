"""Punctuation in training targets and in model output: put it back into bare transcripts, and measure it.

AISHELL writes its transcripts without punctuation. A model fine-tuned on them learns to stop punctuating, a
regression no CER shows (the scorer removes punctuation). :func:`restore_punctuation` carries the marks of a
punctuated hypothesis of the same audio (the base model's own output through the product decoder) over to the
reference's characters: the two are aligned character by character (RapidFuzz's Levenshtein opcodes), and each
mark lands after the reference character aligned with the hypothesis character it followed. The reference's
characters are never changed, only marks are inserted.

:func:`punctuation_rates` measures what a set of transcripts keeps: the share that ends with sentence-final
punctuation, and marks per 100 characters (both compared with the base model's on the same audio).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein

from whisper_zh.normalize import chinese_punctuation

# Marks carried over into targets: the ones Whisper writes in Chinese text, full-width as users see them.
CARRIED = frozenset("，。？！、；：")
SENTENCE_FINAL = frozenset("。？！…!?")
# Below this share of matching characters the hypothesis is about other words; only its final mark is used.
MIN_MATCH = 0.5


def is_mark(char: str) -> bool:
    """Unicode punctuation (categories P*)."""
    return unicodedata.category(char).startswith("P")


def _marks_after(hypothesis: str) -> tuple[str, list[str]]:
    """(the hypothesis' characters without marks or spaces, the carried marks after each of them)."""
    chars: list[str] = []
    after: list[str] = []
    for char in chinese_punctuation(hypothesis.strip()):
        if char.isspace():
            continue
        if is_mark(char):
            if chars and char in CARRIED and not after[-1].endswith(char):
                after[-1] += char
            continue
        chars.append(char)
        after.append("")
    return "".join(chars), after


def restore_punctuation(reference: str, hypothesis: str) -> str:
    """``reference`` with the punctuation of ``hypothesis`` inserted where the two align.

    >>> restore_punctuation("其中有两个是内因的指标", "其中有两个是内音的指标。")
    '其中有两个是内因的指标。'
    """
    reference = reference.strip()
    bare, after = _marks_after(hypothesis)
    positions = [i for i, char in enumerate(reference) if not char.isspace() and not is_mark(char)]
    if not positions or not bare:
        return reference
    ref_chars = "".join(reference[i] for i in positions)
    inserted: dict[int, str] = {}  # index in ``reference`` -> marks to insert after it
    opcodes = Levenshtein.opcodes(ref_chars, bare)
    matched = sum(op.src_end - op.src_start for op in opcodes if op.tag == "equal")
    if matched / max(len(ref_chars), len(bare)) < MIN_MATCH:
        final = "".join(ch for ch in after[-1] if ch in SENTENCE_FINAL)
        return reference + final if final and not is_mark(reference[-1]) else reference
    for op in opcodes:
        for j in range(op.dest_start, op.dest_end):
            if not after[j]:
                continue
            if op.tag in ("equal", "replace") and op.src_end > op.src_start:
                # within a block of unequal lengths (29 against 二十九), a mark after the block's last
                # hypothesis character goes after its last reference character
                span = op.src_end - op.src_start
                offset = (j - op.dest_start + 1) * span // (op.dest_end - op.dest_start) - 1
                k = op.src_start + max(0, min(span - 1, offset))
            else:  # an inserted hypothesis character: the mark follows the reference character before it
                k = op.src_start - 1
            if k >= 0:
                target = positions[k]
                inserted[target] = inserted.get(target, "") + after[j]
    moved: dict[int, str] = {}
    for i, marks in inserted.items():  # after a closing bracket of the reference, not inside it
        while i + 1 < len(reference) and unicodedata.category(reference[i + 1]) in ("Pe", "Pf"):
            i += 1
        moved[i] = moved.get(i, "") + marks
    out = []
    for i, char in enumerate(reference):
        out.append(char)
        marks = moved.get(i, "")
        nxt = reference[i + 1] if i + 1 < len(reference) else ""
        if marks and not (nxt and is_mark(nxt)):  # never next to the reference's own mark (an opening bracket)
            out.append(_dedupe(marks))
    return "".join(out)


def _dedupe(marks: str) -> str:
    """One mark where alignment stacked several (a sentence-final one wins over a comma)."""
    final = [m for m in marks if m in SENTENCE_FINAL]
    return final[-1] if final else marks[-1]


@dataclass(frozen=True)
class PunctuationRates:
    """How much punctuation a set of transcripts carries."""

    sentence_final: float  # share of non-empty transcripts that end with 。？！…
    per_100_chars: float  # punctuation marks per 100 non-space, non-mark characters
    transcripts: int

    def retention(self, base: PunctuationRates) -> float:
        """The smaller of the two rates as a fraction of ``base``'s (1.0 when the base has none)."""
        shares = [mine / theirs for mine, theirs in ((self.sentence_final, base.sentence_final),
                                                      (self.per_100_chars, base.per_100_chars)) if theirs > 0]
        return min(shares, default=1.0)


def punctuation_rates(texts: Sequence[str]) -> PunctuationRates:
    """Sentence-final rate and marks per 100 characters of ``texts`` (empty transcripts are not counted)."""
    texts = [t.strip() for t in texts if t and t.strip()]
    marks = sum(is_mark(ch) for t in texts for ch in t)
    chars = sum(not is_mark(ch) and not ch.isspace() for t in texts for ch in t)
    final = sum(t[-1] in SENTENCE_FINAL for t in texts)
    return PunctuationRates(final / len(texts) if texts else 0.0, 100 * marks / chars if chars else 0.0, len(texts))

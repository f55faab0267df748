"""Metrics against hand-computed values, and the guard against WER on unsegmented Chinese."""

from __future__ import annotations

import jiwer
import numpy as np
import pytest

from whisper_zh.errors import MetricError
from whisper_zh.metrics import (
    align,
    align_texts,
    bootstrap_ci,
    cer,
    check_segmented,
    confusion_pairs,
    mer,
    paired_bootstrap,
    sentence_error_rate,
    tokenize,
    wer,
)
from whisper_zh.normalize import TextNormalizer

REF, HYP = "设定二十九度", "设定二十八度"


def test_wer_100_trap_is_reproduced_and_refused():
    # The published "WER 100.0": whitespace-split Chinese is one word per sentence, so one wrong character = 100 %.
    assert jiwer.wer(REF, HYP) == 1.0
    with pytest.raises(MetricError, match="unsegmented"):
        wer(REF, HYP, segmenter="whitespace")
    # The honest numbers on the same pair: 1 substitution in 6 characters, 1 wrong word in 设定/二十九/度.
    result = cer(REF, HYP)
    assert (result.substitutions, result.deletions, result.insertions, result.ref_len) == (1, 0, 0, 6)
    assert result.rate == pytest.approx(1 / 6)
    assert wer(REF, HYP).rate == pytest.approx(1 / 3)


def test_wer_on_presegmented_text_is_allowed():
    check_segmented(["设定 二十九 度", "而 对 楼市 成交 抑制 作用 最 大 的 限 购"])
    result = wer("设定 二十九 度", "设定 二十八 度", segmenter="whitespace")
    assert result.rate == pytest.approx(1 / 3)
    assert result.ref_len == 3


def test_cer_counts_deletions_and_insertions():
    # 我爱北京天安门 -> 我爱天安门啊: 北京 deleted (2), 啊 inserted (1); 7 reference characters.
    a = align_texts("我爱北京天安门", "我爱天安门啊")
    assert (a.substitutions, a.deletions, a.insertions, a.hits, a.ref_len) == (0, 2, 1, 5, 7)
    assert a.markup() == "我爱[-北京]天安门[+啊]"
    assert cer("我爱北京天安门", "我爱天安门啊").rate == pytest.approx(3 / 7)


def test_corpus_cer_is_micro_averaged():
    refs = ["设定二十九度", "你好"]
    hyps = ["设定二十八度", "你"]
    result = cer(refs, hyps)
    # (1 sub + 1 del) / (6 + 2) characters, not the mean of 1/6 and 1/2.
    assert result.rate == pytest.approx(2 / 8)
    assert (result.substitutions, result.deletions, result.insertions, result.hits) == (1, 1, 0, 6)
    assert result.utterances == 2


def test_cer_ignores_whitespace_and_uses_the_normaliser():
    assert cer("我 爱 你", "我爱你").rate == 0
    assert cer("你好，世界。", "你好世界").rate == pytest.approx(2 / 6)
    assert cer("你好，世界。", "你好世界", normalizer=TextNormalizer()).rate == 0
    assert cer("國際", "国际", normalizer=TextNormalizer()).rate == 0


def test_numbers_with_and_without_normalisation():
    plain, numbers = TextNormalizer(), TextNormalizer(numbers="arabic")
    # 设定二十九度 vs 设定29度: 2 substitutions + 1 deletion over 6 characters without; a perfect match with.
    assert cer(REF, "设定29度", normalizer=plain).rate == pytest.approx(3 / 6)
    assert cer(REF, "设定29度", normalizer=numbers).rate == 0


def test_mer_treats_latin_words_as_tokens():
    assert tokenize("我爱python 3", "mixed") == ["我", "爱", "python", "3"]
    result = mer("我爱python", "我爱pytorch")
    assert (result.substitutions, result.ref_len) == (1, 3)
    # CER on the same pair counts letters: python -> pytorch is 3 substitutions + 1 insertion over 8 characters.
    assert cer("我爱python", "我爱pytorch").rate == pytest.approx(4 / 8)


def test_sentence_error_rate():
    assert sentence_error_rate(
        ["设定二十九度", "你好", "再见"], ["设定二十八度", "你好", "再 见"]
    ) == pytest.approx(1 / 3)


def test_empty_sides():
    a = align([], ["啊"])
    assert (a.insertions, a.ref_len, a.markup()) == (1, 0, "[+啊]")
    b = align(list("你好"), [])
    assert (b.deletions, b.markup()) == (2, "[-你好]")
    # An empty reference contributes insertions to the corpus rate: (0 + 1) / 2.
    assert cer(["你好", ""], ["你好", "啊"]).rate == pytest.approx(1 / 2)
    with pytest.raises(MetricError, match="empty"):
        cer([""], ["啊"])


def test_mismatched_lengths_are_refused():
    with pytest.raises(MetricError, match="pair up"):
        cer(["a", "b"], ["a"])


def test_confusion_pairs():
    alignments = [
        align_texts("设定二十九度", "设定二十八度"),
        align_texts("九点", "八"),
        align_texts("好", "好啊"),
    ]
    counts = confusion_pairs(alignments)
    assert counts == {("九", "八"): 2, ("点", ""): 1, ("", "啊"): 1}


def test_bootstrap_ci_hand_computed():
    # Two utterances, errors [1, 0] of 1 character each: resampled rates are 0, 1/2, 1 with probability
    # 1/4, 1/2, 1/4, so the 95 % percentile interval is [0, 1].
    low, high = bootstrap_ci([1, 0], [1, 1], n_resamples=4000, seed=1)
    assert (low, high) == (0.0, 1.0)
    # Identical per-utterance rates leave nothing to vary.
    assert bootstrap_ci([1, 1, 1], [4, 4, 4]) == (0.25, 0.25)


def test_cer_ci_brackets_the_rate_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    refs = ["设定二十九度"] * 400
    hyps = [("设定二十八度" if rng.random() < 0.3 else "设定二十九度") for _ in refs]
    small = cer(refs[:40], hyps[:40], n_resamples=1000)
    large = cer(refs, hyps, n_resamples=1000)
    assert small.ci_low <= small.rate <= small.ci_high
    assert large.ci_low <= large.rate <= large.ci_high
    assert (large.ci_high - large.ci_low) < (small.ci_high - small.ci_low)
    assert large.confidence == 0.95
    assert cer(refs, hyps).ci_low is None  # no CI unless asked for


def test_paired_bootstrap():
    lengths = [6] * 50
    a = [1] * 50
    same = paired_bootstrap(a, a, lengths, n_resamples=500)
    assert same.delta == 0 and same.p_value == 1.0
    better = paired_bootstrap(a, [0] * 50, lengths, n_resamples=500)
    assert better.delta == pytest.approx(-1 / 6)
    assert better.ci_high < 0 and better.b_better_fraction == 1.0
    assert better.p_value == pytest.approx(1 / 500)
    # One utterance better, one worse: no evidence either way.
    mixed = paired_bootstrap([1, 0] * 25, [0, 1] * 25, [6] * 50, n_resamples=500)
    assert mixed.delta == 0 and mixed.p_value > 0.5
    with pytest.raises(MetricError):
        paired_bootstrap([1], [1, 2], [3, 3])

"""The scoring normaliser: every step on its own, switched off, and the order they run in."""

from __future__ import annotations

import pytest

from whisper_zh.normalize import (
    TextNormalizer,
    convert_numbers,
    convert_script,
    fold_width,
    has_cjk,
    normalize_whitespace,
    remove_punctuation,
)

ALL_OFF = TextNormalizer(
    width=False,
    script="as-is",
    lowercase=False,
    numbers="off",
    punctuation=False,
    whitespace=False,
    letters=False,
)


def test_convert_script_keeps_its_contract():
    assert convert_script("們說這個開發區", "simplified") == "们说这个开发区"
    assert convert_script("们说这个", "traditional") == "們說這個"
    assert convert_script("們", "as-is") == "們"
    with pytest.raises(ValueError):
        convert_script("x", "klingon")  # type: ignore[arg-type]


def test_script_step_converts_traditional_and_can_be_switched_off():
    assert TextNormalizer()("國際經濟") == "国际经济"
    assert TextNormalizer(script="as-is")("國際經濟") == "國際經濟"


def test_width_step_folds_full_width_letters_and_digits():
    assert fold_width("ＡＢＣ１２３") == "ABC123"
    assert TextNormalizer(punctuation=False)("ＡＢＣ１２３") == "abc123"
    assert TextNormalizer(width=False, lowercase=False)("ＡＢＣ１２３") == "ＡＢＣ１２３"


def test_punctuation_step_removes_chinese_and_ascii_marks():
    assert TextNormalizer()("你好，世界！“引号”《书名》、顿号……") == "你好世界引号书名顿号"
    assert TextNormalizer()("Hello, world! It’s 'ok'?") == "hello world it's ok"
    assert TextNormalizer(punctuation=False, width=False)("你好，世界") == "你好，世界"
    assert TextNormalizer(punctuation=False)("你好，世界") == "你好,世界"  # width folding still ran


def test_punctuation_keeps_decimal_point_between_digits():
    assert remove_punctuation("3.5元。") == "3.5元 "
    assert remove_punctuation("结束.") == "结束 "


def test_whitespace_removed_between_cjk_but_latin_words_kept():
    assert normalize_whitespace("我 爱  北京") == "我爱北京"
    assert normalize_whitespace(" 我 爱 Python  Flask 框架 ") == "我爱Python Flask框架"
    assert TextNormalizer(whitespace=False)("我 爱") == "我 爱"


def test_whitespace_step_drops_invisible_format_characters():
    # AISHELL transcripts carry a stray byte-order mark at the start of some lines.
    assert TextNormalizer()("\ufeff一三一零") == "一三一零"
    assert TextNormalizer()("零\u200b宽") == "零宽"
    assert TextNormalizer(whitespace=False)("\ufeff一") == "\ufeff一"


def test_letters_step_joins_spelled_out_acronyms():
    # AISHELL spells acronyms letter by letter; Whisper writes them as one word.
    assert TextNormalizer()("O P A（淮海店）") == TextNormalizer()("OPA淮海店") == "opa淮海店"
    assert TextNormalizer()("标配S A M S U N G P A Y") == "标配samsungpay"
    assert TextNormalizer()("I am a boy") == "i am a boy"  # real one-letter words stay words
    assert TextNormalizer(letters=False)("O P A") == "o p a"


def test_yao_is_one_inside_digit_strings():
    assert convert_numbers("一三幺四", "arabic") == "1314"
    assert convert_numbers("一三幺四", "chinese") == "一三一四"
    assert TextNormalizer(numbers="arabic")("一三一零八三七三幺四八") == "13108373148"


def test_lowercase_step():
    assert TextNormalizer()("用iPhone拍照") == "用iphone拍照"
    assert TextNormalizer(lowercase=False)("用iPhone拍照") == "用iPhone拍照"


def test_number_normalisation_both_directions():
    assert convert_numbers("设定二十九度", "arabic") == "设定29度"
    assert convert_numbers("百分之五", "arabic") == "5%"
    assert convert_numbers("设定29度", "chinese") == "设定二十九度"
    assert convert_numbers("5%", "chinese") == "百分之五"
    assert convert_numbers("二十九", "off") == "二十九"
    # With numbers on, spoken and written forms meet; off (the default) they stay apart.
    on = TextNormalizer(numbers="arabic")
    assert on("设定二十九度。") == on("设定29度") == "设定29度"
    assert on("增长百分之五") == on("增长5%") == "增长5"
    assert on("三点五") == "3.5"
    # Whisper writes large numbers with a unit character; cn2an spells the spoken form out in full.
    assert on("耗费一百四十四亿美元") == on("耗费144亿美元") == "耗费14400000000美元"
    assert on("四千万余元") == on("4000万余元") == "40000000余元"
    assert on("1.2万") == "12000"
    assert TextNormalizer()("设定二十九度") != TextNormalizer()("设定29度")


def test_steps_are_recorded_in_order():
    assert TextNormalizer().steps == [
        "width",
        "script:simplified",
        "lowercase",
        "punctuation",
        "whitespace",
        "letters",
    ]
    assert TextNormalizer(numbers="arabic", letters=False).steps == [
        "width",
        "script:simplified",
        "lowercase",
        "numbers:arabic",
        "punctuation",
        "whitespace",
    ]
    assert ALL_OFF.steps == []
    assert ALL_OFF("國，ＡＢ 二十九") == "國，ＡＢ 二十九"


def test_to_dict_round_trip():
    normalizer = TextNormalizer(numbers="chinese", lowercase=False)
    data = normalizer.to_dict()
    assert data["steps"] == normalizer.steps
    assert TextNormalizer.from_dict(data) == normalizer


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="number mode"):
        TextNormalizer(numbers="roman")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="script"):
        TextNormalizer(script="cyrillic")  # type: ignore[arg-type]


def test_has_cjk():
    assert has_cjk("abc中")
    assert not has_cjk("abc 123")

"""--numbers: numbers a reader expects in digits, written as the numbers-normalised score reads them."""

from __future__ import annotations

import pytest

from whisper_zh.normalize import TextNormalizer, arabic_numbers

SCORED = TextNormalizer(numbers="arabic")


@pytest.mark.parametrize(("spoken", "written"), [
    ("二〇二三年", "2023年"),
    ("二零一五年十二月", "2015年12月"),
    ("一九九八年十月一日", "1998年10月1日"),
    ("三月五号", "3月5号"),
    ("百分之五", "5%"),
    ("增长百分之十二点五", "增长12.5%"),
    ("三十五公斤", "35公斤"),
    ("五公斤", "5公斤"),
    ("设定二十九度", "设定29度"),
    ("三点五", "3.5"),
    ("一百四十四亿元", "144亿元"),
    ("三千五百万元", "3500万元"),
    ("第三十五届", "第35届"),
    ("电话一三八一二三四五六七八", "电话13812345678"),
    ("房间一三幺", "房间131"),
])
def test_numbers_a_reader_expects_in_digits_are_written_in_digits(spoken: str, written: str):
    assert arabic_numbers(spoken) == written


@pytest.mark.parametrize("words", [
    "一下", "一些", "一样", "我们一起去", "一个人", "第一名", "两个人", "十几个", "三四个", "一会儿", "万一",
    "统一", "十分重要", "千万不要", "一年", "五点钟", "有一点", "三十多岁",
])
def test_words_made_of_numerals_stay_words(words: str):
    assert arabic_numbers(words) == words


@pytest.mark.parametrize("text", [
    "二〇二三年房价上涨百分之五，一些城市下跌了一下。", "他一九九八年十月一日出生，体重三十五公斤。",
    "一百四十四亿元的项目，电话一三八一二三四五六七八。", "十几个人一起来了，千万不要迟到。",
])
def test_scoring_with_numbers_normalised_reads_written_numbers_as_spoken_ones(text: str):
    assert SCORED(arabic_numbers(text)) == SCORED(text)


def test_transcripts_of_real_speech_write_their_numbers_in_digits(transcriber, aishell_rows):
    """Base writes phone numbers, years and percentages as it hears them, often in Chinese numerals; --numbers
    rewrites those, and nothing else, and the numbers-normalised score cannot tell the two outputs apart."""
    from whisper_zh import DecodeOptions

    rows = {row["id"][-5:]: row for row in aishell_rows}
    picked = [rows[k] for k in ("W0094", "W0102", "W0129", "W0130", "W0162", "W0157")]
    paths = [row["path"] for row in picked]
    spoken = transcriber.transcribe_batch(paths, DecodeOptions(pack=False))
    written = transcriber.transcribe_batch(paths, DecodeOptions(pack=False, numbers=True))
    changed = 0
    for row, a, b in zip(picked, spoken, written, strict=True):
        assert b.text == arabic_numbers(a.text), (row["text"], a.text, b.text)
        assert SCORED(b.text) == SCORED(a.text)
        changed += a.text != b.text
        assert not any(c in b.text for c in "零〇一二三四五六七八九幺") or "百" in b.text, b.text
    assert changed >= 2, [r.text for r in spoken]  # the phone numbers at least came out in numerals


def test_the_cli_and_the_server_ask_for_numbers(aishell_rows):
    import subprocess
    import sys

    from whisper_zh.decoding import DecodeOptions
    from whisper_zh.server.forms import TranscriptionRequest

    phone = next(row for row in aishell_rows if row["id"].endswith("W0094"))  # 一三一五零八八一八零七
    command = [sys.executable, "-m", "whisper_zh", "transcribe", phone["path"], "--quiet", "--numbers"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True).stdout
    assert sum(c.isdigit() for c in out) >= 8 and not any(c in out for c in "零一二三五八"), out
    request = TranscriptionRequest(task="transcribe", numbers=True)
    assert request.options(DecodeOptions()).numbers
    assert not TranscriptionRequest(task="transcribe").options(DecodeOptions()).numbers

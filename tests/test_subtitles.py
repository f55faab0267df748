"""Subtitle cues: each reading rule on segments whose word times are known."""

from __future__ import annotations

from whisper_zh.results import Segment, Transcription, Word
from whisper_zh.subtitles import CueOptions, make_cues
from whisper_zh.writers import format_transcription


def timed(text: str, start: float, per_char: float, pauses: dict[int, float] | None = None) -> Segment:
    """A segment whose characters are spoken ``per_char`` seconds each, with extra pauses after given indexes."""
    words, t = [], start
    for k, char in enumerate(text):
        words.append(Word(t, t + per_char, char, 0.9))
        t += per_char + (pauses or {}).get(k, 0.0)
    return Segment(0, start, t, text, -0.2, 0.01, words=words)


def transcription(*segments: Segment, duration: float = 60.0) -> Transcription:
    return Transcription("test", list(segments), "zh", duration)


def test_a_long_sentence_is_cut_at_punctuation_first():
    text = "汽车公司不得不重新考虑大城市未来的交通问题，通用汽车计划在未来实现汽车与汽车之间的信息共享。"
    cues = make_cues(transcription(timed(text, 1.0, 0.2)))
    assert len(cues) == 2
    assert cues[0].text.endswith("，") and cues[1].text.startswith("通用汽车")


def test_without_punctuation_the_cut_goes_to_the_pause():
    text = "越来越多的汽车公司开始思考大城市的未来该如何规划以及城市交通的发展方向"
    pause_after = text.index("规划") + 1  # 0.6 s of silence after 规划
    cues = make_cues(transcription(timed(text, 0.0, 0.2, {pause_after: 0.6})))
    assert [c.text for c in cues][0].endswith("规划")


def test_cues_never_cut_inside_a_word_and_lines_keep_the_limits():
    from whisper_zh.wordseg import word_boundaries

    text = "中华人民共和国国务院新闻办公室今天举行新闻发布会介绍国民经济运行情况和宏观调控政策"
    options = CueOptions()
    cues = make_cues(transcription(timed(text, 0.0, 0.15)), options)
    assert len(cues) >= 2
    for cue in cues:
        assert len(cue.lines) <= options.max_lines
        assert all(len(line) <= options.max_line_chars for line in cue.lines)
    lines = [line for cue in cues for line in cue.lines]
    assert "".join(lines) == text
    breaks = {sum(len(line) for line in lines[: k + 1]) for k in range(len(lines) - 1)}
    assert breaks <= word_boundaries(text)  # every cue and line break falls between two of jieba's words


def test_slow_speech_is_cut_at_seven_seconds():
    cues = make_cues(transcription(timed("我们今天去公园散步吧", 0.0, 1.0)))  # 10 characters over 10 s
    assert len(cues) >= 2 and all(c.end - c.start <= 7.0 + 1e-9 for c in cues)


def test_short_cues_stay_long_enough_to_read_where_the_silence_allows():
    first, second = timed("好的", 1.0, 0.15), timed("谢谢大家", 4.0, 0.15)
    cues = make_cues(transcription(first, second, duration=6.0))
    assert cues[0].end - cues[0].start >= 0.8  # 0.3 s of speech, lengthened into the silence after it
    assert cues[0].end <= cues[1].start
    long = make_cues(transcription(timed("这是一个比较长的句子需要时间阅读", 0.0, 0.1), duration=10.0))
    assert long[0].end - long[0].start >= 16 / 9 - 1e-6  # 9 characters a second where the audio allows


def test_segments_without_word_times_are_cut_by_their_length():
    text = "但在汽车业和技术行业交会的路口硅谷的技术公司并未重塑汽车制造方式而是从本质上改变乘坐和驾驶的体验"
    segment = Segment(0, 0.0, 12.0, text, -0.2, 0.01)
    cues = make_cues(transcription(segment, duration=12.0))
    assert len(cues) >= 2 and all(len(c.text) <= 32 for c in cues)
    assert all(a.end <= b.start for a, b in zip(cues, cues[1:], strict=False))


def test_srt_and_vtt_render_the_cues_and_json_keeps_sentences():
    text = "汽车公司不得不重新考虑大城市未来的交通问题，通用汽车计划在未来实现汽车与汽车之间的信息共享。"
    result = transcription(timed(text, 1.0, 0.2))
    srt = format_transcription(result, "srt")
    # The first cue comes on half a second before its speech (into the silence before it).
    assert srt.startswith("1\n00:00:00,500 --> ") and "\n2\n" in srt
    assert format_transcription(result, "vtt").startswith("WEBVTT\n\n00:00:00.500 --> ")
    assert format_transcription(result, "json").count('"text"') == 2  # the whole text, then one segment
    assert '"tokens"' not in format_transcription(result, "json")


def test_padding_and_reading_time_never_make_a_cue_longer_than_the_maximum():
    speech = timed("我们今天去公园散步吧", 2.0, 0.66)  # 6.6 s of speech with 2 s of silence on each side
    cues = make_cues(transcription(speech, duration=12.6))
    assert len(cues) == 1 and cues[0].end - cues[0].start <= 7.0 + 1e-9, cues


def test_punctuation_stays_with_the_text_before_it():
    """Continuous speech: a window decoded after a pause starts with "，"; a pause can fall just before a mark;
    a line break can land on one. No cue and no line starts with a mark; the mark ends the text before it."""
    first = timed("今天我们来讲一讲番石榴的种植方法", 0.0, 0.2)
    second = timed("，首先要选一块阳光充足排水良好的地", 4.0, 0.2)
    pause_before_comma = timed("越来越多的汽车公司开始思考大城市的未来该如何规划，以及城市交通的发展方向。", 10.0, 0.2,
                               {text_index - 1: 0.8 for text_index in [len("越来越多的汽车公司开始思考大城市的未来该如何规划")]})
    line_break = timed("这是第一行正好十六个字的一段话语呀，这是第二行也差不多有十六个字。", 30.0, 0.1)
    result = transcription(first, second, pause_before_comma, line_break)
    cues = make_cues(result)
    lines = [line for cue in cues for line in cue.lines]
    assert not [line for line in lines if line[0] in "，。、；：？！"], lines
    assert cues[0].text.endswith("，") and cues[1].text.startswith("首先")
    assert any(c.text.endswith("规划，") for c in cues)
    for fmt in ("srt", "vtt"):
        body = format_transcription(result, fmt)
        assert "\n，" not in body and "\n。" not in body

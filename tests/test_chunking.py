"""Chunking without a model: packing short clips into windows, splitting words back, regrouping at pauses."""

from __future__ import annotations

import numpy as np
from faster_whisper.vad import SpeechTimestampsMap

from whisper_zh.chunking import (
    PACK_GAP,
    PACK_WINDOW,
    AudioFile,
    make_packs,
    regroup_by_pause,
    split_file,
    unpack,
)

SR = 16000


def clip(index: int, seconds: float, language: str = "zh") -> AudioFile:
    return AudioFile(index, f"clip{index}", np.full(int(seconds * SR), 0.1, np.float32), language=language)


def word(text: str, start: float, end: float) -> dict:
    return {"word": text, "start": start, "end": end, "probability": 0.9}


def test_packs_fill_windows_in_order_with_gaps():
    files = [clip(i, s) for i, s in enumerate([5.0, 6.0, 7.0, 8.0, 4.0, 3.0])]
    packs = make_packs(files)
    assert [[m[0].index for m in p.members] for p in packs] == [[0, 1, 2, 3], [4, 5]]
    first = packs[0]
    assert first.duration <= PACK_WINDOW
    assert first.duration == len(first.audio) / SR == 5 + 6 + 7 + 8 + 3 * PACK_GAP
    (_, b0, e0), (_, b1, _) = first.members[:2]
    assert (b0, e0) == (0.0, 5.0) and b1 == 5.0 + PACK_GAP
    assert np.all(first.audio[int(5.0 * SR) + 10 : int((5.0 + PACK_GAP) * SR) - 10] == 0)  # silence between


def test_packs_never_mix_languages():
    packs = make_packs([clip(0, 3, "zh"), clip(1, 3, "en"), clip(2, 3, "en")])
    assert [[m[0].index for m in p.members] for p in packs] == [[0], [1, 2]]


def test_unpack_assigns_words_by_their_end_and_shifts_times():
    a, b = clip(0, 4.0), clip(1, 4.0)
    (pack,) = make_packs([a, b])
    start_b = 4.0 + PACK_GAP
    words = [
        word("今天", 0.3, 0.9),
        word("下雨。", 0.9, 3.5),
        word("明", 3.6, start_b + 0.4),  # stretched back over the gap: its end says it belongs to b
        word("天晴", start_b + 0.4, start_b + 1.5),
    ]
    out = unpack(
        pack, [{"text": "", "words": words, "avg_logprob": -0.2, "no_speech_prob": 0.01}], keep_words=True
    )
    assert out[a][0]["text"] == "今天下雨。"
    assert out[b][0]["text"] == "明天晴"
    assert out[b][0]["start"] == 0.0 and abs(out[b][0]["end"] - 1.5) < 1e-9
    assert abs(out[b][0]["words"][0]["end"] - 0.4) < 1e-9


def test_unpack_flags_clips_it_cannot_trust():
    a, b = clip(0, 6.0), clip(1, 6.0)
    (pack,) = make_packs([a, b])
    only_a = [word("这句话有好几个字", 0.2, 5.0)]
    out = unpack(pack, [{"words": only_a, "avg_logprob": -0.2, "no_speech_prob": 0.0}], keep_words=False)
    assert out[a] is not None and out[b] is None  # b came back empty: decode it alone


def test_split_file_keeps_short_audio_whole_and_cuts_long_audio_without_vad():
    short = clip(0, 12.0)
    assert [(c.offset, c.duration) for c in split_file(short, use_vad=True)] == [(0.0, 12.0)]
    long = clip(1, 70.0)
    chunks = split_file(long, use_vad=False)
    assert [c.offset for c in chunks] == [0.0, 30.0, 60.0] and chunks[-1].duration == 10.0


def test_regroup_by_pause_maps_words_back_and_splits_at_long_pauses():
    # Speech at 0-3 s, 3.2-5 s (short pause: same segment) and 20-23 s (long pause: new segment).
    speech = [
        {"start": 0, "end": 3 * SR},
        {"start": int(3.2 * SR), "end": 5 * SR},
        {"start": 20 * SR, "end": 23 * SR},
    ]
    speech_map = SpeechTimestampsMap(speech, SR)
    # On the speech-only timeline the third region starts at 4.8 s.
    words = [word("一", 0.1, 1.0), word("二", 3.0, 4.5), word("三", 4.3, 5.5), word("四", 5.5, 7.5)]
    raw = [{"text": "一二三四", "words": words, "avg_logprob": -0.1, "no_speech_prob": 0.0}]
    segments = regroup_by_pause(raw, speech, speech_map, keep_words=True)
    assert [s["text"] for s in segments] == ["一二", "三四"]
    third = segments[1]
    assert third["start"] == 20.0  # the stretched first word is clamped to where speech resumes
    assert abs(third["end"] - 22.7) < 0.01

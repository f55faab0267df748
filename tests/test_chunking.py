"""Windows without a model: packing short clips into windows, splitting words back, stretches of long audio."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_zh.chunking import (
    CHUNK_SECONDS,
    PACK_GAP,
    PACK_WINDOW,
    AudioFile,
    hold_back_last_sentence,
    make_packs,
    recording_runs,
    stream_spans,
    unpack,
    window_at,
)
from whisper_zh.engines import RawSegment, RawWord

SR = 16000


def clip(index: int, seconds: float, language: str = "zh") -> AudioFile:
    return AudioFile(index, f"clip{index}", np.full(int(seconds * SR), 0.1, np.float32), language=language)


def segment(words: list[RawWord]) -> RawSegment:
    return RawSegment("".join(w.text for w in words), 0.0, 29.0, -0.2, 0.01, words=tuple(words))


def test_packs_fill_windows_in_order_with_gaps():
    files = [clip(i, s) for i, s in enumerate([5.0, 6.0, 7.0, 8.0, 4.0, 3.0])]
    packs = make_packs(files)
    assert [[m.file.index for m in p.members] for p in packs] == [[0, 1, 2, 3], [4, 5]]
    first = packs[0]
    assert first.duration <= PACK_WINDOW
    assert first.duration == len(first.audio) / SR == 5 + 6 + 7 + 8 + 3 * PACK_GAP
    a, b = first.members[:2]
    assert (a.start, a.end) == (0.0, 5.0) and b.start == 5.0 + PACK_GAP
    assert np.all(first.audio[int(5.0 * SR) + 10 : int((5.0 + PACK_GAP) * SR) - 10] == 0)  # silence between


def test_packs_take_the_fewest_windows_first_fit_decreasing_finds_and_keep_input_order_inside():
    # In input order 14 s, 20 s, 14 s and 8 s take three windows (14 | 20 | 14+8); longest first they fit in two.
    files = [clip(i, s) for i, s in enumerate([14.0, 20.0, 14.0, 8.0])]
    packs = make_packs(files)
    assert [[m.file.index for m in p.members] for p in packs] == [[0, 2], [1, 3]]
    assert all(p.duration <= PACK_WINDOW for p in packs)
    first = packs[0]
    assert first.file is files[0] and [(m.start, m.end) for m in first.members] == [(0.0, 14.0), (14.8, 28.8)]
    assert np.all(first.audio[: 14 * SR] == 0.1) and np.all(first.audio[14 * SR + 10 : int(14.8 * SR) - 10] == 0)


def test_consecutive_files_of_a_folder_fill_windows_in_their_order(tmp_path):
    # Pieces of one recording, given in folder order, keep their order: each is heard after the one before it, even
    # where first-fit decreasing would take fewer windows (14 | 20 | 14+8 in order; 14+14 | 20+8 longest first).
    names = [f"part{k:02d}.flac" for k in range(4)]
    for name in names:
        (tmp_path / name).touch()
    (tmp_path / "notes.txt").touch()
    files = [AudioFile(k, str(tmp_path / n), np.full(int(s * SR), 0.1, np.float32), language="zh")
             for k, (n, s) in enumerate(zip(names, [14.0, 20.0, 14.0, 8.0], strict=True))]
    assert [len(run) for run in recording_runs(files)] == [4]
    assert [[m.file.index for m in p.members] for p in make_packs(files)] == [[0], [1], [2, 3]]


def test_clips_that_skip_their_folder_neighbour_are_packed_as_unrelated(tmp_path):
    names = [f"part{k:02d}.flac" for k in range(5)]
    for name in names:
        (tmp_path / name).touch()
    order = [0, 2, 1, 4, 3]  # shuffled: no clip is given right after the file before it in the folder
    files = [AudioFile(i, str(tmp_path / names[k]), np.full(int(5.0 * SR), 0.1, np.float32), language="zh")
             for i, k in enumerate(order)]
    assert [len(run) for run in recording_runs(files)] == [1, 1, 1, 1, 1]
    files += [AudioFile(5, str(tmp_path / names[4]), np.zeros(SR, np.float32), language="zh")]  # 3 then 4
    assert [len(run) for run in recording_runs(files)] == [1, 1, 1, 1, 2]
    # two in a row happen by chance in a shuffled folder: packed as the same clips without a folder would be
    unrelated = [AudioFile(f.index, "<array>", f.audio, language="zh") for f in files]
    assert [[m.file.index for m in p.members] for p in make_packs(files)] == \
        [[m.file.index for m in p.members] for p in make_packs(unrelated)]


def test_packs_never_mix_languages():
    packs = make_packs([clip(0, 3, "zh"), clip(1, 3, "en"), clip(2, 3, "en")])
    assert [[m.file.index for m in p.members] for p in packs] == [[0], [1, 2]]


def test_unpack_assigns_words_by_their_end_and_shifts_times():
    a, b = clip(0, 4.0), clip(1, 4.0)
    (pack,) = make_packs([a, b])
    start_b = 4.0 + PACK_GAP
    words = [
        RawWord(0.3, 0.9, "今天", 0.9),
        RawWord(0.9, 3.5, "下雨。", 0.9),
        RawWord(3.6, start_b + 0.4, "明", 0.9),  # stretched back over the gap: its end says it belongs to b
        RawWord(start_b + 0.4, start_b + 1.5, "天晴", 0.9),
    ]
    out = unpack(pack, [segment(words)])
    assert out[a].text == "今天下雨。"
    assert out[b].text == "明天晴。"  # a clip is a whole utterance: closed where Whisper ran it on
    assert out[b].start == 0.0 and abs(out[b].end - 1.5) < 1e-9
    assert abs(out[b].words[0].end - 0.4) < 1e-9


def test_unpack_orders_words_by_time_whatever_order_they_arrive_in():
    a, b = clip(0, 2.0), clip(1, 2.0)
    (pack,) = make_packs([a, b])
    late = RawWord(2.0 + PACK_GAP + 0.2, 2.0 + PACK_GAP + 1.0, "后来下雨", 0.9)
    early = [RawWord(0.2, 1.0, "先", 0.9), RawWord(1.0, 1.8, "说", 0.9)]
    out = unpack(pack, [segment([late]), segment(list(reversed(early)))])
    assert out[a].text == "先说。" and out[b].text == "后来下雨。"


def test_unpack_flags_clips_it_cannot_trust():
    a, b = clip(0, 6.0), clip(1, 6.0)
    (pack,) = make_packs([a, b])
    out = unpack(pack, [segment([RawWord(0.2, 5.0, "这句话有好几个字", 0.9)])])
    assert out[a] is not None and out[b] is None  # b came back empty: decode it alone


def test_unpack_of_a_silent_pack_redoes_nothing():
    a, b = clip(0, 6.0), clip(1, 6.0)
    (pack,) = make_packs([a, b])
    out = unpack(pack, [])
    assert out[a] is not None and out[a].text == "" and out[b].text == ""


def test_short_audio_is_one_stretch_and_long_audio_without_vad_one_stream():
    short = clip(0, 12.0)
    assert [(s.start, s.end) for s in stream_spans(short, use_vad=False)] == [(0.0, 12.0)]
    long = clip(1, 70.0)
    assert [(s.start, s.end) for s in stream_spans(long, use_vad=False)] == [(0.0, 70.0)]
    window = window_at(long, 50.0, 70.0)
    assert window.offset == 50.0 and window.duration == 20.0
    assert window_at(long, 10.0, 70.0).duration == CHUNK_SECONDS


def test_long_audio_is_cut_where_voice_activity_pauses(example_clips):
    """Speech, 5 s of silence, speech: VAD leaves the silence out of the stretches it decodes."""
    from tests.media import read_flac

    speech = read_flac(example_clips[1]["path"])
    audio = np.concatenate([speech] * 4 + [np.zeros(5 * SR, np.float32)] + [speech] * 4)
    file = AudioFile(0, "joined", audio)
    spans = stream_spans(file, use_vad=True)
    first_part = 4 * len(speech) / SR
    assert file.regions, "VAD found the speech"
    assert len(spans) == 2
    assert spans[0].end <= first_part + 1.0 and spans[1].start >= first_part + 4.0


def test_a_long_recording_has_one_stream_per_batch_row_and_none_shorter_than_two_minutes(example_clips):
    """Each stream ends in a part-filled window: a recording is cut into as many streams as a batch decodes
    together, not into fixed two-minute stretches (which cost a 9-minute recording two extra windows)."""
    from tests.media import read_flac

    speech = read_flac(example_clips[1]["path"])
    file = AudioFile(0, "joined", np.concatenate([speech] * 40))  # 288 s of continuous speech
    counts = {n: len(stream_spans(file, use_vad=True, streams=n)) for n in (1, 2, 8)}
    assert counts == {1: 1, 2: 2, 8: 3}, counts


def test_streams_are_cut_at_the_longest_pause_near_an_even_split(example_clips):
    """A new stream starts without the text before it: cut where the speaker pauses longest, not at the last
    pause that fits (which may fall inside a sentence)."""
    from tests.media import read_flac

    speech = read_flac(example_clips[1]["path"])
    pause = np.zeros(int(1.5 * SR), np.float32)
    pieces = [speech] * 18 + [pause] + [speech] * 22  # the longer pause 15 s before the middle
    file = AudioFile(0, "joined", np.concatenate(pieces))
    spans = stream_spans(file, use_vad=True, streams=2)
    at = 18 * len(speech) / SR
    assert len(spans) == 2
    assert at - 0.5 <= spans[0].end <= at + 0.5 and at + 1.0 <= spans[1].start <= at + 2.0, spans


@pytest.mark.parametrize(("last", "expected"), [("问题，", "今天问题。"), ("好吗？", "今天好吗？"), ("下雨", "今天下雨。")])
def test_a_packed_chinese_clip_ends_with_a_sentence_mark(last, expected):
    (pack,) = make_packs([clip(0, 4.0), clip(1, 4.0)])
    out = unpack(pack, [segment([RawWord(0.3, 0.9, "今天", 0.9), RawWord(0.9, 3.5, last, 0.9)])])
    assert out[pack.members[0].file].text == expected


def test_a_packed_english_clip_is_not_given_chinese_marks():
    (pack,) = make_packs([clip(0, 4.0, "en"), clip(1, 4.0, "en")])
    out = unpack(pack, [segment([RawWord(0.3, 0.9, " good", 0.9), RawWord(0.9, 3.5, " morning", 0.9)])])
    assert out[pack.members[0].file].text == "good morning"


def test_a_sentence_final_word_stretched_over_the_gap_stays_with_its_clip():
    a, b = clip(0, 4.0), clip(1, 4.0)
    (pack,) = make_packs([a, b])
    start_b = 4.0 + PACK_GAP
    words = [RawWord(0.3, 3.2, "爸爸去哪", 0.9), RawWord(3.2, start_b + 0.3, "儿。", 0.9),  # stretched forward
             RawWord(start_b + 0.3, start_b + 2.5, "想听歌曲。", 0.9)]
    out = unpack(pack, [segment(words)])
    assert out[a].text == "爸爸去哪儿。" and out[b].text == "想听歌曲。"


def _words(spec: str, start: float = 0.0, step: float = 1.0) -> list[RawWord]:
    """One word per space-separated item, each ``step`` seconds long."""
    return [RawWord(start + k * step, start + (k + 1) * step, text, 0.9) for k, text in enumerate(spec.split())]


def test_the_sentence_a_window_edge_cut_is_left_to_the_next_window():
    first = segment(_words("今天 下雨。 明天"))  # 0-3 s
    second = segment(_words("也 下雨， 后天 晴", start=3.0))  # 3-7 s: the window ends inside this sentence
    kept, cut = hold_back_last_sentence([first, second], earliest=2.0)
    assert cut == 2.0  # the next window starts where 明天 does
    assert [s.text for s in kept] == ["今天下雨。"] and kept[0].end == 2.0 and len(kept[0].words) == 2


def test_without_a_sentence_mark_the_last_clause_is_held_back_and_without_any_mark_nothing():
    kept, cut = hold_back_last_sentence([segment(_words("今天 下雨， 明天 也"))], earliest=1.0)
    assert (cut, "".join(s.text for s in kept)) == (2.0, "今天下雨，")
    assert hold_back_last_sentence([segment(_words("今天 下雨 明天"))], earliest=1.0) is None
    # a mark before ``earliest`` does not count: the window must move on
    assert hold_back_last_sentence([segment(_words("今天。 下雨 明天 也 是"))], earliest=2.0) is None

"""The live-transcription core (whisper_zh.live) with the real embedded base model.

Recordings are played in on a simulated clock: every decode "takes" a fixed time whatever this machine's load, so
the audio a decode sees, and therefore the events, do not depend on how busy the CPU is. `whisper-zh live` is run
as the CLI runs it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from whisper_zh.audio import SAMPLE_RATE, load_audio
from whisper_zh.cli import main
from whisper_zh.decoding import DEFAULT_ZH_PROMPT, DecodeOptions
from whisper_zh.live import (
    Committed,
    Completed,
    LiveOptions,
    LiveSession,
    NothingToCommit,
    Partial,
    SpeechStarted,
    SpeechStopped,
    Unit,
    _Agreement,
    _split_word,
    play,
)
from whisper_zh.metrics import cer
from whisper_zh.normalize import TextNormalizer
from whisper_zh.results import Word

MAX_CER = 0.35
CLIP_IDS = ("BAC009S0150W0300", "BAC009S0150W0301")  # 8.6 s and 5.4 s of news


class SimulatedClock:
    """Time that moves only when the driver sleeps or a decode runs (a decode takes ``decode_seconds``)."""

    def __init__(self, decode_seconds: float) -> None:
        self.now, self.decode_seconds = 0.0, decode_seconds

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def decoder(self, transcriber):  # noqa: ANN001, ANN202
        def decode(request):  # noqa: ANN001, ANN202
            self.now += self.decode_seconds
            return transcriber.transcribe_batch([request.audio], request.options)[0]

        return decode


def _cer(reference: str, hypothesis: str) -> float:
    return cer(reference, hypothesis, normalizer=TextNormalizer()).rate


@pytest.fixture(scope="module")
def two_clips(aishell_rows):
    rows = {row["id"]: row for row in aishell_rows}
    audio = np.concatenate([load_audio(rows[i]["path"]) for i in CLIP_IDS])
    return audio, "".join(rows[i]["text"] for i in CLIP_IDS)


def _play(transcriber, audio, *, speed=1.0, decode_seconds=1.0, session=None):  # noqa: ANN001, ANN202
    clock = SimulatedClock(decode_seconds)
    session = session or LiveSession()
    fed = []  # (seconds of audio received when the event came out, event)
    for event in play(session, audio, clock.decoder(transcriber), speed=speed, clock=lambda: clock.now,
                      sleep=clock.sleep):
        fed.append((session.received_seconds, event))
    return session, fed


@pytest.fixture(scope="module")
def streamed(transcriber, two_clips):
    """The two clips played in at real-time speed, each decode taking 1.5 s: (session, [(audio received, event)])."""
    return _play(transcriber, two_clips[0], decode_seconds=1.5)


def test_text_commits_while_speech_goes_on_and_is_never_taken_back(streamed, two_clips):
    audio, reference = two_clips
    session, timeline = streamed
    events = [e for _, e in timeline]
    duration = len(audio) / SAMPLE_RATE

    committed = [e for e in events if isinstance(e, Committed)]
    assert committed, events
    # local agreement commits text before the stream ends, not only at the end
    assert min(at for at, e in timeline if isinstance(e, Committed)) < duration - 2.0
    assert any(isinstance(e, Partial) and e.text for e in events)

    # every item: started, then its committed pieces, then completed with exactly their concatenation
    items: dict[str, list[str]] = {}
    for event in events:
        if isinstance(event, SpeechStarted):
            assert event.item_id not in items
            items[event.item_id] = []
        elif isinstance(event, Committed):
            items[event.item_id].append(event.text)
        elif isinstance(event, Completed):
            assert event.text == "".join(items[event.item_id]).strip()
            assert event.start <= event.end
    assert len([e for e in events if isinstance(e, Completed)]) == len(items) >= 2  # one pause between the clips

    final = session.transcription()
    assert final.text == "".join(e.text for e in committed).strip()
    assert _cer(reference, final.text) <= MAX_CER, (final.text, reference)
    # committed words come in time order
    ends = [u.end for e in committed for u in e.units]
    assert ends == sorted(ends)


def test_an_utterance_ends_at_the_pause_between_two_clips(streamed):
    _, timeline = streamed
    stopped = [e for _, e in timeline if isinstance(e, SpeechStopped)]
    first_clip = 8.648
    assert abs(stopped[0].end - first_clip) < 1.0, stopped  # the pause is where the first clip's audio ends
    completed = [e for _, e in timeline if isinstance(e, Completed)]
    assert completed[0].end <= first_clip + 0.5 and completed[1].start >= first_clip - 0.5


def test_as_fast_as_possible_decodes_each_utterance_once(transcriber, two_clips):
    audio, reference = two_clips
    session = LiveSession()
    decodes = []

    def decode(request):  # noqa: ANN001, ANN202
        decodes.append(request)
        return transcriber.transcribe_batch([request.audio], request.options)[0]

    events = list(play(session, audio, decode, speed=None))
    assert all(r.final for r in decodes) and len(decodes) == 2  # no re-decoding when all the audio is there
    assert decodes[0].options.temperature == DecodeOptions().temperature  # a final decode keeps the fallback
    assert not any(isinstance(e, Partial) for e in events)
    assert _cer(reference, session.transcription().text) <= MAX_CER
    # the second utterance is decoded with the first one's text after the Mandarin prompt
    first = next(e.text for e in events if isinstance(e, Completed))
    assert decodes[0].options.initial_prompt == DEFAULT_ZH_PROMPT
    assert decodes[1].options.initial_prompt == DEFAULT_ZH_PROMPT + first
    # ... and that is what the engine gets: the previous text last, right before the audio
    assert decodes[1].options.prompt_for("zh") == DEFAULT_ZH_PROMPT + first


def test_silence_decodes_nothing_and_commit_on_it_says_so(transcriber):
    session = LiveSession()
    session.append(np.zeros(3 * SAMPLE_RATE, np.float32))
    assert session.due()
    step = session.prepare()
    assert step.request is None and step.events == []
    assert session.held_seconds <= 0.5  # silence is not held
    session.commit()
    assert session.prepare().events == [NothingToCommit()]
    session.finish()
    assert session.prepare().request is None and session.done


def test_clear_drops_the_decode_in_flight(transcriber, two_clips):
    audio, _ = two_clips
    session = LiveSession()
    session.append(audio[: 4 * SAMPLE_RATE])
    step = session.prepare()
    assert step.request is not None and any(isinstance(e, SpeechStarted) for e in step.events)
    result = transcriber.transcribe_batch([step.request.audio], step.request.options)[0]
    session.clear()
    assert session.accept(step.request, result) == []
    assert session.held_seconds == 0.0


def test_overlapping_requests_are_accepted_in_order_and_an_item_ends_on_its_latest_decode(transcriber, two_clips,
                                                                                          aishell_rows):
    """A driver with two decodes at once asks for the next request before the last is answered. The session hands
    out a second request over newer audio, commits what the two agree on when their results come back in order,
    and, hearing the pause while a request is in flight, waits for it before ending the item."""
    audio, _ = two_clips
    first_clip = round(8.648 * SAMPLE_RATE)
    session = LiveSession()
    session.append(audio[: 4 * SAMPLE_RATE])
    a = session.prepare().request
    assert a is not None and not a.final and session.in_flight == 1
    # a partial decode has no slower retries at higher temperatures, and every decode a token budget for its
    # length (a looping decode otherwise runs to Whisper's 448 tokens)
    assert a.options.temperature == (0.0,) and a.options.max_new_tokens == 20 + 15 * math.ceil(a.seconds)
    assert not session.due()  # no new audio yet: nothing to overlap with
    session.append(audio[4 * SAMPLE_RATE : 5 * SAMPLE_RATE])
    assert session.due()
    b = session.prepare().request
    assert b is not None and not b.final and b.end > a.end and session.in_flight == 2
    # the rest of the first clip and a second of silence: the item is over, but two decodes are in flight
    session.append(audio[5 * SAMPLE_RATE : first_clip])
    session.append(np.zeros(SAMPLE_RATE, np.float32))
    waiting = session.prepare()
    assert waiting.request is None and not any(isinstance(e, SpeechStopped) for e in waiting.events)

    events = []
    for request in (a, b):  # in the order they were made
        events += session.accept(request, transcriber.transcribe_batch([request.audio], request.options)[0])
    assert session.in_flight == 0
    committed = "".join(e.text for e in events if isinstance(e, Committed))
    assert committed, events  # the two decodes agreed on the start of the sentence
    assert session.due()  # the deferred look comes now
    step = session.prepare()
    ended = list(step.events)
    assert any(isinstance(e, SpeechStopped) for e in ended)
    if step.request is not None:  # b did not hear the whole utterance: one final decode of it
        assert step.request.final
        ended += session.accept(step.request, transcriber.transcribe_batch([step.request.audio],
                                                                          step.request.options)[0])
    (done,) = [e for e in ended if isinstance(e, Completed)]
    assert done.text.startswith(committed.strip())
    reference = {row["id"]: row for row in aishell_rows}[CLIP_IDS[0]]["text"]
    assert _cer(reference, done.text) <= MAX_CER, done.text


def test_play_overlaps_decodes_and_keeps_the_commits_in_order(transcriber, two_clips):
    """``play(parallel=2)`` on the real clock: decodes run side by side in threads (the Transcriber's engine takes
    calls from several threads), and the text is as without overlap: never retracted, each item its commits. A
    step shorter than any decode makes the overlap certain on a fast CPU too."""
    audio, reference = two_clips
    session = LiveSession(live=LiveOptions(step_seconds=0.2))
    most = [0]

    def decode(request):  # noqa: ANN001, ANN202
        most[0] = max(most[0], session.in_flight)
        return transcriber.transcribe_batch([request.audio], request.options)[0]

    events = list(play(session, audio, decode, speed=2.0, parallel=2))
    assert most[0] == 2
    items: dict[str, str] = {}
    for event in events:
        if isinstance(event, Committed):
            items[event.item_id] = items.get(event.item_id, "") + event.text
        elif isinstance(event, Completed):
            assert event.text == items.get(event.item_id, "").strip()
    final = session.transcription().text
    assert final == "".join(items.values()).strip()
    assert _cer(reference, final) <= MAX_CER, final


def test_cjk_words_split_into_characters_with_times_shared_out():
    units = _split_word(Word(1.0, 1.6, "处理器。", 0.9), offset=10.0)
    assert [u.text for u in units] == ["处", "理", "器", "。"]
    assert units[0].start == pytest.approx(11.0) and units[2].end == pytest.approx(11.6)
    assert units[3].start == units[3].end == pytest.approx(11.6)
    latin = _split_word(Word(0.0, 1.0, " iPhone6", 0.9), offset=0.0)
    assert [u.text for u in latin] == [" iPhone6"]


def test_agreement_drops_a_repeated_seam_but_keeps_a_real_repeat():
    agreement = _Agreement()
    agreement.flush([Unit("谢", 0.0, 0.3), Unit("谢", 0.3, 0.6)], until=0.6)
    # the next decode re-hears the last committed character a little later (times wobble): not new
    assert agreement.fresh([Unit("谢", 0.52, 0.7), Unit("你", 0.7, 0.9)]) == [Unit("你", 0.7, 0.9)]
    # a third 谢 after the committed ones is speech
    assert agreement.fresh([Unit("谢", 0.6, 0.9)]) == [Unit("谢", 0.6, 0.9)]


def test_agreement_holds_back_the_mark_that_ends_a_decode_and_never_repeats_a_mark():
    agreement = _Agreement()
    heard = [Unit("问", 0.0, 0.3), Unit("题", 0.3, 0.6), Unit("。", 0.6, 0.6)]
    assert agreement.agree(heard, 0.7) == []
    # two decodes agree on "问题。", but the buffer ended there: the "。" may yet turn into "，"
    assert [u.text for u in agreement.agree(heard, 1.2)] == ["问", "题"]
    # the next words came after a "，": the mark that was held back is not committed
    later = [*heard[:2], Unit("，", 0.6, 0.6), Unit("而", 0.7, 0.9), Unit("非", 0.9, 1.1)]
    assert agreement.agree(later, 1.7) == []
    assert [u.text for u in agreement.agree(later, 2.2)] == ["，", "而", "非"]
    # at an item's end everything is committed, the last mark too
    assert [u.text for u in agreement.flush([*later, Unit("。", 1.1, 1.1)], until=1.2)] == ["。"]
    # a later decode puts the committed "。" 0.15 s later (a mark has no width): it is not new text
    assert agreement.fresh([Unit("。", 1.25, 1.25), Unit("制", 1.3, 1.5)]) == [Unit("制", 1.3, 1.5)]


def test_cli_live_prints_committed_text_and_writes_subtitles(two_clips, aishell_rows, tmp_path, capsys):
    rows = {row["id"]: row for row in aishell_rows}
    path = rows[CLIP_IDS[0]]["path"]
    output = tmp_path / "live.srt"
    assert main(["live", path, "--speed", "50", "--workers", "2", "--threads", "1", "--output", str(output)]) == 0
    out = capsys.readouterr()
    printed = out.out.strip()
    assert _cer(rows[CLIP_IDS[0]]["text"], printed) <= MAX_CER, printed
    assert "played at 50x" in out.err
    assert out.err.startswith("1 utterance,"), out.err  # one clip, no pause inside: one utterance, said in the singular
    srt = output.read_text(encoding="utf-8")
    assert srt.startswith("1\n00:00:0")
    # the writer sizes cues for reading (a line may be split across cues): the cues' text is the printed text
    cue_text = "".join(line for line in srt.splitlines() if line and not line.isdigit() and "-->" not in line)
    assert cue_text == printed.replace("\n", "")


def test_cli_live_refuses_what_cannot_work(tmp_path, capsys, aishell_rows):
    assert main(["live", str(tmp_path / "missing.wav")]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["live", str(tmp_path / "x.wav"), "--engine", "transformers"]) == 2
    assert "ctranslate2" in capsys.readouterr().err
    assert main(["live", str(tmp_path / "x.wav"), "--output", str(tmp_path / "out.docx")]) == 2
    assert main(["live", str(tmp_path / "x.wav"), "--workers", "0"]) == 2
    assert "--workers 0" in capsys.readouterr().err
    clip = aishell_rows[0]["path"]
    assert main(["live", clip, "--language", "xx"]) == 2  # checked against the model, as by transcribe
    assert "unknown language 'xx'" in capsys.readouterr().err


@pytest.mark.parametrize("speed", ["nan", "inf", "-inf", "-2", "0", "1e9"])
def test_cli_live_refuses_a_speed_that_is_not_a_speed(speed, capsys):
    """Issue 30, defect 7: NaN passed ``speed <= 0`` and infinity overflowed the clock; one line, exit 2, before
    the audio or the model is loaded (the file does not even exist)."""
    assert main(["live", "no-such-file.flac", f"--speed={speed}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--speed {float(speed)}" in err and "Traceback" not in err, err

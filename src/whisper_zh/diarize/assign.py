"""Give a transcript's words the speakers of a diarization, and split segments where the speaker changes.

As whisperX's ``assign_word_speakers`` does: each word goes to the speaker whose turns overlap it most (or the
nearest turn when none overlaps: a word in a pause); a segment without word times goes to the speaker that
overlaps it most as a whole. A segment whose words change speaker is split there, so every segment has one
speaker. Speakers are then renumbered in order of first appearance (SPEAKER_1 speaks first).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from whisper_zh.diarize.options import SpeakerTurn, speaker_name
from whisper_zh.results import Segment, Transcription, Word


def label_speakers(transcription: Transcription, turns: list[SpeakerTurn]) -> Transcription:
    """A copy of ``transcription`` with a speaker on every segment and word (none at all if ``turns`` is empty)."""
    if not turns:
        return transcription
    starts = np.array([t.start for t in turns])
    ends = np.array([t.end for t in turns])
    speakers = np.array([t.speaker for t in turns])
    pieces: list[tuple[int, Segment]] = []
    for segment in transcription.segments:
        if not segment.words:
            pieces.append((_speaker_of(segment.start, segment.end, starts, ends, speakers), segment))
            continue
        labels = [_speaker_of(w.start, w.end, starts, ends, speakers) for w in segment.words]
        pieces += _split(segment, labels)
    order: dict[int, str] = {}
    for speaker, _ in pieces:
        order.setdefault(speaker, speaker_name(len(order)))
    segments = []
    for i, (speaker, segment) in enumerate(pieces):
        name = order[speaker]
        words = [replace(w, speaker=name) for w in segment.words] if segment.words else segment.words
        segments.append(replace(segment, id=i, speaker=name, words=words))
    return replace(transcription, segments=segments)


def _speaker_of(start: float, end: float, starts: np.ndarray, ends: np.ndarray, speakers: np.ndarray) -> int:
    overlap = np.minimum(ends, end) - np.maximum(starts, start)
    if overlap.max() > 0:
        totals: dict[int, float] = {}
        for speaker, amount in zip(speakers[overlap > 0], overlap[overlap > 0], strict=True):
            totals[int(speaker)] = totals.get(int(speaker), 0.0) + float(amount)
        return max(totals, key=totals.__getitem__)
    gap = np.maximum(starts - end, start - ends)  # the nearest turn
    return int(speakers[int(np.argmin(gap))])


def _split(segment: Segment, labels: list[int]) -> list[tuple[int, Segment]]:
    """``segment`` cut where its words' speaker changes (a run of words per piece)."""
    words: list[Word] = segment.words or []
    cuts = [0] + [i for i in range(1, len(words)) if labels[i] != labels[i - 1]] + [len(words)]
    if len(cuts) == 2:
        return [(labels[0], segment)]
    out = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        part = words[a:b]
        start = segment.start if a == 0 else part[0].start
        end = segment.end if b == len(words) else part[-1].end
        text = "".join(w.word for w in part).strip()
        out.append((labels[a], replace(segment, start=start, end=end, text=text, words=part, tokens=[])))
    return out

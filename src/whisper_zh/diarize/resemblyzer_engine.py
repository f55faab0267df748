"""The default diarization engine: Resemblyzer speaker embeddings of short speech windows, clustered.

Like pyannote.audio and whisperX: find speech (Silero VAD, :mod:`whisper_zh.vad`), embed it piece by piece,
cluster the embeddings into speakers (:mod:`whisper_zh.diarize.clustering`), and give each 10 ms frame the
speaker whose centroid the windows covering it resemble most. Windows are 1.6 s (the partial utterance
Resemblyzer's encoder was trained on) every 0.8 s, embedded a batch at a time as the audio goes by, so memory
holds one batch of spectrograms and one 256-number embedding per window, whatever the length.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from resemblyzer import VoiceEncoder
from resemblyzer.audio import normalize_volume, wav_to_mel_spectrogram
from resemblyzer.hparams import audio_norm_target_dBFS, partials_n_frames

from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.diarize.clustering import speaker_centroids
from whisper_zh.diarize.options import DiarizeOptions, SpeakerTurn
from whisper_zh.vad import DIARIZE_VAD_OPTIONS, Span, speech_regions

WINDOW = partials_n_frames / 100  # seconds (160 frames of 10 ms)
STEP = 0.8  # Resemblyzer's own rate of partials (1.3 a second) is about this
MIN_REGION = 0.3  # shorter bursts of sound (clicks, breaths) are not embedded; their words take a nearby speaker
BATCH = 64
VAD_BLOCK = 120.0  # seconds of audio given to the voice activity detector at once
FRAME = 0.01
MIN_TURN = 0.3  # a speaker change that comes back within this many seconds is noise: smoothed away


class ResemblyzerEngine:
    """Resemblyzer 0.1.4's trained voice encoder (Apache-2.0; the weights ship in its wheel)."""

    name = "resemblyzer"

    def __init__(self, device: str = "cpu") -> None:
        self.encoder = VoiceEncoder(device, verbose=False)

    def turns(self, audio: np.ndarray, options: DiarizeOptions) -> list[SpeakerTurn]:
        windows, embeddings = self.embed(audio)
        if not windows:
            return []
        centroids = speaker_centroids(embeddings, options)
        return _frames_to_turns(windows, embeddings @ centroids.T, len(audio) / SAMPLE_RATE)

    def embed(self, audio: np.ndarray) -> tuple[list[Span], np.ndarray]:
        """The speech windows of ``audio`` and their embeddings (one unit-length row each), a batch at a time."""
        windows: list[Span] = []
        parts: list[np.ndarray] = []
        batch: list[np.ndarray] = []
        for window, mel in _window_mels(audio, _speech(audio)):
            windows.append(window)
            batch.append(mel)
            if len(batch) == BATCH:
                parts.append(self._embed_batch(batch))
                batch = []
        if batch:
            parts.append(self._embed_batch(batch))
        return windows, (np.concatenate(parts) if parts else np.zeros((0, 256), np.float32))

    def _embed_batch(self, mels: list[np.ndarray]) -> np.ndarray:
        full = [i for i, m in enumerate(mels) if len(m) == partials_n_frames]
        out = np.zeros((len(mels), 256), np.float32)
        with torch.inference_mode():
            if full:
                out[full] = self.encoder(torch.from_numpy(np.stack([mels[i] for i in full]))).numpy()
            for i in sorted(set(range(len(mels))) - set(full)):  # short regions: one at a time, unpadded
                out[i] = self.encoder(torch.from_numpy(mels[i][None])).numpy()[0]
        return out


def _speech(audio: np.ndarray) -> Iterator[Span]:
    """Speech regions, found VAD_BLOCK seconds at a time (the detector copies what it is given: a block, not the
    whole recording). A region that runs over a block's edge becomes two, which only moves a window edge."""
    block = int(VAD_BLOCK * SAMPLE_RATE)
    for start in range(0, len(audio), block):
        offset = start / SAMPLE_RATE
        for region in speech_regions(audio[start : start + block], DIARIZE_VAD_OPTIONS):
            yield Span(region.start + offset, region.end + offset)


def _window_mels(audio: np.ndarray, regions: Iterator[Span]) -> Iterator[tuple[Span, np.ndarray]]:
    """Each speech region's spectrogram (volume normalised over the region, as Resemblyzer does per utterance),
    cut into windows of WINDOW seconds every STEP seconds, the last one ending with the region; a region shorter
    than a window is one window."""
    frames, step = partials_n_frames, round(STEP * 100)
    for region in regions:
        if region.duration < MIN_REGION:
            continue
        wav = audio[round(region.start * SAMPLE_RATE) : round(region.end * SAMPLE_RATE)].astype(np.float32)
        mel = wav_to_mel_spectrogram(normalize_volume(wav, audio_norm_target_dBFS)).astype(np.float32)
        if len(mel) <= frames:
            yield region, mel
            continue
        starts = list(range(0, len(mel) - frames, step)) + [len(mel) - frames]
        for a in starts:
            yield Span(region.start + a / 100, region.start + (a + frames) / 100), mel[a : a + frames]


def _frames_to_turns(windows: list[Span], similarity: np.ndarray, duration: float) -> list[SpeakerTurn]:
    """Each 10 ms frame goes to the speaker most like the windows that cover it, short flips are smoothed
    away, and runs of one speaker become turns (frames no window covers are nobody's)."""
    frames = int(np.ceil(duration / FRAME)) + 1
    score = np.zeros((frames, similarity.shape[1]), np.float32)
    covered = np.zeros(frames, bool)
    for window, row in zip(windows, similarity, strict=True):
        a, b = int(window.start / FRAME), int(np.ceil(window.end / FRAME))
        score[a:b] += row
        covered[a:b] = True
    labels = np.where(covered, np.argmax(score, axis=1), -1)
    runs = _runs(labels)
    for i, (start, end, label) in enumerate(runs):  # a short run between two of one speaker: that speaker
        if label >= 0 and end - start < MIN_TURN / FRAME and 0 < i < len(runs) - 1:
            before, after = runs[i - 1][2], runs[i + 1][2]
            if before == after and before >= 0:
                labels[start:end] = before
    return [SpeakerTurn(round(a * FRAME, 2), round(b * FRAME, 2), int(k)) for a, b, k in _runs(labels) if k >= 0]


def _runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    if len(labels) == 0:
        return []
    edges = np.flatnonzero(np.diff(labels)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [len(labels)]])
    return [(int(a), int(b), int(labels[a])) for a, b in zip(starts, ends, strict=True)]

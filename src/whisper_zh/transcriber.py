"""The transcription pipeline: inputs -> 16 kHz audio -> <=30 s chunks -> batched CTranslate2 decoding -> segments.

Short clips (<= 30 s) are one chunk each; longer audio is split by Silero VAD (as faster-whisper's batched
pipeline does). Chunks from *different* files are decoded together in batches, which is where the speed over
file-by-file faster-whisper comes from. A chunk whose output looks broken (a compression ratio or mean
log-probability beyond the thresholds) is decoded again by faster-whisper's sequential path with temperature
fallback, and a repetition guard cuts any loop that survives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import (
    BatchedInferencePipeline,
    TranscriptionOptions,
    get_compression_ratio,
    get_suppressed_tokens,
)
from faster_whisper.vad import SpeechTimestampsMap, VadOptions, collect_chunks, get_speech_timestamps

from whisper_zh.audio import SAMPLE_RATE, AudioInput, load_audio
from whisper_zh.decoding import DecodeOptions, cut_repetition_loop
from whisper_zh.errors import AudioError
from whisper_zh.models import ResolvedModel, resolve_model
from whisper_zh.normalize import convert_script
from whisper_zh.results import Segment, Transcription, Word

logger = logging.getLogger(__name__)

CHUNK_SECONDS = 30.0
# Audio held in memory at once by transcribe_iter before its chunks are decoded (bounds memory on big batches).
WINDOW_SECONDS = 900.0

ProgressCallback = Callable[[float], None]


@dataclass
class _File:
    index: int
    source: str
    audio: np.ndarray
    speech_map: SpeechTimestampsMap | None = None
    language: str | None = None


@dataclass
class _Chunk:
    file: _File
    audio: np.ndarray
    offset: float  # seconds, on the file's (speech-only, when VAD ran) timeline
    duration: float
    features: np.ndarray | None = None


class Transcriber:
    """Load a Whisper model once and transcribe Mandarin audio with it.

    >>> Transcriber("base").transcribe("clip.wav").text  # doctest: +SKIP
    """

    def __init__(
        self,
        model: str = "base",
        *,
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 0,
    ) -> None:
        self.model_name = str(model)
        self.resolved: ResolvedModel = resolve_model(model)
        path = self.resolved.path
        if self.resolved.layout == "transformers":
            from whisper_zh.convert import ensure_ctranslate2  # conversion is only needed for this layout

            path = ensure_ctranslate2(
                self.resolved, quantization=compute_type if compute_type != "default" else "int8"
            )
        self.compute_type = compute_type
        self.device = device
        self._model = WhisperModel(
            str(path), device=device, compute_type=compute_type, cpu_threads=cpu_threads
        )
        self._pipeline = BatchedInferencePipeline(self._model)

    @property
    def is_multilingual(self) -> bool:
        return bool(self._model.model.is_multilingual)

    def transcribe(self, audio: AudioInput, options: DecodeOptions | None = None) -> Transcription:
        """Transcribe one input (path, bytes, file object or 16 kHz array); raises AudioError on bad input."""
        result = self.transcribe_batch([audio], options)[0]
        if isinstance(result, AudioError):
            raise result
        return result

    def transcribe_batch(
        self,
        inputs: Iterable[AudioInput],
        options: DecodeOptions | None = None,
        *,
        on_progress: ProgressCallback | None = None,
    ) -> list[Transcription | AudioError]:
        """Transcribe many inputs, batching their chunks; a bad input yields its AudioError in its slot."""
        items = list(inputs)
        results: list[Transcription | AudioError | None] = [None] * len(items)
        for index, result in self.transcribe_iter(items, options, on_progress=on_progress):
            results[index] = result
        return results  # type: ignore[return-value]

    def transcribe_iter(
        self,
        inputs: Iterable[AudioInput],
        options: DecodeOptions | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        window_seconds: float = WINDOW_SECONDS,
    ) -> Iterator[tuple[int, Transcription | AudioError]]:
        """Yield (input index, result) as windows of inputs finish; errors are yielded as soon as they are found."""
        options = options or DecodeOptions()
        window: list[_File] = []
        held = 0.0
        for index, source in enumerate(inputs):
            try:
                audio = load_audio(source)
            except AudioError as exc:
                yield index, exc
                continue
            window.append(_File(index, _describe(source), audio))
            held += len(audio) / SAMPLE_RATE
            if held >= window_seconds:
                yield from self._decode_window(window, options, on_progress)
                window, held = [], 0.0
        if window:
            yield from self._decode_window(window, options, on_progress)

    # -- internals -------------------------------------------------------------------------------------------

    def _decode_window(
        self, files: list[_File], options: DecodeOptions, on_progress: ProgressCallback | None
    ) -> Iterator[tuple[int, Transcription]]:
        chunks = [chunk for file in files for chunk in self._split(file, options)]
        for chunk in chunks:
            chunk.features = pad_or_trim(self._model.feature_extractor(chunk.audio)[..., :-1])
        self._assign_languages(files, chunks, options)
        raw: dict[int, list[dict[str, Any]]] = {file.index: [] for file in files}
        by_language: dict[str, list[_Chunk]] = {}
        for chunk in chunks:
            by_language.setdefault(chunk.file.language or "zh", []).append(chunk)
        for language, group in by_language.items():
            tokenizer = Tokenizer(
                self._model.hf_tokenizer, self.is_multilingual, task=options.task, language=language
            )
            fw_options = self._fw_options(options, tokenizer)
            # Similar durations decode to similar lengths: sorting keeps beams in a batch finishing together.
            group.sort(key=lambda c: c.duration, reverse=True)
            for start in range(0, len(group), options.batch_size):
                batch = group[start : start + options.batch_size]
                self._pipeline.last_speech_timestamp = 0.0
                outputs = self._pipeline.forward(
                    np.stack([c.features for c in batch]),
                    tokenizer,
                    [{"offset": c.offset, "duration": c.duration} for c in batch],
                    fw_options,
                )
                for chunk, subsegments in zip(batch, outputs, strict=True):
                    if self._needs_fallback(subsegments, options):
                        subsegments = self._decode_sequentially(chunk, options, language)
                    if not self._is_silence(subsegments, options):
                        raw[chunk.file.index].extend(subsegments)
                if on_progress:
                    on_progress(sum(c.duration for c in batch))
        for file in files:
            speech = sum(c.duration for c in chunks if c.file is file)
            if on_progress and (rest := len(file.audio) / SAMPLE_RATE - speech) > 0:
                on_progress(rest)
            yield file.index, self._assemble(file, raw[file.index], options)

    def _split(self, file: _File, options: DecodeOptions) -> list[_Chunk]:
        duration = len(file.audio) / SAMPLE_RATE
        if duration <= CHUNK_SECONDS:
            return [_Chunk(file, file.audio, 0.0, duration)]
        if not options.vad:
            step = int(CHUNK_SECONDS * SAMPLE_RATE)
            return [
                _Chunk(
                    file,
                    file.audio[i : i + step],
                    i / SAMPLE_RATE,
                    min(step, len(file.audio) - i) / SAMPLE_RATE,
                )
                for i in range(0, len(file.audio), step)
            ]
        speech = get_speech_timestamps(
            file.audio, VadOptions(max_speech_duration_s=CHUNK_SECONDS, min_silence_duration_ms=160)
        )
        if not speech:
            logger.info("%s: no speech found by VAD", file.source)
            return []
        file.speech_map = SpeechTimestampsMap(speech, SAMPLE_RATE)
        audio_chunks, metadata = collect_chunks(file.audio, speech, max_duration=CHUNK_SECONDS)
        return [
            _Chunk(file, audio, meta["offset"], meta["duration"])
            for audio, meta in zip(audio_chunks, metadata, strict=True)
            if len(audio)
        ]

    def _assign_languages(self, files: list[_File], chunks: list[_Chunk], options: DecodeOptions) -> None:
        for file in files:
            if options.language or not self.is_multilingual:
                file.language = options.language or "en"
                continue
            first = next((c for c in chunks if c.file is file), None)
            if first is None:
                file.language = "zh"
                continue
            language, _, _ = self._model.detect_language(features=first.features)
            file.language = language

    def _fw_options(self, options: DecodeOptions, tokenizer: Tokenizer) -> TranscriptionOptions:
        return TranscriptionOptions(
            beam_size=options.beam_size,
            best_of=5,
            patience=1.0,
            length_penalty=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            log_prob_threshold=options.log_prob_threshold,
            no_speech_threshold=options.no_speech_threshold,
            compression_ratio_threshold=options.compression_ratio_threshold,
            condition_on_previous_text=False,
            prompt_reset_on_temperature=0.5,
            temperatures=[options.temperature[0]],
            initial_prompt=options.initial_prompt,
            prefix=None,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
            without_timestamps=not options.timestamps,
            max_initial_timestamp=0.0,
            word_timestamps=options.word_timestamps,
            prepend_punctuations="\"'“¿([{-「『《【",
            append_punctuations="\"'.。,，!！?？:：”)]}、」』》】",
            multilingual=False,
            max_new_tokens=options.max_new_tokens,
            clip_timestamps="0",
            hallucination_silence_threshold=None,
            hotwords=options.hotwords,
        )

    @staticmethod
    def _needs_fallback(subsegments: list[dict[str, Any]], options: DecodeOptions) -> bool:
        if len(options.temperature) < 2 or not subsegments:
            return False
        text = "".join(s["text"] for s in subsegments)
        first = subsegments[0]
        too_repetitive = bool(text) and get_compression_ratio(text) > options.compression_ratio_threshold
        unsure = first["avg_logprob"] < options.log_prob_threshold
        silent = first["no_speech_prob"] > options.no_speech_threshold
        return too_repetitive or (unsure and not silent)

    @staticmethod
    def _is_silence(subsegments: list[dict[str, Any]], options: DecodeOptions) -> bool:
        if not subsegments:
            return True
        first = subsegments[0]
        return (
            first["no_speech_prob"] > options.no_speech_threshold
            and first["avg_logprob"] < options.log_prob_threshold
        )

    def _decode_sequentially(
        self, chunk: _Chunk, options: DecodeOptions, language: str
    ) -> list[dict[str, Any]]:
        """faster-whisper's one-by-one path with temperature fallback, for a chunk the batched pass got wrong."""
        segments, _ = self._model.transcribe(
            chunk.audio,
            language=language,
            task=options.task,
            beam_size=options.beam_size,
            temperature=list(options.temperature),
            compression_ratio_threshold=options.compression_ratio_threshold,
            log_prob_threshold=options.log_prob_threshold,
            no_speech_threshold=options.no_speech_threshold,
            condition_on_previous_text=False,
            initial_prompt=options.initial_prompt,
            hotwords=options.hotwords,
            word_timestamps=options.word_timestamps,
            without_timestamps=not options.timestamps,
            vad_filter=False,
        )
        out = []
        for s in segments:
            words = None
            if s.words is not None:
                words = [
                    {
                        "start": w.start + chunk.offset,
                        "end": w.end + chunk.offset,
                        "word": w.word,
                        "probability": w.probability,
                    }
                    for w in s.words
                ]
            out.append(
                {
                    "text": s.text,
                    "start": s.start + chunk.offset,
                    "end": min(s.end, chunk.duration) + chunk.offset,
                    "avg_logprob": s.avg_logprob,
                    "no_speech_prob": s.no_speech_prob,
                    "compression_ratio": s.compression_ratio,
                    "tokens": list(s.tokens),
                    "words": words,
                }
            )
        return out

    def _assemble(self, file: _File, raw: list[dict[str, Any]], options: DecodeOptions) -> Transcription:
        segments: list[Segment] = []
        duration = len(file.audio) / SAMPLE_RATE
        for item in sorted(raw, key=lambda s: s["start"]):
            text = item["text"].strip()
            if options.repetition_guard:
                text, was_cut = cut_repetition_loop(text)
                if was_cut:
                    logger.warning("%s: cut a repetition loop at %.1f s", file.source, item["start"])
            text = convert_script(text, options.script)
            if not text:
                continue
            start, end = float(item["start"]), float(item["end"])
            words = None
            if item.get("words"):
                words = [
                    Word(
                        float(w["start"]),
                        float(w["end"]),
                        convert_script(w["word"], options.script),
                        float(w["probability"]),
                    )
                    for w in item["words"]
                ]
            if file.speech_map is not None:
                if words:
                    for word in words:
                        index = file.speech_map.get_chunk_index((word.start + word.end) / 2)
                        word.start = file.speech_map.get_original_time(word.start, index)
                        word.end = file.speech_map.get_original_time(word.end, index)
                    start, end = words[0].start, words[-1].end
                else:
                    start = file.speech_map.get_original_time(start)
                    end = file.speech_map.get_original_time(end, is_end=True)
            segments.append(
                Segment(
                    id=len(segments),
                    start=round(max(0.0, start), 3),
                    end=round(min(end, duration), 3),
                    text=text,
                    avg_logprob=float(item["avg_logprob"]),
                    no_speech_prob=float(item["no_speech_prob"]),
                    compression_ratio=float(item.get("compression_ratio", 0.0)),
                    tokens=list(item.get("tokens", [])),
                    words=words,
                )
            )
        return Transcription(file.source, segments, file.language or options.language or "zh", duration)


def _describe(source: AudioInput) -> str:
    if isinstance(source, np.ndarray):
        return "<array>"
    if isinstance(source, (bytes, bytearray)):
        return "<bytes>"
    return str(getattr(source, "name", source))


def with_options(options: DecodeOptions | None, **changes: Any) -> DecodeOptions:
    """A copy of ``options`` (or the defaults) with some fields changed."""
    return replace(options or DecodeOptions(), **changes)

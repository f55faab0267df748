"""The transcription pipeline: inputs -> 16 kHz audio -> <=30 s chunks -> batched decoding -> segments -> text.

How audio becomes chunks (and packed chunks become per-file text again) lives in :mod:`whisper_zh.chunking`.
Here: loading inputs a window at a time, decoding the chunks of *all* files of a window in batches (CTranslate2
through faster-whisper by default, or Transformers), retrying broken output, and assembling segments. A chunk
whose output looks broken (a compression ratio or mean log-probability beyond the thresholds) is decoded again
by faster-whisper's sequential path with temperature fallback, and a repetition guard cuts any loop that
survives. Output is converted to the requested Chinese script with OpenCC.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any, Literal

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.feature_extractor import FeatureExtractor
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import (
    BatchedInferencePipeline,
    TranscriptionOptions,
    get_compression_ratio,
    get_suppressed_tokens,
)

from whisper_zh.audio import SAMPLE_RATE, AudioInput, describe_source, load_audio
from whisper_zh.chunking import (
    CHUNK_SECONDS,
    PACK_MAX_CLIP,
    AudioFile,
    Chunk,
    make_packs,
    regroup_by_pause,
    split_file,
    unpack,
)
from whisper_zh.decoding import DecodeOptions, cut_repetition_loop
from whisper_zh.errors import AudioError
from whisper_zh.models import ResolvedModel, resolve_model
from whisper_zh.normalize import convert_script
from whisper_zh.results import Segment, Transcription, Word

logger = logging.getLogger(__name__)

# Audio held in memory at once by transcribe_iter before its chunks are decoded (bounds memory on big batches).
WINDOW_SECONDS = 900.0

ProgressCallback = Callable[[float], None]
Engine = Literal["ctranslate2", "transformers"]


class Transcriber:
    """Load a Whisper model once and transcribe Mandarin audio with it.

    >>> Transcriber("base").transcribe("clip.wav").text  # doctest: +SKIP
    """

    def __init__(
        self,
        model: str = "base",
        *,
        engine: Engine = "ctranslate2",
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 0,
    ) -> None:
        """``engine``: "ctranslate2" (fast; a Transformers checkpoint is converted once and cached) or
        "transformers" (runs a Transformers checkpoint as it is; no packing or word timestamps)."""
        if engine not in ("ctranslate2", "transformers"):
            raise ValueError(f"unknown engine '{engine}': use ctranslate2 or transformers")
        self.model_name = str(model)
        self.engine = engine
        self.resolved: ResolvedModel = resolve_model(model)
        self.compute_type = compute_type
        self.device = device
        self._model: WhisperModel | None = None
        self._hf = None
        if engine == "transformers":
            from whisper_zh.hf_engine import TransformersDecoder  # torch is only needed for this engine

            self._hf = TransformersDecoder(self.resolved, device=device)
            self._features = FeatureExtractor(feature_size=self._hf.n_mels)
            return
        path = self.resolved.path
        if self.resolved.layout == "transformers":
            from whisper_zh.convert import ensure_ctranslate2  # conversion is only needed for this layout

            path = ensure_ctranslate2(
                self.resolved, quantization=compute_type if compute_type != "default" else "int8"
            )
        self._model = WhisperModel(
            str(path), device=device, compute_type=compute_type, cpu_threads=cpu_threads
        )
        self._features = self._model.feature_extractor
        self._pipeline = BatchedInferencePipeline(self._model)

    @property
    def is_multilingual(self) -> bool:
        if self._hf is not None:
            return self._hf.is_multilingual
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
        if self._hf is not None:
            if options.word_timestamps:
                raise ValueError("word timestamps need the ctranslate2 engine")
            options = replace(options, pack=False)  # packing splits clips apart by word timestamps
        window: list[AudioFile] = []
        held = 0.0
        for index, source in enumerate(inputs):
            try:
                audio = load_audio(source)
            except AudioError as exc:
                yield index, exc
                continue
            window.append(AudioFile(index, describe_source(source), audio))
            held += len(audio) / SAMPLE_RATE
            if held >= window_seconds:
                yield from self._decode_window(window, options, on_progress)
                window, held = [], 0.0
        if window:
            yield from self._decode_window(window, options, on_progress)

    # -- internals -------------------------------------------------------------------------------------------

    def _decode_window(
        self, files: list[AudioFile], options: DecodeOptions, on_progress: ProgressCallback | None
    ) -> Iterator[tuple[int, Transcription]]:
        self._assign_languages(files, options)
        packable = [
            f for f in files if options.pack and f.language and len(f.audio) <= PACK_MAX_CLIP * SAMPLE_RATE
        ]
        packed_ids = {id(f) for f in packable}
        chunks = [
            chunk
            for file in files
            if id(file) not in packed_ids
            for chunk in split_file(file, use_vad=options.vad)
        ]
        packs = make_packs(packable)
        raw: dict[int, list[dict[str, Any]]] = {file.index: [] for file in files}
        split_by_vad = [c for c in chunks if c.file.speech is not None]
        whole = [c for c in chunks if c.file.speech is None]
        for group, words in ((whole, options.word_timestamps), (split_by_vad, True)):
            for chunk, subsegments in self._decode_chunks(group, options, words, on_progress):
                raw[chunk.file.index].extend(subsegments)
        redo: list[AudioFile] = []
        for pack, subsegments in self._decode_chunks(packs, options, True, on_progress):
            for file, parts in unpack(pack, subsegments, keep_words=options.word_timestamps).items():
                if parts is None:
                    redo.append(file)
                else:
                    raw[file.index].extend(parts)
        if redo:  # clips the packed pass could not place with confidence: decode them on their own
            logger.debug("%d packed clips decoded again on their own", len(redo))
            retry = [chunk for file in redo for chunk in split_file(file, use_vad=options.vad)]
            for chunk, subsegments in self._decode_chunks(retry, options, options.word_timestamps, None):
                raw[chunk.file.index].extend(subsegments)
        for file in files:
            if on_progress and file.credited < (total := len(file.audio) / SAMPLE_RATE):
                on_progress(total - file.credited)
            yield file.index, self._assemble(file, raw[file.index], options)

    def _decode_chunks(
        self,
        chunks: list[Chunk],
        options: DecodeOptions,
        word_timestamps: bool,
        on_progress: ProgressCallback | None,
    ) -> Iterator[tuple[Chunk, list[dict[str, Any]]]]:
        """Decode chunks in batches (grouped by language); yields each chunk with its raw sub-segments."""
        by_language: dict[str, list[Chunk]] = {}
        for chunk in chunks:
            by_language.setdefault(chunk.file.language or "zh", []).append(chunk)
        for language, group in by_language.items():
            if self._hf is None:
                tokenizer = Tokenizer(
                    self._model.hf_tokenizer, self.is_multilingual, task=options.task, language=language
                )
                fw_options = self._fw_options(options, tokenizer, word_timestamps)
            # Similar durations decode to similar lengths: sorting keeps beams in a batch finishing together.
            group.sort(key=lambda c: c.duration, reverse=True)
            for start in range(0, len(group), options.batch_size):
                batch = group[start : start + options.batch_size]
                features = np.stack([pad_or_trim(self._features(c.audio)[..., :-1]) for c in batch])
                if self._hf is not None:
                    outputs = [
                        [{**r, "start": c.offset, "end": c.offset + c.duration, "words": None}]
                        for c, r in zip(batch, self._hf.decode(features, options, language), strict=True)
                    ]
                else:
                    self._pipeline.last_speech_timestamp = 0.0
                    outputs = self._pipeline.forward(
                        features,
                        tokenizer,
                        [{"offset": c.offset, "duration": c.duration} for c in batch],
                        fw_options,
                    )
                for chunk, subsegments in zip(batch, outputs, strict=True):
                    if self._hf is None and self._needs_fallback(subsegments, options):
                        subsegments = self._decode_sequentially(chunk, options, language, word_timestamps)
                    if on_progress:
                        for file, begin, finish in chunk.members or [(chunk.file, 0.0, chunk.duration)]:
                            file.credited += finish - begin
                            on_progress(finish - begin)
                    yield chunk, ([] if self._is_silence(subsegments, options) else subsegments)

    def _assign_languages(self, files: list[AudioFile], options: DecodeOptions) -> None:
        for file in files:
            if options.language or not self.is_multilingual:
                file.language = options.language or "en"
                continue
            first_window = file.audio[: int(CHUNK_SECONDS * SAMPLE_RATE)]
            features = pad_or_trim(self._features(first_window)[..., :-1])
            if self._hf is not None:
                file.language = self._hf.detect_language(features)
            else:
                file.language, _, _ = self._model.detect_language(features=features)

    def _fw_options(
        self, options: DecodeOptions, tokenizer: Tokenizer, word_timestamps: bool
    ) -> TranscriptionOptions:
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
            word_timestamps=word_timestamps,
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
        self, chunk: Chunk, options: DecodeOptions, language: str, word_timestamps: bool
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
            word_timestamps=word_timestamps,
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

    def _assemble(self, file: AudioFile, raw: list[dict[str, Any]], options: DecodeOptions) -> Transcription:
        segments: list[Segment] = []
        duration = len(file.audio) / SAMPLE_RATE
        if file.speech is not None and file.speech_map is not None:
            if any(item.get("words") for item in raw):
                raw = regroup_by_pause(raw, file.speech, file.speech_map, keep_words=options.word_timestamps)
            else:  # no word times (the Transformers engine): one segment per chunk, mapped back
                speech_map = file.speech_map
                raw = [
                    {
                        **item,
                        "start": speech_map.get_original_time(item["start"]),
                        "end": speech_map.get_original_time(item["end"], is_end=True),
                    }
                    for item in raw
                ]
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

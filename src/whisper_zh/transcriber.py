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
from faster_whisper.vad import SpeechTimestampsMap, VadOptions, collect_chunks, get_speech_timestamps

from whisper_zh.audio import SAMPLE_RATE, AudioInput, load_audio
from whisper_zh.decoding import DecodeOptions, cut_repetition_loop
from whisper_zh.errors import AudioError
from whisper_zh.models import ResolvedModel, resolve_model
from whisper_zh.normalize import convert_script
from whisper_zh.results import Segment, Transcription, Word

logger = logging.getLogger(__name__)

CHUNK_SECONDS = 30.0
# Packing: clips up to PACK_MAX_CLIP seconds share one 30 s window, separated by PACK_GAP seconds of silence.
# Whisper's encoder always pays for 30 s, so a 5 s clip alone wastes five sixths of it.
PACK_MAX_CLIP = 20.0
PACK_GAP = 0.8
PACK_WINDOW = 29.0
# In VAD-split audio, a silence at least this long starts a new segment.
PAUSE_SECONDS = 0.5
# Audio held in memory at once by transcribe_iter before its chunks are decoded (bounds memory on big batches).
WINDOW_SECONDS = 900.0

ProgressCallback = Callable[[float], None]
Engine = Literal["ctranslate2", "transformers"]


@dataclass(eq=False)  # identity semantics: used as a dict key
class _File:
    index: int
    source: str
    audio: np.ndarray
    speech_map: SpeechTimestampsMap | None = None
    speech: list[dict[str, int]] | None = None  # VAD speech regions (samples), when VAD split the file
    language: str | None = None
    credited: float = 0.0  # seconds already reported to the progress callback


@dataclass
class _Chunk:
    file: _File
    audio: np.ndarray
    offset: float  # seconds, on the file's (speech-only, when VAD ran) timeline
    duration: float
    # For a pack of short clips: (file, start, end) of each clip on the pack's timeline.
    members: list[tuple[_File, float, float]] | None = None


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
        self._assign_languages(files, options)
        packable = [
            f for f in files if options.pack and f.language and len(f.audio) <= PACK_MAX_CLIP * SAMPLE_RATE
        ]
        packed_ids = {id(f) for f in packable}
        chunks = [
            chunk for file in files if id(file) not in packed_ids for chunk in self._split(file, options)
        ]
        packs = _make_packs(packable)
        raw: dict[int, list[dict[str, Any]]] = {file.index: [] for file in files}
        split_by_vad = [c for c in chunks if c.file.speech is not None]
        whole = [c for c in chunks if c.file.speech is None]
        for group, words in ((whole, options.word_timestamps), (split_by_vad, True)):
            for chunk, subsegments in self._decode_chunks(group, options, words, on_progress):
                raw[chunk.file.index].extend(subsegments)
        redo: list[_File] = []
        for pack, subsegments in self._decode_chunks(packs, options, True, on_progress):
            for file, parts in _unpack(pack, subsegments, options).items():
                if parts is None:
                    redo.append(file)
                else:
                    raw[file.index].extend(parts)
        if redo:  # clips the packed pass could not place with confidence: decode them on their own
            logger.debug("%d packed clips decoded again on their own", len(redo))
            retry = [chunk for file in redo for chunk in self._split(file, options)]
            for chunk, subsegments in self._decode_chunks(retry, options, options.word_timestamps, None):
                raw[chunk.file.index].extend(subsegments)
        for file in files:
            if on_progress and file.credited < (total := len(file.audio) / SAMPLE_RATE):
                on_progress(total - file.credited)
            yield file.index, self._assemble(file, raw[file.index], options)

    def _decode_chunks(
        self,
        chunks: list[_Chunk],
        options: DecodeOptions,
        word_timestamps: bool,
        on_progress: ProgressCallback | None,
    ) -> Iterator[tuple[_Chunk, list[dict[str, Any]]]]:
        """Decode chunks in batches (grouped by language); yields each chunk with its raw sub-segments."""
        by_language: dict[str, list[_Chunk]] = {}
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
        file.speech = speech
        audio_chunks, metadata = collect_chunks(file.audio, speech, max_duration=CHUNK_SECONDS)
        return [
            _Chunk(file, audio, meta["offset"], meta["duration"])
            for audio, meta in zip(audio_chunks, metadata, strict=True)
            if len(audio)
        ]

    def _assign_languages(self, files: list[_File], options: DecodeOptions) -> None:
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
        self, chunk: _Chunk, options: DecodeOptions, language: str, word_timestamps: bool
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

    def _assemble(self, file: _File, raw: list[dict[str, Any]], options: DecodeOptions) -> Transcription:
        segments: list[Segment] = []
        duration = len(file.audio) / SAMPLE_RATE
        if file.speech is not None and file.speech_map is not None:
            if any(item.get("words") for item in raw):
                raw = _regroup_by_pause(raw, file.speech, file.speech_map, keep_words=options.word_timestamps)
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


def _regroup_by_pause(
    raw: list[dict[str, Any]],
    speech: list[dict[str, int]],
    speech_map: SpeechTimestampsMap,
    *,
    keep_words: bool,
) -> list[dict[str, Any]]:
    """Rebuild a VAD-split file's segments from its words: one segment per stretch of speech between pauses of
    at least PAUSE_SECONDS, with times on the original timeline.

    A VAD chunk glues up to 30 s of speech together, so its decoded text spans many sentences and the silences
    between them; the words, mapped back through the speech map, say where each sentence really is.
    """
    regions: list[list[float]] = []
    for part in speech:
        begin, finish = part["start"] / SAMPLE_RATE, part["end"] / SAMPLE_RATE
        if regions and begin - regions[-1][1] < PAUSE_SECONDS and finish - regions[-1][0] <= CHUNK_SECONDS:
            regions[-1][1] = finish
        else:
            regions.append([begin, finish])
    buckets: list[list[tuple[dict[str, Any], dict[str, Any]]]] = [[] for _ in regions]
    for item in raw:
        for word in item.get("words") or []:
            index = speech_map.get_chunk_index(word["end"], is_end=True)
            end = speech_map.get_original_time(word["end"], index)
            start = speech_map.get_original_time(word["start"], index)
            # The end decides (see _unpack); the start is clamped to the region, since the alignment stretches the
            # first word of a region back over the preceding pause.
            k = next((k for k, (_, finish) in enumerate(regions) if end <= finish + 0.15), len(regions) - 1)
            begin = regions[k][0]
            buckets[k].append(({**word, "start": min(max(start, begin), end), "end": end}, item))
    out = []
    for bucket in buckets:
        if not bucket:
            continue
        words = [word for word, _ in bucket]
        items = {id(item): item for _, item in bucket}.values()
        text = "".join(w["word"] for w in words)
        out.append(
            {
                "text": text,
                "start": words[0]["start"],
                "end": words[-1]["end"],
                "avg_logprob": float(np.mean([i["avg_logprob"] for i in items])),
                "no_speech_prob": float(np.mean([i["no_speech_prob"] for i in items])),
                "compression_ratio": get_compression_ratio(text) if text else 0.0,
                "tokens": [],
                "words": words if keep_words else None,
            }
        )
    return out


def _make_packs(files: list[_File]) -> list[_Chunk]:
    """Greedily fill <= PACK_WINDOW-second windows with whole clips in input order, PACK_GAP of silence between."""
    packs: list[_Chunk] = []
    gap = np.zeros(int(PACK_GAP * SAMPLE_RATE), np.float32)
    pieces: list[np.ndarray] = []
    members: list[tuple[_File, float, float]] = []
    cursor = 0.0

    def close() -> None:
        audio = np.concatenate(pieces[:-1])  # drop the trailing gap
        packs.append(_Chunk(members[0][0], audio, 0.0, len(audio) / SAMPLE_RATE, list(members)))

    for file in files:
        seconds = len(file.audio) / SAMPLE_RATE
        if members and (cursor + seconds > PACK_WINDOW or file.language != members[0][0].language):
            close()
            pieces, members, cursor = [], [], 0.0
        members.append((file, cursor, cursor + seconds))
        pieces += [file.audio, gap]
        cursor += seconds + PACK_GAP
    if members:
        close()
    return packs


def _unpack(
    pack: _Chunk, subsegments: list[dict[str, Any]], options: DecodeOptions
) -> dict[_File, list[dict[str, Any]] | None]:
    """Split a pack's words back into its clips; None marks a clip to decode again on its own.

    A word goes to the clip in whose span its *end* falls: the alignment stretches the first word after a gap
    back over the silence, so start times and midpoints land in the previous clip while end times do not.
    """
    members = pack.members or []
    words: list[list[dict[str, Any]]] = [[] for _ in members]
    for segment in subsegments:
        for word in segment.get("words") or []:
            for k, (_, _begin, finish) in enumerate(members):
                if word["end"] <= finish + 0.15 or k == len(members) - 1:
                    words[k].append(word)
                    break
    out: dict[_File, list[dict[str, Any]] | None] = {}
    template = subsegments[0] if subsegments else {"avg_logprob": 0.0, "no_speech_prob": 0.0}
    for (file, begin, finish), assigned in zip(members, words, strict=True):
        text = "".join(w["word"] for w in assigned).strip()
        seconds = finish - begin
        rate = len(text) / seconds
        if not text or (seconds > 2.0 and rate < 0.7) or rate > 12.0:
            out[file] = None  # nothing or implausibly little/much text: the split cannot be trusted
            continue
        shifted = [
            {
                **w,
                "start": min(max(w["start"] - begin, 0.0), seconds),
                "end": min(max(w["end"] - begin, 0.0), seconds),
            }
            for w in assigned
        ]
        out[file] = [
            {
                "text": text,
                "start": shifted[0]["start"],
                "end": shifted[-1]["end"],
                "avg_logprob": template["avg_logprob"],
                "no_speech_prob": template["no_speech_prob"],
                "compression_ratio": get_compression_ratio(text),
                "tokens": [],
                "words": shifted if options.word_timestamps else None,
            }
        ]
    return out


def _describe(source: AudioInput) -> str:
    if isinstance(source, np.ndarray):
        return "<array>"
    if isinstance(source, (bytes, bytearray)):
        return "<bytes>"
    return str(getattr(source, "name", source))


def with_options(options: DecodeOptions | None, **changes: Any) -> DecodeOptions:
    """A copy of ``options`` (or the defaults) with some fields changed."""
    return replace(options or DecodeOptions(), **changes)

"""The CTranslate2 engine, through faster-whisper: the default, and the only module that touches faster-whisper's
decoding internals.

Batches of windows go through faster-whisper's own batched decoder, ``BatchedInferencePipeline`` (a subclass
gives each window its own prompt; on a CPU the beam search runs on the whole batch, while encoding, splitting
at timestamps and word alignment go window by window). Its ``TranscriptionOptions`` has no defaults of its own,
so they are taken from the signature of faster-whisper's public ``BatchedInferencePipeline.transcribe``: a
release that adds an option either gives it a default there (and it is picked up) or fails at load with a
message naming it, never in the middle of a decode. Windows the batched pass gets wrong are decoded again with
faster-whisper's public ``WhisperModel.transcribe``, which owns the temperature fallback.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import BatchedInferencePipeline, TranscriptionOptions, get_suppressed_tokens

from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.decoding import DecodeOptions
from whisper_zh.engines.base import Decoded, RawSegment, RawWord, split_at_timestamps
from whisper_zh.errors import ModelLoadError

# Punctuation faster-whisper attaches to the neighbouring word when aligning: its defaults plus Chinese brackets
# and the enumeration comma, so a Chinese mark never becomes a "word" of its own with a time of its own.
PREPEND_PUNCTUATION = "\"'“¿([{-「『《【"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、」』》】；;"
# The seed of CTranslate2's sampling, which the temperature fallback uses: unseeded, the same clips came out different
# from run to run (13 of the guard's 1,245 shuffled clips, keywords 1.1 points apart, p = 0.014, on the same code and
# the same windows). CTranslate2 keeps one generator per decoding thread, seeded when that thread first samples, so
# the seed is set before the model's threads exist: a process's decodes repeat exactly, run after run.
SAMPLING_SEED = 0
FRAMES_PER_SECOND = 100  # log-mel frames (10 ms hop)
N_FRAMES = 30 * FRAMES_PER_SECOND  # the window Whisper was trained on


class CTranslate2Decoder:
    """A CTranslate2 Whisper model (a directory in CTranslate2 layout) behind the :class:`Decoder` protocol."""

    name = "ctranslate2"
    aligns_words = True

    def __init__(self, model_dir: str, *, device: str = "cpu", compute_type: str = "int8", cpu_threads: int = 0,
                 workers: int = 1, storage_type: str = "unknown") -> None:
        """``workers``: decodes that may run at once, from as many Python threads (CTranslate2's inter_threads;
        each runs on ``cpu_threads`` threads of its own; 0 with several workers: the cores shared out among them,
        rather than CTranslate2's default for each, which would oversubscribe the CPU)."""
        if workers > 1 and cpu_threads == 0:
            cpu_threads = max(1, (os.cpu_count() or 1) // workers)
        ctranslate2.set_random_seed(SAMPLING_SEED)
        try:
            self._model = WhisperModel(model_dir, device=device, compute_type=compute_type, cpu_threads=cpu_threads,
                                       num_workers=workers)
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(_load_error(exc, device, compute_type)) from exc
        self.model_path = model_dir
        self.storage_type = storage_type
        self.compute_type = str(self._model.model.compute_type)
        self.device = str(self._model.model.device)  # "auto" resolved by CTranslate2
        self._option_defaults = _batched_defaults()

    @property
    def is_multilingual(self) -> bool:
        return bool(self._model.model.is_multilingual)

    @property
    def languages(self) -> frozenset[str]:
        return frozenset(self._model.supported_languages)

    def detect_language(self, audio: np.ndarray) -> str:
        language, _probability, _all = self._model.detect_language(audio=audio[: 30 * 16000])
        return language

    def decode(
        self, windows: Sequence[np.ndarray], options: DecodeOptions, *, language: str, words: bool,
        timestamps: bool = False, contexts: Sequence[str | None] | None = None,
    ) -> list[Decoded]:
        tokenizer = self._tokenizer(options, language)
        prompt = _encode(tokenizer, options.prompt_for(language))
        contexts = contexts or [None] * len(windows)
        results: dict[int, Decoded] = {}
        for rows in ([i for i, c in enumerate(contexts) if not c], [i for i, c in enumerate(contexts) if c]):
            if not rows:
                continue
            # CTranslate2 needs <|startoftranscript|> at one position across a batch: every row keeps the same
            # number of context tokens (the last ones, nearest the window), as many as the shortest context has.
            tails = [_encode(tokenizer, contexts[i]) for i in rows]
            keep = min([len(t) for t in tails] + [self._model.max_length // 2 - 1 - len(prompt)])
            previous = [prompt + (t[len(t) - keep :] if keep > 0 else []) for t in tails]
            decoded = self._forward([windows[i] for i in rows], previous, options, tokenizer, language, words,
                                    timestamps)
            results.update(zip(rows, decoded, strict=True))
        return [results[i] for i in range(len(windows))]

    def decode_with_fallback(
        self, window: np.ndarray, options: DecodeOptions, *, language: str, words: bool, timestamps: bool = False,
        context: str | None = None,
    ) -> Decoded:
        prompt = "".join(part for part in (options.prompt_for(language), context) if part) or None
        segments, _info = self._model.transcribe(
            window,
            language=language,
            task=options.task,
            beam_size=options.beam_size,
            temperature=list(options.temperature),
            compression_ratio_threshold=options.compression_ratio_threshold,
            log_prob_threshold=options.log_prob_threshold,
            no_speech_threshold=options.no_speech_threshold,
            condition_on_previous_text=False,
            max_new_tokens=self._room(options, language, prompt),
            initial_prompt=prompt,
            hotwords=options.hotwords,
            word_timestamps=words,
            without_timestamps=not timestamps,
            prepend_punctuations=PREPEND_PUNCTUATION,
            append_punctuations=APPEND_PUNCTUATION,
            vad_filter=False,
        )
        duration = len(window) / SAMPLE_RATE
        raw = tuple(
            RawSegment(
                text=s.text,
                start=s.start,
                end=min(s.end, duration),
                avg_logprob=s.avg_logprob,
                no_speech_prob=s.no_speech_prob,
                compression_ratio=s.compression_ratio,
                tokens=tuple(s.tokens),
                words=None if s.words is None else tuple(RawWord(w.start, w.end, w.word, w.probability) for w in s.words),
                temperature=s.temperature or 0.0,
            )
            for s in segments
        )
        return Decoded(raw, duration)

    def _room(self, options: DecodeOptions, language: str, prompt: str | None) -> int | None:
        """``options.max_new_tokens`` where the prompt leaves room for it, else None (Whisper's 448 in all):
        faster-whisper's sequential path refuses a prompt and a budget longer than that together, where the
        batched one (``_PromptedPipeline._generate``) clips the budget."""
        if options.max_new_tokens is None:
            return None
        tokenizer = self._tokenizer(options, language)
        half = self._model.max_length // 2 - 1  # faster-whisper keeps at most this many of each of the two
        used = sum(min(len(_encode(tokenizer, text)), half) for text in (prompt, options.hotwords) if text)
        room = self._model.max_length - used - 8  # <|startofprev|>, the start sequence and a timestamp
        return options.max_new_tokens if options.max_new_tokens <= room else None

    def _forward(self, windows: Sequence[np.ndarray], previous: list[list[int]], options: DecodeOptions,
                 tokenizer: Tokenizer, language: str, words: bool, timestamps: bool) -> list[Decoded]:
        frames = _encoder_frames(windows, options.encoder_padding_seconds)
        features = np.stack([pad_or_trim(self._model.feature_extractor(w)[..., :-1], length=frames) for w in windows])
        metadata = [{"offset": 0.0, "duration": len(w) / SAMPLE_RATE} for w in windows]
        # A pipeline per call: it holds the call's state (the prompts in, the tokens out, and the last word end,
        # which it would carry into the next batch's first-word heuristics), so calls from several threads and
        # consecutive batches stay apart.
        pipeline = _PromptedPipeline(self._model, previous)
        fw_options = self._options(options, tokenizer, language, words, timestamps)
        outputs = pipeline.decode(features, tokenizer, metadata, fw_options)
        return [
            Decoded(tuple(_raw_segment(item, words) for item in window),
                    _complete(tokens, tokenizer, len(audio) / SAMPLE_RATE, timestamps))
            for window, tokens, audio in zip(outputs, pipeline.tokens, windows, strict=True)
        ]

    # -- internals -------------------------------------------------------------------------------------------

    def _tokenizer(self, options: DecodeOptions, language: str) -> Tokenizer:
        return Tokenizer(self._model.hf_tokenizer, self.is_multilingual, task=options.task,
                         language=language if self.is_multilingual else None)

    def _options(
        self, options: DecodeOptions, tokenizer: Tokenizer, language: str, words: bool, timestamps: bool
    ) -> TranscriptionOptions:
        values = dict(self._option_defaults)
        values.update(
            beam_size=options.beam_size,
            log_prob_threshold=options.log_prob_threshold,
            no_speech_threshold=options.no_speech_threshold,
            compression_ratio_threshold=options.compression_ratio_threshold,
            temperatures=[options.temperature[0]],
            initial_prompt=options.prompt_for(language),
            suppress_tokens=get_suppressed_tokens(tokenizer, values["suppress_tokens"]),
            without_timestamps=not timestamps,
            word_timestamps=words,
            prepend_punctuations=PREPEND_PUNCTUATION,
            append_punctuations=APPEND_PUNCTUATION,
            max_new_tokens=options.max_new_tokens,
            hotwords=options.hotwords,
            # What BatchedInferencePipeline.transcribe itself fixes for batched decoding:
            condition_on_previous_text=False,
            max_initial_timestamp=0.0,
            clip_timestamps="0",
            hallucination_silence_threshold=None,
            multilingual=False,
        )
        return TranscriptionOptions(**values)


class _PromptedPipeline(BatchedInferencePipeline):
    """faster-whisper's batched pipeline, with a previous-text prompt of its own for each window of the batch,
    and, on a CPU, windows encoded and aligned one at a time around the batched beam search.

    ``generate_segment_batched`` gives every row the same prompt; the override builds one per row from
    ``previous``, the token ids of the text that came before each window (the Mandarin prompt, then the preceding
    window's text), as faster-whisper's sequential path conditions on previous text.

    Encoding and aligning a batch at once hold a score matrix per head for every window of it: 280 MB more at
    the peak each for four 30 s windows of base, and the reason ``transcribe`` peaked at 860 MB on the 500
    shared clips (661 MB now; faster-whisper's sequential path 448-464 MB). One window at a time they hold
    almost none of it (17 MB and 0 MB more) and take less CPU time, not more (four windows, base, int8:
    encoding 3.55 against 4.05 CPU s, aligning 150 tokens each 0.85 against 1.07 s). Only the beam search
    gains from the batch. Aligned one by one, each window's first-word heuristics also start afresh, rather
    than from the last word of the window before it in the batch. A GPU does all three at once.
    """

    tokens: list[list[int]]  # after each decode(): the tokens each row decoded, unfinished segment included

    def __init__(self, model: WhisperModel, previous: list[list[int]]) -> None:
        super().__init__(model)
        self.previous = previous  # one previous-text token list per row
        self._generated: tuple[ctranslate2.StorageView, list[dict[str, Any]]] | None = None

    def decode(self, features: np.ndarray, tokenizer: Tokenizer, metadata: list[dict[str, float]],
               options: TranscriptionOptions) -> list[list[dict[str, Any]]]:
        """Each window's segments, as faster-whisper's ``forward`` returns them."""
        if self.model.model.device != "cpu":
            return self.forward(features, tokenizer, metadata, options)
        encoded = np.concatenate([np.asarray(self.model.encode(f)) for f in features])
        _, outputs = self._generate(ctranslate2.StorageView.from_array(encoded), tokenizer, options)
        windows = []
        for k, output in enumerate(outputs):
            self._generated = (ctranslate2.StorageView.from_array(encoded[k : k + 1]), [output])
            self.last_speech_timestamp = 0.0
            windows += self.forward(features[k : k + 1], tokenizer, metadata[k : k + 1], options)
        self._generated = None
        return windows

    def generate_segment_batched(self, features: np.ndarray, tokenizer: Tokenizer, options: TranscriptionOptions):
        if self._generated is not None:  # forward() of one window: its share of the batch, decoded already
            return self._generated
        return self._generate(self.model.encode(features), tokenizer, options)

    def _generate(self, encoder_output: ctranslate2.StorageView, tokenizer: Tokenizer,
                  options: TranscriptionOptions) -> tuple[ctranslate2.StorageView, list[dict[str, Any]]]:
        model = self.model
        prompts = [
            model.get_prompt(tokenizer, previous_tokens=tokens, without_timestamps=options.without_timestamps,
                             hotwords=options.hotwords)
            for tokens in self.previous
        ]
        longest = max(len(p) for p in prompts)
        max_length = model.max_length if options.max_new_tokens is None else longest + options.max_new_tokens
        results = model.model.generate(
            encoder_output,
            prompts,
            beam_size=options.beam_size,
            patience=options.patience,
            length_penalty=options.length_penalty,
            max_length=min(max_length, model.max_length),
            suppress_blank=options.suppress_blank,
            suppress_tokens=options.suppress_tokens,
            return_scores=True,
            return_no_speech_prob=True,
            sampling_temperature=options.temperatures[0],
            repetition_penalty=options.repetition_penalty,
            no_repeat_ngram_size=options.no_repeat_ngram_size,
        )
        output = []
        for result in results:
            length = len(result.sequences_ids[0])
            logprob = result.scores[0] * (length**options.length_penalty)
            output.append({"avg_logprob": logprob / (length + 1), "no_speech_prob": result.no_speech_prob,
                           "tokens": result.sequences_ids[0]})
        self.tokens = [row["tokens"] for row in output]
        return encoder_output, output


def _encoder_frames(windows: Sequence[np.ndarray], padding_seconds: float | None) -> int:
    """Feature frames the encoder hears for this batch: 30 s, or the longest window plus the padding, rounded up to
    whole seconds (DecodeOptions.encoder_padding_seconds). CTranslate2 encodes any length up to 30 s."""
    if padding_seconds is None:
        return N_FRAMES
    seconds = max(len(w) for w in windows) / SAMPLE_RATE + padding_seconds
    return min(N_FRAMES, FRAMES_PER_SECOND * math.ceil(seconds))


def _complete(tokens: list[int], tokenizer: Tokenizer, duration: float, timestamps: bool) -> float:
    """How far into the window the text is final (faster-whisper drops an unfinished last segment)."""
    return split_at_timestamps(tokens, tokenizer.timestamp_begin, duration)[1] if timestamps else duration


def _encode(tokenizer: Tokenizer, text: str | None) -> list[int]:
    return tokenizer.encode(text.strip()) if text and text.strip() else []


def _batched_defaults() -> dict[str, Any]:
    """TranscriptionOptions' fields, valued from the defaults of faster-whisper's public batched transcribe()."""
    names = [f.name for f in dataclasses.fields(TranscriptionOptions)]
    params = inspect.signature(BatchedInferencePipeline.transcribe).parameters
    defaults = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}
    if "temperature" in defaults:
        defaults["temperatures"] = list(np.atleast_1d(defaults["temperature"]))[:1]
    values = {name: defaults[name] for name in names if name in defaults}
    # Set by _options for every decode, whether or not transcribe() has a default for them.
    values.setdefault("temperatures", [0.0])
    for name in ("clip_timestamps", "max_initial_timestamp", "prompt_reset_on_temperature",
                 "hallucination_silence_threshold", "initial_prompt", "hotwords", "max_new_tokens"):
        values.setdefault(name, None)
    unknown = [name for name in names if name not in values]
    if unknown:
        raise ModelLoadError(
            f"faster-whisper {version('faster-whisper')} has decoding options whisper-zh does not know "
            f"({', '.join(unknown)}); install the tested release: pip install 'faster-whisper>=1.1,<1.3'"
        )
    return values


def _raw_segment(item: dict[str, Any], words: bool) -> RawSegment:
    aligned = None
    if words:
        aligned = tuple(RawWord(w["start"], w["end"], w["word"], w["probability"]) for w in item.get("words") or [])
    return RawSegment(
        text=item["text"],
        start=float(item["start"]),
        end=float(item["end"]),
        avg_logprob=float(item["avg_logprob"]),
        no_speech_prob=float(item["no_speech_prob"]),
        compression_ratio=float(item.get("compression_ratio", 0.0)),
        tokens=tuple(item.get("tokens", ())),
        words=aligned,
    )


def _load_error(exc: Exception, device: str, compute_type: str) -> str:
    """One line that says what to use instead, for the load errors users meet (float16 on a CPU, no GPU)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "compute type" in text.lower():
        hint = "on a CPU use --compute-type int8 (default), int8_float32 or float32"
        if device != "cpu":
            hint = "this device supports other types: try --compute-type float16, int8_float16 or int8"
        return f"--compute-type {compute_type} is not supported on --device {device}: {hint}"
    if "cuda" in text.lower() or device == "cuda":
        return f"--device {device}: no usable CUDA GPU ({text}); use --device cpu"
    return f"cannot load the model on --device {device} with --compute-type {compute_type}: {text}"

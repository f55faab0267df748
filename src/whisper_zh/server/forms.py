"""A transcription or translation request, parsed and checked from its form fields into a frozen value.

Everything a request can get wrong is found here, before the request is admitted to the model queue: the model
name (404), the response format, timestamp granularities, script, temperature and language (400, naming the
parameter). The decoding options are the server's defaults changed by the request; the rules that depend on
several fields (the Mandarin prompt is for Mandarin only) stay in :class:`~whisper_zh.decoding.DecodeOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from whisper_zh.decoding import SCRIPTS, DecodeOptions, Task
from whisper_zh.diarize import DiarizeOptions
from whisper_zh.server import values
from whisper_zh.server.errors import ApiError

OPENAI_DEFAULT_MODEL = "whisper-1"  # what OpenAI's clients send; an alias of the served model
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json", "diarized_json")
GRANULARITIES = ("segment", "word")


@dataclass(frozen=True)
class ServedModel:
    """The one model this server serves, as requests and /health see it."""

    name: str
    languages: frozenset[str]
    multilingual: bool
    engine: str
    created: int
    aliases: tuple[str, ...] = (OPENAI_DEFAULT_MODEL,)
    aligns_words: bool = False  # the engine gives word times (subtitle cues are cut at them)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def check_name(self, name: str) -> None:
        if name not in self.names:
            raise ApiError(
                404, f"model '{name}' does not exist here; this server serves '{self.name}' "
                f"(alias '{OPENAI_DEFAULT_MODEL}')", param="model", code="model_not_found",
            )


@dataclass(frozen=True)
class TranscriptionRequest:
    """A checked request: what to decode the upload with and how to answer."""

    task: Task
    response_format: str = "json"
    language: str | None = None  # None: the server's default; "auto": detect
    prompt: str | None = None
    temperature: float | None = None
    granularities: tuple[str, ...] = ()
    stream: bool = False
    script: str | None = None
    allow_truncated: bool = False
    numbers: bool = False
    diarize: bool = False  # whisper-zh: label speakers (response_format=diarized_json asks for it too)
    speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None

    @classmethod
    def parse(cls, served: ServedModel, *, model: str, **fields: Any) -> TranscriptionRequest:
        """Check the form's fields (raises :class:`ApiError`) and build the request."""
        served.check_name(model)
        fields["granularities"] = tuple(fields.get("granularities") or ())
        fields["script"] = fields.get("script") or None
        try:  # every field through the one validator (server/values.py)
            fields["language"] = values.language("language", fields.get("language"), served.languages)
            values.prompt("prompt", fields.get("prompt"))
            values.choice("script", fields["script"], SCRIPTS)
            values.number("temperature", fields.get("temperature"), 0.0, 1.0)
            values.choice("response_format", fields.get("response_format", "json"), RESPONSE_FORMATS)
        except values.BadValue as exc:
            code = "unsupported_language" if exc.param == "language" else None
            raise ApiError(400, str(exc), param=exc.param, code=code) from None
        if fields.get("response_format") == "diarized_json":
            fields["diarize"] = True
        request = cls(**fields)
        request._check_format()
        request._check_values(served)
        return request

    @property
    def words(self) -> bool:
        return "word" in self.granularities

    @property
    def diarize_options(self) -> DiarizeOptions | None:
        if not self.diarize:
            return None
        return DiarizeOptions(speakers=self.speakers, min_speakers=self.min_speakers, max_speakers=self.max_speakers)

    def options(self, base: DecodeOptions, *, aligns_words: bool = False) -> DecodeOptions:
        """The server's decoding defaults changed by this request. Subtitles (srt, vtt, and the renderings a
        streamed answer carries) are cut into readable cues at word times, so they ask for them where the engine
        has them."""
        language = base.language if self.language is None else (None if self.language == "auto" else self.language)
        subtitles = aligns_words and (self.stream or self.response_format in ("srt", "vtt"))
        changes: dict[str, Any] = {"task": self.task, "language": language,
                                   "word_timestamps": self.words or base.word_timestamps or subtitles}
        if self.prompt is not None and self.prompt.strip():
            changes["initial_prompt"] = self.prompt  # DecodeOptions.prompt_for decides where the default applies
        if self.temperature:  # OpenAI: 0 (or unset) means "start greedy, raise the temperature when decoding fails"
            changes["temperature"] = tuple(sorted({self.temperature} | {t for t in base.temperature
                                                                         if t > self.temperature}))
        if self.script:
            changes["script"] = self.script
        if self.numbers:
            changes["numbers"] = True
        if self.diarize:
            changes["diarize"] = self.diarize_options
        return base.with_(**changes)

    def _check_format(self) -> None:
        if self.response_format not in RESPONSE_FORMATS:
            raise ApiError(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}",
                           param="response_format")
        bad = [g for g in self.granularities if g not in GRANULARITIES]
        if bad:
            raise ApiError(400, f"timestamp_granularities[] must be segment or word, not {bad[0]!r}",
                           param="timestamp_granularities[]")
        if self.granularities and self.response_format != "verbose_json":
            raise ApiError(400, "timestamp_granularities[] needs response_format=verbose_json",
                           param="timestamp_granularities[]")

    def _check_values(self, served: ServedModel) -> None:
        self._check_speakers()
        if self.task == "translate" and not served.multilingual:
            raise ApiError(400, f"model '{served.name}' is English-only and cannot translate", param="model")
        if self.script is not None and self.script not in SCRIPTS:
            raise ApiError(400, "script must be simplified, traditional or as-is", param="script")
        if self.temperature is not None and not 0.0 <= self.temperature <= 1.0:
            raise ApiError(400, "temperature must be between 0 and 1", param="temperature")
        if self.language not in (None, "auto") and served.languages and self.language not in served.languages:
            raise ApiError(
                400, f"language '{self.language}' is not one this model knows: use an ISO 639-1 code such as "
                "zh, en or yue, or 'auto' to detect it", param="language", code="unsupported_language",
            )

    def _check_speakers(self) -> None:
        counts = {"speakers": self.speakers, "min_speakers": self.min_speakers, "max_speakers": self.max_speakers}
        given = [name for name, value in counts.items() if value is not None]
        if given and not self.diarize:
            raise ApiError(400, f"{given[0]} needs diarize=true or response_format=diarized_json", param=given[0])
        if self.diarize and self.task != "transcribe":
            raise ApiError(400, "diarize is for transcriptions, not translations", param="diarize")
        try:
            self.diarize_options  # noqa: B018 - checks the values
        except ValueError as exc:
            message = str(exc).replace("min-speakers", "min_speakers").replace("max-speakers", "max_speakers")
            raise ApiError(400, message, param=given[0] if given else "diarize") from exc

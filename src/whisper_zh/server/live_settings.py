"""What a live client chose for its stream (audio format and rate, language, prompt, script), from the URL's query
and from session updates in each of the shapes clients send, and how the session is described back to them.

Three shapes of session update are read (all fields optional):

- whisper-zh's own, flat: ``input_audio_format`` (``pcm16``, ``float32``), ``sample_rate``, ``script``,
  ``input_audio_transcription: {language, prompt}``; the same fields as the URL's query.
- OpenAI's older ``transcription_session.update``: ``input_audio_format`` (``pcm16``; G.711 is refused),
  ``input_audio_transcription: {model, language, prompt}``, ``turn_detection``, ``input_audio_noise_reduction``.
- OpenAI's current ``session.update`` with ``{"type": "transcription", "audio": {"input": {"format": {"type":
  "audio/pcm", "rate": 24000}, "transcription": {...}, "turn_detection": ..., "noise_reduction": ...}}}``.

The rate rule. OpenAI's ``pcm16`` is 24 kHz, and a client written for OpenAI never says so; whisper-zh's own
clients (its web page, the README's examples, bench/live.py) send 16 kHz, with or without ``sample_rate``. So:
an explicit rate wins (``sample_rate`` in the query or a session update, or ``audio.input.format.rate``; the two
in one update must agree); without one, a connection made the way OpenAI's clients make it (``intent=transcription``
in the URL, or an ``OpenAI-Beta: realtime`` header) or a format given in OpenAI's current shape without a rate is
24 kHz, and anything else 16 kHz, as before.

An update is applied whole or not at all: :meth:`SessionSettings.updated` checks every field and returns a new
value, or raises :class:`~whisper_zh.server.values.BadValue` and leaves the session as it was. What cannot be
honoured (G.711 audio, no turn detection, noise reduction, log-probabilities, a session type other than
transcription) is refused rather than ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.decoding import SCRIPTS, DecodeOptions
from whisper_zh.server import values
from whisper_zh.server.values import BadValue

FORMATS = ("pcm16", "float32")  # little-endian mono samples
OPENAI_PCM_RATE = 24000  # OpenAI's pcm16 / audio/pcm
SAMPLE_RATES = (8000, 96000)  # accepted input rates (resampled to 16 kHz)
_OPENAI_FORMATS = {"audio/pcm": "pcm16", "pcm16": "pcm16", "float32": "float32"}
_G711 = ("audio/pcmu", "audio/pcma", "g711_ulaw", "g711_alaw")


@dataclass(frozen=True)
class SessionSettings:
    """A stream's choices. ``openai``: the client connected the way OpenAI's clients do (24 kHz pcm16)."""

    decode: DecodeOptions
    model: str
    languages: frozenset[str]
    input_format: str = "pcm16"
    sample_rate: int = SAMPLE_RATE
    openai: bool = False

    @classmethod
    def from_query(cls, query: Any, headers: dict[str, str], decode: DecodeOptions, model: str,
                   languages: frozenset[str]) -> SessionSettings:
        """The server's defaults, changed by the URL's query (the same fields as a flat session update)."""
        intent = values.choice("intent", query.get("intent"), ("transcription",))
        openai = intent is not None or "realtime" in headers.get("openai-beta", "")
        settings = cls(decode, model, languages, sample_rate=OPENAI_PCM_RATE if openai else SAMPLE_RATE,
                       openai=openai)
        return settings.updated({"input_audio_format": query.get("input_audio_format"),
                                 "sample_rate": query.get("sample_rate"), "script": query.get("script"),
                                 "input_audio_transcription": {"language": query.get("language"),
                                                               "prompt": query.get("prompt")}})

    def updated(self, session: Any, *, prefix: str = "session.") -> SessionSettings:
        """These settings changed by ``session`` (any of the three shapes), all checked first: a new value, or
        BadValue and nothing changed."""
        if not isinstance(session, dict):
            raise BadValue("session", "a session update needs a 'session' object", code="invalid_event")
        flat = _flatten(session, prefix)
        fmt = values.choice(prefix + "input_audio_format", flat.get("format"), FORMATS)
        rate = values.integer(prefix + "sample_rate", session.get("sample_rate"), *SAMPLE_RATES)
        format_rate = flat.get("rate")
        if rate is not None and format_rate is not None and rate != format_rate:
            raise BadValue(prefix + "sample_rate", f"{rate} contradicts audio.input.format.rate {format_rate}")
        rate = rate if rate is not None else format_rate
        decode = _decode_changes(self.decode, flat, self.languages, prefix)
        return replace(self, decode=decode, input_format=fmt or self.input_format,
                       sample_rate=rate if rate is not None else self.sample_rate)

    def describe(self, session_id: str, *, pause_ms: int, limits: dict[str, float], current: bool = False
                 ) -> dict[str, Any]:
        """The session as clients read it: whisper-zh's flat fields, and with ``current`` also OpenAI's current
        shape (``type``, ``audio``), for a client that updated it in that shape."""
        d = self.decode
        transcription = {"model": self.model, "language": d.language, "prompt": d.initial_prompt}
        turn_detection = {"type": "server_vad", "silence_duration_ms": pause_ms}
        described: dict[str, Any] = {
            "id": session_id, "object": "realtime.transcription_session", "input_audio_format": self.input_format,
            "input_audio_transcription": transcription, "turn_detection": turn_detection,
            "sample_rate": self.sample_rate, "script": d.script, "limits": limits,
        }
        if current:
            fmt = {"type": "audio/pcm" if self.input_format == "pcm16" else self.input_format,
                   "rate": self.sample_rate}
            described.update(type="transcription", audio={"input": {
                "format": fmt, "transcription": transcription, "turn_detection": turn_detection,
                "noise_reduction": None}})
        return described


def is_current_shape(session: Any) -> bool:
    """Whether a session update is in OpenAI's current shape (``type``/``audio``)."""
    return isinstance(session, dict) and ("audio" in session or "type" in session)


def _flatten(session: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The fields of any of the three shapes, as one flat dict: format, rate, transcription, script; refuses
    what the server cannot honour."""
    flat: dict[str, Any] = {"script": session.get("script")}
    if is_current_shape(session):
        kind = session.get("type", "transcription")
        if kind != "transcription":
            raise BadValue(prefix + "type", f"this server only transcribes: the session type must be "
                           f"'transcription', not {kind!r}")
        audio = _object(session.get("audio"), prefix + "audio")
        given = _object(audio.get("input"), prefix + "audio.input")
        fmt = given.get("format")
        if fmt is not None:
            fmt = _object(fmt, prefix + "audio.input.format")
            flat["format"] = _format(fmt.get("type"), prefix + "audio.input.format.type")
            flat["rate"] = values.integer(prefix + "audio.input.format.rate", fmt.get("rate", OPENAI_PCM_RATE),
                                          *SAMPLE_RATES)
        flat["transcription"] = _object(given.get("transcription"), prefix + "audio.input.transcription")
        _unsupported(given, "turn_detection", "noise_reduction", prefix + "audio.input.")
        if session.get("include"):
            raise BadValue(prefix + "include", "this server sends no log-probabilities")
    else:
        if session.get("input_audio_format") is not None:
            flat["format"] = _format(session["input_audio_format"], prefix + "input_audio_format")
        flat["transcription"] = _object(session.get("input_audio_transcription"),
                                        prefix + "input_audio_transcription")
        _unsupported(session, "turn_detection", "input_audio_noise_reduction", prefix)
        if session.get("include"):
            raise BadValue(prefix + "include", "this server sends no log-probabilities")
    return flat


def _format(value: Any, param: str) -> str:
    if value in _G711:
        raise BadValue(param, f"{value} (G.711) is not supported: send audio/pcm (pcm16)")
    kind = _OPENAI_FORMATS.get(value) if isinstance(value, str) else None
    if kind is None:
        raise BadValue(param, f"must be one of audio/pcm, {', '.join(FORMATS)}, not {value!r}"[:200])
    return kind


def _unsupported(given: dict[str, Any], turn_key: str, noise_key: str, prefix: str) -> None:
    """Turn detection is always the server's voice activity detection; there is no noise reduction."""
    if turn_key in given:
        turn = given[turn_key]
        if not isinstance(turn, dict) or turn.get("type", "server_vad") != "server_vad":
            raise BadValue(prefix + turn_key, "this server always ends utterances at pauses: only "
                           "{\"type\": \"server_vad\"} is supported (its own silence length applies)")
    if given.get(noise_key) is not None:
        raise BadValue(prefix + noise_key, "this server does no noise reduction: leave it null")


def _object(value: Any, param: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadValue(param, "must be an object")
    return value


def _decode_changes(decode: DecodeOptions, flat: dict[str, Any], languages: frozenset[str],
                    prefix: str) -> DecodeOptions:
    transcription = flat.get("transcription") or {}
    values.text(prefix + "input_audio_transcription.model", transcription.get("model"), 100)
    changes: dict[str, Any] = {}
    code = values.language(prefix + "input_audio_transcription.language", transcription.get("language"),
                           languages)
    if code is not None:
        changes["language"] = None if code == "auto" else code
    prompt = values.prompt(prefix + "input_audio_transcription.prompt", transcription.get("prompt"))
    if prompt is not None:
        changes["initial_prompt"] = prompt or None
    script = values.choice(prefix + "script", flat.get("script"), SCRIPTS)
    if script is not None:
        changes["script"] = script
    return decode.with_(**changes) if changes else decode

"""The one validator for what clients type: every query parameter, form field and session field the server reads
goes through these functions, which return the checked value or raise :class:`BadValue` (the parameter's name and
a one-line message). The HTTP routes answer it with 400, the live endpoint with an ``error`` event.

Numbers are parsed here, not with ``int()``/``float()`` on raw text: ``str.isdigit`` accepts "²" (U+00B2), which
``int`` then refuses, and ``float`` accepts "nan", "inf" and "１６０００" (full-width digits).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from typing import Any

# Whisper reads at most 223 tokens of prompt (half its 448-token text context, less one); a token is at most a few
# characters (a Chinese character is one to three tokens), so a longer prompt is text the model never sees.
PROMPT_TOKENS = 223
MAX_PROMPT_CHARS = 4 * PROMPT_TOKENS

_INTEGER = re.compile(r"[+-]?[0-9]{1,12}")
_NUMBER = re.compile(r"[+-]?(?:[0-9]{1,12}(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")


class BadValue(ValueError):
    """A client's value the server cannot take: which parameter, and why, in one line."""

    def __init__(self, param: str, message: str, code: str = "invalid_value") -> None:
        super().__init__(f"{param}: {message}")
        self.param, self.message, self.code = param, message, code


def integer(param: str, value: Any, low: int, high: int) -> int | None:
    """An integer from ``low`` to ``high`` (ASCII digits or a JSON integer); None stays None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str) or not _INTEGER.fullmatch(str(value).strip()):
        raise BadValue(param, f"must be an integer from {low} to {high}, not {_shown(value)}")
    number_ = int(str(value).strip())
    if not low <= number_ <= high:
        raise BadValue(param, f"must be an integer from {low} to {high}, not {number_}")
    return number_


def number(param: str, value: Any, low: float, high: float) -> float | None:
    """A finite number from ``low`` to ``high`` (never NaN or infinite); None stays None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str) \
            or (isinstance(value, str) and not _NUMBER.fullmatch(value.strip())):
        raise BadValue(param, f"must be a number from {low:g} to {high:g}, not {_shown(value)}")
    parsed = float(value)
    if not math.isfinite(parsed) or not low <= parsed <= high:
        raise BadValue(param, f"must be a number from {low:g} to {high:g}, not {_shown(value)}")
    return parsed


def choice(param: str, value: Any, allowed: Collection[str]) -> str | None:
    """One of ``allowed``; None stays None."""
    if value is None:
        return None
    if not isinstance(value, str) or value not in allowed:
        raise BadValue(param, f"must be one of {', '.join(allowed)}, not {_shown(value)}")
    return value


def text(param: str, value: Any, max_chars: int) -> str | None:
    """A string of at most ``max_chars`` characters, without control characters other than newlines and tabs."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadValue(param, f"must be a string, not {_shown(value)}")
    if len(value) > max_chars:
        raise BadValue(param, f"is {len(value)} characters; at most {max_chars} are taken")
    if any(ord(ch) < 32 and ch not in "\n\t\r" for ch in value):
        raise BadValue(param, "must not hold control characters")
    return value


def prompt(param: str, value: Any) -> str | None:
    """A decoding prompt: no longer than the model can use."""
    try:
        return text(param, value, MAX_PROMPT_CHARS)
    except BadValue as exc:
        if isinstance(value, str) and len(value) > MAX_PROMPT_CHARS:
            raise BadValue(param, f"is {len(value)} characters; Whisper reads at most {PROMPT_TOKENS} tokens of "
                           f"prompt (about 200 Chinese characters), so at most {MAX_PROMPT_CHARS} characters are "
                           "taken") from None
        raise exc


def language(param: str, value: Any, known: Collection[str]) -> str | None:
    """A language code the model knows, lower-cased, or ``auto``; None or blank stays None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise BadValue(param, f"must be a language code such as zh, or auto, not {_shown(value)}")
    code = value.strip().lower()
    if code != "auto" and known and code not in known:
        raise BadValue(param, f"unknown language '{_clip(code)}': use a language code such as zh, en or yue, "
                       "or auto")
    return code


def _shown(value: Any) -> str:
    return repr(_clip(value)) if isinstance(value, str) else type(value).__name__ if not isinstance(
        value, int | float) else repr(value)


def _clip(value: str, limit: int = 40) -> str:
    return value if len(value) <= limit else value[:limit] + "..."

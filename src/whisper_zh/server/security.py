"""Browser-facing policy: which web pages may call the API (origins), and the security headers on every answer.

Cross-origin use is off by default. A browser sends ``Origin`` (and ``Sec-Fetch-Site``) with a cross-site POST,
and a plain form POST needs no CORS preflight, so without a check any web page could make its visitors'
browsers spend this server's CPU. The guard refuses an API request whose origin is neither this server's own
(the ``Host`` or ``X-Forwarded-Host`` it was sent to) nor one of ``--cors-origin``; clients that are not
browsers send no ``Origin`` and are not affected. Allowed origins also get CORS headers (Starlette's
CORSMiddleware, added by the app).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

# The page and its script, style and API calls all come from this server; nothing inline, no third party.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


def origin_allowed(headers: dict[str, str], allowed: Iterable[str]) -> bool:
    """Whether a request may proceed given where the browser says it comes from (lower-cased header names)."""
    origin = headers.get("origin")
    if origin is None:  # not a browser's cross-origin request (curl, SDKs, same-origin GET)
        return headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")
    if origin in allowed:
        return True
    netloc = urlsplit(origin).netloc.lower() if origin != "null" else ""
    own = {headers.get("host", "").lower(), headers.get("x-forwarded-host", "").split(",")[0].strip().lower()}
    return bool(netloc) and netloc in own


class SecurityHeaders:
    """Pure-ASGI middleware: adds :data:`SECURITY_HEADERS` to every HTTP response that does not set them."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

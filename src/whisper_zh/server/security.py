"""Browser-facing policy: which web pages may call the API (origins), which names the server answers to (``Host``),
whose forwarding headers are believed (proxies), and the security headers on every answer.

Cross-origin use is off by default. A browser sends ``Origin`` (and ``Sec-Fetch-Site``) with a cross-site POST,
and a plain form POST needs no CORS preflight, so without a check any web page could make its visitors'
browsers spend this server's CPU. The guard refuses an API request whose origin is neither this server's own
(the ``Host`` or ``X-Forwarded-Host`` it was sent to) nor one of ``--cors-origin``; clients that are not
browsers send no ``Origin`` and are not affected. Allowed origins also get CORS headers (Starlette's
CORSMiddleware, added by the app).

DNS rebinding: a page on ``evil.example`` whose name is made to resolve to 127.0.0.1 talks to a local server as a
same-origin page (its ``Origin`` and ``Host`` agree). The defence is Jupyter's: a server bound to a loopback address
answers only requests whose ``Host`` is an IP address, ``localhost`` (or a name under it), or a name given with
``--allowed-hosts`` (``*`` turns the check off; ``.example.com`` allows the domain and its subdomains). A server
bound to another address checks ``Host`` only when ``--allowed-hosts`` is given.

Proxies: ``X-Forwarded-For`` and ``X-Forwarded-Host`` are believed only from the addresses of
``--forwarded-allow-ips`` (default none). uvicorn's own proxy handling (which trusts 127.0.0.1 by default) is off;
:class:`ForwardedHeaders` runs uvicorn's ``ProxyHeadersMiddleware`` for trusted peers only, and marks the scope
so that the origin rule reads ``X-Forwarded-Host`` only from them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

PROXIED = "whisper_zh.proxied"  # scope key: the peer is a trusted proxy
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")

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


def origin_allowed(headers: dict[str, str], allowed: Iterable[str], *, proxied: bool = False) -> bool:
    """Whether a request may proceed given where the browser says it comes from (lower-cased header names);
    ``proxied``: the peer is a trusted proxy, whose ``X-Forwarded-Host`` names the server too."""
    origin = headers.get("origin")
    if origin is None:  # not a browser's cross-origin request (curl, SDKs, same-origin GET)
        return headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")
    if origin in allowed:
        return True
    netloc = urlsplit(origin).netloc.lower() if origin != "null" else ""
    own = {headers.get("host", "").lower()}
    if proxied:
        own.add(headers.get("x-forwarded-host", "").split(",")[0].strip().lower())
    return bool(netloc) and netloc in own


def host_allowed(host_header: str, bind_host: str, allowed_hosts: Iterable[str]) -> bool:
    """Whether a request's ``Host`` names this server (see the module docstring: DNS rebinding)."""
    allowed = [a.strip().lower() for a in allowed_hosts if a.strip()]
    if not allowed and not _is_loopback(bind_host):
        return True
    if "*" in allowed:
        return True
    host = _hostname(host_header)
    if not host:
        return False
    if _is_ip(host) or host == "localhost" or host.endswith(".localhost") or host == bind_host.lower():
        return True
    return any(host == a or (a.startswith(".") and (host.endswith(a) or host == a[1:])) for a in allowed)


def _hostname(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[1:host.find("]")] if "]" in host else ""
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(bind_host: str) -> bool:
    host = bind_host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ForwardedHeaders:
    """Pure-ASGI middleware, outermost: for a peer in ``trusted`` (addresses or networks), uvicorn's
    ProxyHeadersMiddleware takes the client address and scheme from ``X-Forwarded-For``/``-Proto``, and the scope
    is marked :data:`PROXIED`; anyone else's forwarding headers change nothing."""

    def __init__(self, app: Any, trusted: Iterable[str] = ()) -> None:
        self.app = app
        trusted = list(trusted)
        self.proxy = ProxyHeadersMiddleware(app, trusted_hosts=trusted) if trusted else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or self.proxy is None:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        scope[PROXIED] = bool(client) and client[0] in self.proxy.trusted_hosts
        await self.proxy(scope, receive, send)


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

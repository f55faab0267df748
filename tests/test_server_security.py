"""Issue 30's server risks, decided: DNS rebinding (the Host check), forwarding headers believed only from trusted
proxies, API keys redacted from logs, wrong keys slowed down. Real server on a free port, real HTTP clients; no
decoding (each request is refused or answered before the model)."""

from __future__ import annotations

import logging
import socket
import time

import httpx
import pytest

from whisper_zh.server import ServerConfig, create_app, serve_in_thread
from whisper_zh.server.runner import RedactSecrets, uvicorn_config

websockets = pytest.importorskip("websockets")
from websockets.sync.client import connect  # noqa: E402


def _running(transcriber, **config):  # noqa: ANN001, ANN202
    return serve_in_thread(create_app(ServerConfig(model="base", **config), transcriber=transcriber))


def test_a_rebinding_host_name_is_refused_on_a_loopback_server(transcriber):
    """A page on evil.example whose name resolves to 127.0.0.1 sends Host: evil.example; the server answers only
    IP addresses, localhost and the names given with --allowed-hosts (Jupyter's rule)."""
    with _running(transcriber, allowed_hosts=(".asr.example",)) as base:
        port = base.rsplit(":", 1)[1]
        for host, status in ((f"evil.example:{port}", 403), ("evil.example", 403), (f"localhost:{port}", 200),
                             (f"127.0.0.1:{port}", 200), (f"[::1]:{port}", 200), ("asr.example", 200),
                             (f"eu.asr.example:{port}", 200), ("notasr.example", 403), ("", 403)):
            for path in ("/health", "/v1/models", "/"):
                response = httpx.get(base + path, headers={"Host": host}, timeout=30)
                assert response.status_code == status, (host, path, response.text)
            if status == 403:
                assert response.json()["error"]["code"] == "host_not_allowed"
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:  # the URL's name, the server's socket
            connect(f"ws://evil.example:{port}/v1/realtime", sock=socket.create_connection(("127.0.0.1", int(port))))
        assert refused.value.response.status_code == 403
    with _running(transcriber, bind_host="0.0.0.0") as base:  # not loopback, no --allowed-hosts: not checked
        assert httpx.get(base + "/health", headers={"Host": "asr.lan"}, timeout=30).status_code == 200


def test_forwarding_headers_are_believed_only_from_trusted_proxies(transcriber):
    """X-Forwarded-Host made a foreign page's origin look like the server's own; X-Forwarded-For would let one
    address pose as many to escape the wrong-key limit. Both count only from --forwarded-allow-ips."""
    foreign = {"Origin": "https://evil.example", "X-Forwarded-Host": "evil.example"}
    with _running(transcriber) as base:
        assert httpx.get(base + "/v1/models", headers=foreign, timeout=30).status_code == 403
    with _running(transcriber, forwarded_allow_ips=("127.0.0.1",)) as base:  # the proxy says it is its own name
        assert httpx.get(base + "/v1/models", headers=foreign, timeout=30).status_code == 200

    for trusted, expected in (((), 429), (("127.0.0.1",), 401)):
        with _running(transcriber, api_key="sesame", max_key_failures=3, forwarded_allow_ips=trusted) as base:
            statuses = [httpx.get(base + "/v1/models", timeout=30, headers={
                "Authorization": "Bearer wrong", "X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(4)]
            assert statuses == [401, 401, 401, expected], (trusted, statuses)


def test_wrong_keys_from_one_address_are_slowed_down(transcriber):
    with _running(transcriber, api_key="sesame", max_key_failures=3, key_failure_window_s=4.0) as base:
        def get(key: str) -> httpx.Response:
            return httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)

        assert [get("wrong").status_code for _ in range(3)] == [401, 401, 401]
        locked = get("sesame")  # while locked out, no key is looked at, the right one neither
        assert locked.status_code == 429 and locked.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(locked.headers["Retry-After"]) <= 4
        url = base.replace("http://", "ws://") + "/v1/realtime"
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:  # the live endpoint shares the count
            connect(url, additional_headers={"Authorization": "Bearer sesame"})
        assert refused.value.response.status_code == 429
        time.sleep(int(locked.headers["Retry-After"]) + 0.1)
        assert get("sesame").status_code == 200
        assert get("wrong").status_code == 401  # a right key cleared the count


def test_api_keys_in_urls_never_reach_the_access_log(transcriber):
    """A WebSocket client may put its key in the URL; uvicorn logs the path with its query."""
    app = create_app(ServerConfig(model="base", api_key="sesame-123"), transcriber=transcriber)
    uvicorn_config(app)  # installs the filter on uvicorn's loggers
    for name in ("uvicorn.access", "uvicorn.error"):
        assert any(isinstance(f, RedactSecrets) for f in logging.getLogger(name).filters), name
    redact = next(f for f in logging.getLogger("uvicorn.access").filters if isinstance(f, RedactSecrets))
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", "/v1/realtime?api_key=sesame-123&language=zh&token=t0k",
                                "1.1", 101), None)
    assert redact.filter(record)
    line = record.getMessage()
    assert "sesame-123" not in line and "t0k" not in line and "language=zh" in line, line
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, '%s - "WebSocket %s" [accepted]',
                               ("127.0.0.1:5000", "/v1/realtime?intent=transcription&key=sesame-123"), None)
    redact.filter(record)
    assert "sesame-123" not in record.getMessage() and "intent=transcription" in record.getMessage()

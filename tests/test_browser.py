"""The web page at `/` in a real browser: Debian's headless Chromium driven by Playwright.

Uploads a shared AISHELL clip, waits for the streamed transcript, scores it (CER) against the reference, checks
the Traditional output, copy and the srt download, records from a (fake, file-backed) microphone, and saves
screenshots under out/test-output/browser/ (or $WHISPER_ZH_TEST_OUTPUT).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from whisper_zh.metrics import cer
from whisper_zh.normalize import TextNormalizer, convert_script
from whisper_zh.server import ServerConfig, create_app, serve_in_thread

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "aishell1-sample-S0150"
CHROMIUM = Path("/usr/bin/chromium")
CLIP_ID = "BAC009S0150W0121"  # 其中有两个是内因的指标 (has characters that differ in Traditional)
MAX_CER = 0.35

if not CHROMIUM.exists():
    pytestmark = pytest.mark.skip(
        reason="!!! BROWSER TEST SKIPPED: /usr/bin/chromium is missing. Install Debian's chromium "
        "(`make setup` does, as root: apt-get install chromium) to test the web page in a real browser !!!"
    )
elif not (DATA / "manifest.jsonl").is_file():
    pytestmark = pytest.mark.skip(reason=f"shared AISHELL data not found at {DATA}")


def _output_dir() -> Path:
    out = Path(os.environ.get("WHISPER_ZH_TEST_OUTPUT", REPO / "out" / "test-output")) / "browser"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def clip() -> dict:
    for line in (DATA / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["id"] == CLIP_ID:
            return {**row, "path": DATA / row["audio"]}
    raise AssertionError(f"{CLIP_ID} is not in the shared manifest")


@pytest.fixture(scope="module")
def server_url():
    app = create_app(ServerConfig(model="base"))
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def fake_microphone_wav(clip, tmp_path_factory) -> Path:
    """The clip as 48 kHz 16-bit WAV with silence around it: Chromium's file-backed fake microphone loops it."""
    audio, rate = sf.read(clip["path"], dtype="float32")
    audio = soxr.resample(audio, rate, 48000)
    pad = np.zeros(int(0.3 * 48000), dtype=np.float32)
    path = tmp_path_factory.mktemp("mic") / "mic.wav"
    sf.write(path, np.concatenate([pad, audio, pad]), 48000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def browser(fake_microphone_wav):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={fake_microphone_wav}",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


def _wait_for_transcript(page, timeout_ms: int = 180_000) -> list[tuple[str, str]]:
    # Arrow functions, not expressions: Playwright evaluates a bare expression with eval, which the page's CSP blocks.
    page.wait_for_function("() => ['done', 'error'].includes(document.body.dataset.state)", timeout=timeout_ms)
    status = page.inner_text("#status")
    assert page.evaluate("document.body.dataset.state") == "done", status
    times = page.locator("#transcript .time").all_inner_texts()
    texts = page.locator("#transcript .text").all_inner_texts()
    return list(zip(times, texts, strict=True))


def _cer(reference: str, hypothesis: str) -> float:
    return cer(reference, hypothesis, normalizer=TextNormalizer()).rate


def test_upload_transcribe_copy_download(browser, server_url, clip):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1100, "height": 760})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server_url)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    try:
        response = page.goto(server_url + "/")
        assert "default-src 'self'" in response.headers["content-security-policy"]
        assert page.title().startswith("whisper-zh")
        page.wait_for_function("() => document.getElementById('model-name').textContent === 'base'")
        assert page.is_hidden("#key-row")  # this server needs no API key
        page.set_input_files("#file", str(clip["path"]))
        page.click("#transcribe")
        rows = _wait_for_transcript(page)
        page.screenshot(path=str(_output_dir() / "upload-simplified.png"), full_page=True)

        text = "".join(t for _, t in rows)
        score = _cer(clip["text"], text)
        print(f"browser transcript: {text!r} reference {clip['text']!r} CER {score:.3f}")
        assert score <= MAX_CER, (text, clip["text"])
        assert convert_script(text, "simplified") == text  # Simplified was asked for
        for time_range, _ in rows:
            assert re.fullmatch(r"\d\d:\d\d\.\d{3} → \d\d:\d\d\.\d{3}", time_range), time_range
        assert rows[0][0].startswith("00:00.")

        page.click("#copy")
        assert page.evaluate("navigator.clipboard.readText()").strip() == text

        with page.expect_download() as info:
            page.click("#download-srt")
        download = info.value
        assert download.suggested_filename == f"{CLIP_ID}.srt"
        srt = Path(download.path()).read_text(encoding="utf-8")
        assert re.match(r"1\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}\n", srt) and text in srt.replace("\n", "")
        with page.expect_download() as info:
            page.click("#download-vtt")
        assert Path(info.value.path()).read_text(encoding="utf-8").startswith("WEBVTT")

        # Traditional output: same audio, the page's script switch
        page.select_option("#script", "traditional")
        page.click("#transcribe")
        rows = _wait_for_transcript(page)
        page.screenshot(path=str(_output_dir() / "upload-traditional.png"), full_page=True)
        traditional = "".join(t for _, t in rows)
        assert convert_script(traditional, "simplified") != traditional, traditional
        assert _cer(clip["text"], convert_script(traditional, "simplified")) <= MAX_CER
        # the page works under its Content-Security-Policy: nothing it does is blocked
        assert not [m for m in console if "Content Security Policy" in m or "Refused to" in m], console
    finally:
        context.close()


def test_record_from_microphone(browser, server_url, clip):
    """Chromium's fake microphone plays the clip; the page records it (MediaRecorder, WebM/Opus) and transcribes."""
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    try:
        page.goto(server_url + "/")
        page.click("#record")
        page.wait_for_function("() => document.body.dataset.state === 'recording'", timeout=10_000)
        page.wait_for_timeout(int((clip["duration"] + 0.7) * 1000))
        page.click("#record")
        rows = _wait_for_transcript(page)
        page.screenshot(path=str(_output_dir() / "record.png"), full_page=True)
        assert page.inner_text("#file-name").startswith("recording.")
        text = "".join(t for _, t in rows)
        score = _cer(clip["text"], text)
        print(f"recorded transcript: {text!r} CER {score:.3f}")
        # the fake microphone loops the file, so the recording may hold the start of the clip again
        assert _cer(clip["text"], text[: len(clip["text"]) + 2]) <= MAX_CER or score <= MAX_CER, text
    finally:
        context.close()


def test_speakers_in_colours_and_playback_follows_the_transcript(browser, server_url, conversation, tmp_path):
    """Two real voices taking turns, "Speakers" ticked: each segment is labelled, the two speakers have two
    colours, the audio plays in the page, clicking a segment seeks there and marks it, and the mark follows
    the playback."""
    path = tmp_path / "conversation.wav"
    sf.write(path, conversation["audio"], 16000)
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    try:
        page.goto(server_url + "/")
        page.wait_for_function("() => document.getElementById('model-name').textContent === 'base'")
        page.set_input_files("#file", str(path))
        assert page.is_visible("#player")
        page.check("#diarize")
        page.click("#transcribe")
        _wait_for_transcript(page)
        assert "2 speakers" in page.inner_text("#status")
        items = page.locator("#transcript li")
        speakers = page.locator("#transcript li .speaker").all_inner_texts()
        assert len(speakers) == items.count() and speakers[0] == "Speaker 1"
        assert set(speakers) == {"Speaker 1", "Speaker 2"}
        colours = {page.locator("#transcript li .speaker").nth(i).evaluate("e => getComputedStyle(e).color")
                   for i in range(len(speakers))}
        assert len(colours) == 2, colours  # one colour per speaker
        page.screenshot(path=str(_output_dir() / "speakers.png"), full_page=True)

        page.wait_for_function("() => document.getElementById('player').readyState >= 1", timeout=10_000)
        assert abs(page.evaluate("() => document.getElementById('player').duration")
                   - len(conversation["audio"]) / 16000) < 0.1
        target = items.nth(items.count() - 1)
        start = float(target.get_attribute("data-start"))
        target.locator(".text").click()  # seek: the player jumps to the segment and marks it
        page.wait_for_function("() => document.querySelector('#transcript li.playing') !== null", timeout=10_000)
        assert abs(page.evaluate("() => document.getElementById('player').currentTime") - start) < 0.3
        assert target.get_attribute("aria-current") == "true"
        assert page.locator("#transcript li.playing").count() == 1
        # from the first segment, the audio plays and the mark follows what is heard
        items.nth(0).locator(".text").click()
        page.wait_for_function("() => document.getElementById('player').currentTime > 1.5", timeout=20_000)
        heard = page.evaluate("""() => {
            const now = document.getElementById('player').currentTime;
            const li = document.querySelector('#transcript li.playing');
            return [now, li ? Number(li.dataset.start) : null, li ? Number(li.dataset.end) : null];
        }""")
        now, first_start, first_end = heard
        assert first_start is not None and first_start - 0.5 <= now <= first_end + 0.5, heard
        page.evaluate("() => document.getElementById('player').pause()")
        page.screenshot(path=str(_output_dir() / "speakers-playing.png"), full_page=True)
    finally:
        context.close()

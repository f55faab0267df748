"""The manual and the README: they build, they document every option, and the commands they show run.

Runnable blocks. A fenced ```bash (or ```python) block right after an HTML comment ``<!-- check ... -->`` is run by
this file; blocks without the comment are shown, not run. The comment may carry directives:

* ``<!-- check -->``: run the block (bash with ``set -euo pipefail``, python with this interpreter).
* ``<!-- check: append ARGS -->``: the same, with ARGS added to every ``whisper-zh`` command of the block (small
  settings: one training step, a tiny model).
* ``<!-- check: background -->``: start the block (a server), wait until ``/health`` answers on the page's port,
  run the rest of the page, then stop it. Port 8000 in the page's blocks is replaced by a free port.
* ``<!-- check: when COMMAND -->``: run the block only once ``whisper-zh COMMAND`` exists. Until then a
  ``whisper-zh prepare INPUT -o FOLDER`` block is stood in for by writing the split it describes.

A page's checked blocks run in order in one temporary folder (the page is one scenario) holding ``examples/`` (the
repository's two clips), ``recordings/`` (12 shared AISHELL-1 clips, each with a ``.txt`` transcript), and, where a
block names it, ``tiny-model/`` (a tiny Whisper that ends every text at once: fine-tuning and decoding in seconds). ``whisper-zh`` on the ``PATH`` runs
this checkout's code. A page holding ``<!-- checks: slow -->`` runs only with ``-m slow``.

Default suite: the build, the option check, the README and the tutorial (about a minute on two cores). The other
pages' runnable blocks (servers, Ray, every command page) are marked slow on the page itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.conftest import EXAMPLES, REPO, SHARED_DATA, shared_rows

DOCS = REPO / "docs"
README = REPO / "README.md"
RESULTS = REPO / "bench" / "RESULTS.md"
_CHECK = re.compile(r"<!--\s*check(?::\s*(?P<directive>.*?))?\s*-->\s*\n```(?P<lang>[a-z]*)\n(?P<body>.*?)\n```", re.S)
_SLOW_PAGE = "<!-- checks: slow -->"
# Where each command's options must appear: its own page first; pages that other work adds are read when present
# (server.md: the server's security flags; long-audio.md and diarization.md: transcribe's options for them).
COMMAND_PAGES = {
    "transcribe": ["commands/transcribe.md", "long-audio.md", "diarization.md"],
    "evaluate": ["commands/evaluate.md"],
    "doctor": ["commands/doctor.md"],
    "finetune": ["commands/finetune.md"],
    "convert": ["commands/convert.md"],
    "serve": ["commands/serve.md", "server.md"],
    "live": ["commands/live.md"],
    "prepare": ["prepare.md"],
}


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    body: str
    directive: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def checked_blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    return [
        Block(page, text.count("\n", 0, m.start()) + 1, m["lang"], m["body"], (m["directive"] or "").strip())
        for m in _CHECK.finditer(text)
    ]


def pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    from whisper_zh.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


# ---------------------------------------------------------------------------------------------- static checks


def test_the_manual_builds_in_strict_mode(tmp_path):
    """`make docs`: a broken link, a missing anchor or a page left out of the nav fails the build."""
    mkdocs = Path(sys.executable).with_name("mkdocs")
    command = [str(mkdocs)] if mkdocs.exists() else [sys.executable, "-m", "mkdocs"]
    run = subprocess.run([*command, "build", "--strict", "--quiet", "-d", str(tmp_path / "site")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "site" / "tutorial" / "index.html").is_file()


@pytest.mark.parametrize("command", sorted(COMMAND_PAGES))
def test_every_option_of_every_command_is_on_its_page(command):
    commands = subcommands()
    if command not in commands:
        pytest.skip(f"whisper-zh {command} is not part of this version")
    texts = [(DOCS / name).read_text(encoding="utf-8") for name in COMMAND_PAGES[command] if (DOCS / name).is_file()]
    assert texts, f"whisper-zh {command} has no page: expected docs/{COMMAND_PAGES[command][0]}"
    text = "\n".join(texts)
    options = {o for a in commands[command]._actions for o in a.option_strings if o not in ("-h", "--help")}
    missing = sorted(o for o in options if not re.search(rf"`{re.escape(o)}[ `=]", text))
    assert not missing, f"docs/{COMMAND_PAGES[command][0]} does not document {missing}"


def test_every_command_has_a_page():
    assert set(subcommands()) <= set(COMMAND_PAGES), "add the new command's page to COMMAND_PAGES and the nav"


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; the detail belongs in docs/"
    commands = [line.split("#")[0].strip() for line in lines if line.startswith("make ")]
    assert commands[:2] == ["make run", "make test"]


def _table(text: str, start: int) -> list[str]:
    lines = text[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        rows.append(line.strip())
    return rows


def test_readme_headline_numbers_are_results_md_top_table():
    """A number is typed once: the README's headline table is a copy of bench/RESULTS.md's first table."""
    readme, results = README.read_text(encoding="utf-8"), RESULTS.read_text(encoding="utf-8")
    headline = _table(readme, readme.index("## Headline numbers"))
    current = _table(results, 0)
    assert len(headline) >= 4 and headline == current


# ---------------------------------------------------------------------------------------------- runnable blocks


def _scenarios(slow: bool) -> list:
    params = []
    for page in pages():
        blocks = checked_blocks(page)
        if blocks and (_SLOW_PAGE in page.read_text(encoding="utf-8")) == slow:
            marks = [pytest.mark.slow] if slow else []
            params.append(pytest.param(page, id=str(page.relative_to(REPO)), marks=marks))
    return params


@pytest.mark.parametrize("page", _scenarios(slow=False))
def test_commands_on_the_page_run(page, tmp_path):
    run_page(page, tmp_path)


@pytest.mark.parametrize("page", _scenarios(slow=True))
def test_commands_on_the_slow_page_run(page, tmp_path):
    run_page(page, tmp_path)


def run_page(page: Path, work: Path) -> None:
    blocks = checked_blocks(page)
    env = _environment(work)
    _furnish(work, blocks)
    port = _free_port()
    servers: list[subprocess.Popen] = []
    try:
        for block in blocks:
            body = block.body.replace("8000", str(port))
            verb, _, rest = block.directive.partition(" ")
            if verb == "when" and rest.strip() not in subcommands():
                _stand_in(block, work)
                continue
            if verb == "append":
                body = _append(body, rest)
            if verb == "background":
                servers.append(_start(block, body, work, env, port))
                continue
            started = time.perf_counter()
            _run(block, body, work, env)
            print(f"{block}: {time.perf_counter() - started:.1f} s")  # shown with -s: what each block costs
    finally:
        for server in servers:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()


def _environment(work: Path) -> dict[str, str]:
    """`whisper-zh` on the PATH runs this checkout (not whatever is installed), with this interpreter."""
    bin_dir = work / ".bin"
    bin_dir.mkdir()
    script = bin_dir / "whisper-zh"
    script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m whisper_zh "$@"\n', encoding="utf-8")
    script.chmod(0o755)
    # curl as the pages write it, but an HTTP error status fails the block (and no progress meter in the log)
    (bin_dir / ".curlrc").write_text("fail-with-body\nsilent\nshow-error\n", encoding="utf-8")
    env = dict(os.environ)
    env["CURL_HOME"] = str(bin_dir)
    env["PATH"] = f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _furnish(work: Path, blocks: list[Block]) -> None:
    shutil.copytree(EXAMPLES, work / "examples")
    if any("recordings/" in block.body for block in blocks):
        rows = [row for row in shared_rows() if row["domain"] == "news"][80:92]  # skips without ../shared
        (work / "recordings").mkdir()
        for row in rows:
            audio = Path(row["path"])
            shutil.copy(audio, work / "recordings" / audio.name)
            (work / "recordings" / f"{audio.stem}.txt").write_text(row["text"] + "\n", encoding="utf-8")
    if any("tiny-model" in block.directive or "tiny-model" in block.body for block in blocks):
        _terse_tiny_model(work / "tiny-model")


def _terse_tiny_model(path: Path) -> None:
    """A tiny random Whisper that ends its text at once: fine-tuning it takes seconds, and so does decoding with
    it (a merely random one writes 448 tokens of noise per window, at each of six fallback temperatures). The
    decoder's last layer norm gives every position the same vector, and the end-of-text embedding, which the
    output projection shares, points along it."""
    import torch
    from tests.tiny_whisper import build_tiny_random_whisper
    from transformers import WhisperForConditionalGeneration

    build_tiny_random_whisper(path, seed=0, d_model=32, layers=1, heads=2, ffn_dim=64)
    model = WhisperForConditionalGeneration.from_pretrained(path)
    decoder = model.model.decoder
    direction = torch.randn(decoder.layer_norm.weight.shape[0], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        decoder.layer_norm.weight.zero_()
        decoder.layer_norm.bias.copy_(direction)
        decoder.embed_tokens.weight[model.config.eos_token_id] = 10 * direction / direction.norm()
    model.save_pretrained(path)


def _append(body: str, args: str) -> str:
    """Add ARGS to each `whisper-zh` command (after its continuation lines)."""
    out, command = [], False
    for line in body.splitlines():
        command = command or line.lstrip().startswith("whisper-zh ")
        if command and not line.rstrip().endswith("\\"):
            line, command = f"{line} {args}", False
        out.append(line)
    return "\n".join(out)


def _run(block: Block, body: str, work: Path, env: dict[str, str]) -> None:
    if block.lang == "python":
        command = [sys.executable, "-c", body]
    else:
        command = ["bash", "-c", "set -euo pipefail\n" + body]
    run = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"{block} failed ({run.returncode}):\n{body}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"


def _start(block: Block, body: str, work: Path, env: dict[str, str], port: int) -> subprocess.Popen:
    log = (work / f"server-{block.line}.log").open("w")
    server = subprocess.Popen(["bash", "-c", "exec " + body.strip()], cwd=work, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"{block}: the server exited ({server.returncode}):\n{(work / log.name).read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    pytest.fail(f"{block}: the server did not answer /health within 180 s")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stand_in(block: Block, work: Path) -> None:
    """Until `whisper-zh prepare` exists: write the three manifests its block asks for (one speaker, so a split
    by utterance: the last two for test, the two before for dev, the rest for train)."""
    words = shlex.split(block.body.replace("\\\n", " "))
    if words[:2] != ["whisper-zh", "prepare"]:
        pytest.fail(f"{block}: no stand-in for {block.directive!r}")
    source, out = work / words[2], work / words[words.index("-o") + 1]
    rows = [
        {"id": audio.stem, "audio": str(audio.resolve()), "text": audio.with_suffix(".txt").read_text("utf-8").strip()}
        for audio in sorted(source.glob("*.flac"))
    ]
    out.mkdir(parents=True)
    for name, part in (("train", rows[:-4]), ("dev", rows[-4:-2]), ("test", rows[-2:])):
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in part)
        (out / f"{name}.jsonl").write_text(lines, encoding="utf-8")


def test_the_shared_data_is_where_the_scenarios_expect_it():
    if not SHARED_DATA.is_dir():
        pytest.skip("no ../shared beside the repository")
    assert len([row for row in shared_rows() if row["domain"] == "news"]) >= 92

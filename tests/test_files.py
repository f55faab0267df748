"""Atomic files and directories: published whole or not at all, with the mode the umask gives, nothing left over."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from whisper_zh.files import atomic_dir, atomic_write_text, current_umask, leftovers


@pytest.fixture
def umask():
    """Set a umask for one test and put the old one back."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_output_files_get_the_umask_mode_not_0600(tmp_path, umask):
    umask(0o022)
    assert current_umask() == 0o022
    assert mode(atomic_write_text(tmp_path / "a.txt", "x")) == 0o644
    umask(0o002)
    assert mode(atomic_write_text(tmp_path / "b.txt", "x")) == 0o664
    umask(0o077)
    assert mode(atomic_write_text(tmp_path / "c.txt", "x")) == 0o600


def test_atomic_dir_publishes_whole_with_a_normal_mode(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "model"
    with atomic_dir(target) as staging:
        (staging / "config.json").write_text("{}")
        (staging / "sub").mkdir()
        (staging / "sub" / "w.bin").write_bytes(b"1" * 10)
        assert not target.exists()  # nothing visible until the block ends
    assert (target / "sub" / "w.bin").read_bytes() == b"1" * 10
    assert mode(target) == 0o755
    assert os.listdir(tmp_path) == ["model"]


def test_atomic_dir_replaces_an_existing_target_and_keeps_it_on_failure(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as staging:
        (staging / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as staging:
        (staging / "new.txt").write_text("half")
        raise RuntimeError("disk full")
    assert sorted(os.listdir(target)) == ["old.txt"]  # untouched by the failed build
    with atomic_dir(target) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(os.listdir(target)) == ["new.txt"]  # replaced whole, not mixed
    assert os.listdir(tmp_path) == ["model"]  # no staging or trash left


def test_atomic_dir_merge_keeps_the_rest_of_the_directory(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_log.jsonl").write_text("log")
    (out / "model.safetensors").write_text("old weights")
    with atomic_dir(out, merge=True, last=("model.safetensors",)) as staging:
        (staging / "config.json").write_text("{}")
        (staging / "model.safetensors").write_text("new weights")
    assert (out / "train_log.jsonl").read_text() == "log"
    assert (out / "model.safetensors").read_text() == "new weights"
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "train_log.jsonl"]


def test_a_killed_build_leaves_only_a_findable_leftover(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from whisper_zh.files import atomic_dir
        with atomic_dir({str(tmp_path / "model")!r}) as staging:
            (staging / "w.bin").write_bytes(b"1" * 100)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "model").exists()
    [left] = leftovers(tmp_path)
    assert left.name.startswith(".tmp-model-")


def test_files_a_library_writes_privately_are_published_with_the_umask_mode(tmp_path, umask):
    """safetensors' save_file leaves model.safetensors 0600; convert and finetune publish through atomic_dir,
    and every file there gets the mode the umask gives, like the other outputs."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    umask(0o022)
    with atomic_dir(tmp_path / "model") as staging:
        save_file({"w": torch.zeros(2)}, str(staging / "model.safetensors"))
        (staging / "run.sh").write_text("#!/bin/sh\n")
        os.chmod(staging / "run.sh", 0o700)
    assert mode(tmp_path / "model" / "model.safetensors") == 0o644
    assert mode(tmp_path / "model" / "run.sh") == 0o755
    umask(0o002)
    with atomic_dir(tmp_path / "merged", merge=True) as staging:
        save_file({"w": torch.zeros(2)}, str(staging / "model.safetensors"))
    assert mode(tmp_path / "merged" / "model.safetensors") == 0o664

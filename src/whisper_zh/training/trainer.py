"""The fine-tuning loop: Accelerate for devices, mixed precision and DDP; our own loop for the rest.

Why not Seq2SeqTrainer: the product needs atomic checkpoints with a completion marker, packing with timestamp
tokens, generate-based CER with the project's metrics and normaliser, and plain-words diagnostics that can stop a
run. Each of these fights the Trainer's internals (and its transformers-5.x gradient-accumulation loss scaling with
Whisper, see shared/docs/stack-notes.md); a ~300-line loop on Accelerate is simpler and testable. The loss here is
the model's mean token cross-entropy, divided by the accumulation steps: the same number a plain PyTorch loop logs.

Works unchanged under ``torchrun --nproc_per_node N -m whisper_zh finetune ...`` and ``accelerate launch``
(gloo on CPU, NCCL on GPU): every process takes every N-th window; rank 0 evaluates, logs and saves.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from whisper_zh.errors import DataError
from whisper_zh.training import checkpoints as ckpt
from whisper_zh.training.config import FinetuneConfig, save_config
from whisper_zh.training.diagnostics import Diagnostics, Event, TrainingDivergedError
from whisper_zh.training.features import (
    Collator,
    ExampleBuilder,
    Featurizer,
    Item,
    WindowDataset,
    clean_target,
    load_utterances,
    plan_windows,
)

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
TRAIN_LOG = "train_log.jsonl"


@dataclass
class FinetuneResult:
    output_dir: Path
    final_step: int
    best_step: int | None
    best_cer: float | None
    initial_cer: float | None
    history: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    resumed_from: int | None = None
    samples_per_second: float | None = None
    train_seconds: float = 0.0


# ---------------------------------------------------------------------------------------------- helpers

def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 (AVX512-BF16 or AMX), where bf16 autocast is faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, *, cuda: bool) -> str:
    """'auto' -> bf16 where the hardware supports it, fp16 on older GPUs, else fp32."""
    if precision != "auto":
        return precision
    if cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def load_model(name: str, *, dtype: torch.dtype = torch.float32):
    """(model, processor) for any starting point: the embedded base, a local directory, or a hub id."""
    from whisper_zh.hf import load_transformers_whisper

    return load_transformers_whisper(name, dtype=dtype)


def apply_model_options(model: Any, config: FinetuneConfig) -> Any:
    """SpecAugment, encoder or decoder freezing and LoRA, in that order. Returns the (possibly PEFT-wrapped) model."""
    model.config.apply_spec_augment = bool(config.spec_augment)
    if config.spec_augment:
        model.config.mask_time_prob = max(model.config.mask_time_prob or 0.0, 0.05)
        model.config.mask_feature_prob = max(model.config.mask_feature_prob or 0.0, 0.05)
    # transformers 5.x: without this, Trainer-style loss-kwargs handling scales Whisper's loss by the
    # accumulation steps (stack-notes). Our loop does not use it; set it for anyone who wraps the model.
    model.accepts_loss_kwargs = False
    if config.freeze_encoder:
        model.model.encoder.requires_grad_(False)
    if config.freeze_decoder:  # proj_out shares the decoder's token embedding, so it stays frozen too
        model.model.decoder.requires_grad_(False)
        model.proj_out.requires_grad_(False)
    if config.lora.enabled:
        from peft import LoraConfig, get_peft_model

        targets: list[str] | str = list(config.lora.target_modules)
        half = "decoder" if config.freeze_encoder else "encoder" if config.freeze_decoder else None
        if half:  # PEFT freezes every base weight itself; a frozen half must also get no adapters
            targets = rf".*\.{half}\..*\.({'|'.join(map(re.escape, targets))})$"
        lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                          target_modules=targets, bias="none")
        model = get_peft_model(model, lora)
    return model


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int,
                   max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then linear decay to 0, constant, or cosine: the schedules of transformers.get_scheduler.

    Written out because importing transformers.optimization pulls in the Trainer stack and PEFT,
    which costs 5-12 s per process start on a small CPU.
    """
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
        if kind == "constant":
            return 1.0
        if kind == "cosine":
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))
        return max(0.0, 1.0 - progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The parameters that training changes (full model, or LoRA adapters; frozen parts come from the base)."""
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: Any, path: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(path))
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise DataError(f"{path}: checkpoint does not match the model ({len(missing)} unknown tensors, e.g. "
                        f"{missing[0]}); was it made with other --lora/--freeze-encoder/--freeze-decoder settings?")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


class JsonlLog:
    """Append-only JSON-lines log (rank 0 only), flushed per line so a kill loses at most one line."""

    def __init__(self, path: Path, *, keep_until_step: int | None) -> None:
        self.path = path
        if keep_until_step is None:
            path.write_text("", encoding="utf-8")
        elif path.is_file():  # resume: drop what was logged after the checkpoint we resume from
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by the kill
                if row.get("step", 0) <= keep_until_step:
                    kept.append(line)
            ckpt.atomic_write_text(path, "".join(f"{line}\n" for line in kept))

    def write(self, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")

    def rows(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- evaluation

def evaluate_model(model: Any, tokenizer: Any, builder: ExampleBuilder, items: list[Item], *, batch_size: int,
                   max_new_tokens: int, num_beams: int, script: str, autocast: Any) -> dict[str, Any]:
    """Teacher-forced loss and greedy/beam ``generate`` transcripts -> CER, segmented WER, unsegmented WER."""
    from transformers.utils import logging as hf_logging

    from whisper_zh.metrics import cer, wer
    from whisper_zh.normalize import TextNormalizer, convert_script

    collate = Collator(tokenizer.pad_token_id)
    was_training = model.training
    model.eval()
    # generate() warns on every call about Whisper's own generation config and the (unused) attention mask
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    device = next(model.parameters()).device
    hyps: list[str] = []
    losses: list[float] = []
    try:
        with torch.no_grad(), autocast():
            for start in range(0, len(items), batch_size):
                batch = collate([builder.single(it) for it in items[start:start + batch_size]])
                features = batch["input_features"].to(device)
                out = model(input_features=features, decoder_input_ids=batch["decoder_input_ids"].to(device),
                            labels=batch["labels"].to(device))
                losses.append(float(out.loss))
                # A looping hypothesis would run to max_new_tokens and stall the whole batch; past twice the
                # longest reference it is wrong anyway (CER still counts every inserted character up to the cap).
                longest = int((batch["labels"] >= 0).sum(dim=1).max())
                cap = min(max_new_tokens, 2 * longest + 10)
                generated = model.generate(input_features=features, language="zh", task="transcribe",
                                           max_new_tokens=cap, num_beams=num_beams)
                hyps += [convert_script(t.strip(), script)
                         for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]
    finally:
        model.train(was_training)
        hf_logging.set_verbosity(verbosity)
    refs = [clean_target(it.text, script) for it in items]
    normalizer = TextNormalizer()
    char = cer(refs, hyps, normalizer=normalizer, n_resamples=200)
    words = wer(refs, hyps, normalizer=normalizer)
    # The number a new user gets from jiwer.wer on Chinese: whole sentences as "words" (see diagnostics).
    import jiwer

    norm_refs, norm_hyps = [normalizer(r) for r in refs], [normalizer(h) or "-" for h in hyps]
    unsegmented = float(jiwer.wer(norm_refs, norm_hyps)) if all(norm_refs) else None
    return {
        "eval_loss": float(np.mean(losses)) if losses else None,
        "cer": char.rate,
        "cer_ci": [char.ci_low, char.ci_high],
        "wer_segmented": words.rate,
        "wer_unsegmented": unsegmented,
        "eval_utterances": len(items),
        "examples": [{"id": it.id, "ref": r, "hyp": h} for it, r, h in list(zip(items, refs, hyps, strict=True))[:5]],
    }


# ---------------------------------------------------------------------------------------------- the loop

def finetune(config: FinetuneConfig, *, resume: bool = False, progress: bool = True,
             command: str | None = None) -> FinetuneResult:
    """Run one fine-tuning job described by ``config``; see the module docstring."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list, set_seed
    from tqdm.auto import tqdm

    config.validate()
    if not config.train or not config.eval:
        raise DataError("finetune needs both a training source (--train) and an evaluation source (--eval)")
    cuda = torch.cuda.is_available()
    precision = resolve_precision(config.precision, cuda=cuda)
    accelerator = Accelerator(
        mixed_precision={"fp32": "no"}.get(precision, precision),
        cpu=not cuda,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    main = accelerator.is_main_process
    out_dir = Path(config.output_dir)
    ckpt_root = out_dir / CHECKPOINTS
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    resume_from = ckpt.latest_complete(ckpt_root) if resume else None
    if resume and resume_from is None and main:
        log.warning("--resume: no complete checkpoint in %s; starting from the beginning", ckpt_root)
    set_seed(config.seed)

    model, processor = load_model(config.model)
    tokenizer = processor.tokenizer
    model = apply_model_options(model, config)
    featurizer = Featurizer(config.feature_pipeline, n_mels=model.config.num_mel_bins)
    builder = ExampleBuilder(tokenizer, featurizer, language=config.language, task=config.task, script=config.script)

    train_items = load_utterances(config.train)
    eval_items = load_utterances(config.eval)
    if config.max_eval_samples:
        eval_items = eval_items[: config.max_eval_samples]
    if not train_items or not eval_items:
        raise DataError("finetune: the training or evaluation source holds no utterances")
    from whisper_zh.training.features import item_duration

    durations = [item_duration(it) for it in train_items]
    token_counts = [len(builder.text_ids(it.text)) for it in train_items]

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                  eps=config.adam_epsilon, weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, config.lr_scheduler, config.warmup_steps, config.max_steps)
    # The scheduler is stepped by hand once per optimizer step: accelerate's wrapper would step it once per
    # process under DDP, which changes the schedule with the number of processes.
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    state: dict[str, Any] = {"step": 0, "epoch": 0, "offset": 0, "best_step": None, "best_cer": None,
                             "initial_cer": None, "samples": 0, "train_seconds": 0.0}
    if resume_from is not None:
        load_trainable_state(unwrapped, resume_from / "trainable.safetensors")
        optimizer.load_state_dict(torch.load(resume_from / "optimizer.pt", map_location="cpu", weights_only=False))
        scheduler.load_state_dict(torch.load(resume_from / "scheduler.pt", weights_only=False))
        state.update(json.loads((resume_from / "trainer_state.json").read_text(encoding="utf-8")))
        rng_file = resume_from / f"rng-{accelerator.process_index}.pt"
        if rng_file.is_file():
            _set_rng_state(torch.load(rng_file, weights_only=False))
    train_log = JsonlLog(out_dir / TRAIN_LOG, keep_until_step=state["step"] if resume_from else None) if main else None
    if main:
        save_config(config, out_dir / "finetune_config.yaml")
        if resume_from is not None:
            train_log.write({"step": state["step"], "event": "resumed", "level": "info",
                             "message": f"resumed from {resume_from.name}"})

    diagnostics = Diagnostics(config.diagnostics, learning_rate=config.learning_rate, warmup_steps=config.warmup_steps)
    if train_log is not None:  # rebuild the diagnostics' view of the past from the kept log
        for row in train_log.rows():
            if "loss" in row and "event" not in row:
                diagnostics.losses.append((row["step"], row["loss"]))
            if "cer" in row:
                diagnostics.evals.append((row["step"], row["cer"]))
    events: list[dict] = []

    def report(new_events: list[Event]) -> None:
        for event in new_events:
            events.append(event.to_dict())
            if main:
                train_log.write(event.to_dict())
                (log.error if event.level == "error" else log.warning)(event.message)
                if progress:
                    tqdm.write(f"[{event.level}] {event.message}")

    autocast = accelerator.autocast
    world, rank = accelerator.num_processes, accelerator.process_index
    collate = Collator(tokenizer.pad_token_id)

    def micro_batches(epoch: int, offset: int):
        """Yield (epoch, next_offset, batch) forever; each rank takes every world-th window of the epoch's plan."""
        while True:
            windows = plan_windows(durations, token_counts, packing=config.packing,
                                   max_seconds=config.packing_max_seconds, seed=config.seed, epoch=epoch)
            usable = len(windows) - len(windows) % world if len(windows) >= world else len(windows)
            shard = windows[:usable][rank::world]
            dataset = WindowDataset(train_items, shard, builder)
            bs = config.per_device_train_batch_size
            for start in range(offset, len(dataset), bs):
                end = min(start + bs, len(dataset))
                yield epoch, end, collate([dataset[i] for i in range(start, end)])
            epoch, offset = epoch + 1, 0

    def run_eval(step: int) -> dict[str, Any] | None:
        result = None
        if main:
            result = evaluate_model(unwrapped, tokenizer, builder, eval_items,
                                    batch_size=config.per_device_eval_batch_size,
                                    max_new_tokens=config.generation_max_length, num_beams=config.num_beams,
                                    script=config.script, autocast=autocast)
        shared = [result]
        if world > 1:
            broadcast_object_list(shared, from_process=0)
        return shared[0]

    def save(step: int) -> None:
        if main:
            def write(tmp: Path) -> None:
                from safetensors.torch import save_file

                save_file(trainable_state(unwrapped), str(tmp / "trainable.safetensors"))
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
                (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
                torch.save(_rng_state(), tmp / "rng-0.pt")

            ckpt.write_checkpoint(ckpt_root, step, write, meta={"best_step": state["best_step"]})
            protect = (ckpt.checkpoint_dir(ckpt_root, state["best_step"]),) if state["best_step"] is not None else ()
            ckpt.prune(ckpt_root, config.save_total_limit, protect=protect)
        accelerator.wait_for_everyone()

    def record_eval(step: int, result: dict[str, Any]) -> bool:
        """Log an eval, update the best checkpoint; True when early stopping says stop."""
        row = {"step": step, **{k: v for k, v in result.items() if k != "examples"}}
        improved = state["best_cer"] is None or result["cer"] < state["best_cer"]
        if improved:
            state["best_cer"], state["best_step"] = result["cer"], step
        if main:
            train_log.write(row)
            if progress:
                tqdm.write(f"step {step}: eval CER {result['cer']:.2%} (best {state['best_cer']:.2%} at step "
                           f"{state['best_step']}), eval loss {result['eval_loss']:.3f}")
        report(diagnostics.observe_eval(step, result["cer"], result.get("wer_unsegmented")))
        if config.early_stopping_patience:
            evals = [c for _, c in diagnostics.evals]
            since_best = len(evals) - 1 - int(np.argmin(evals))
            if since_best >= config.early_stopping_patience:
                report([Event("info", "early_stopping", step,
                              f"step {step}: no better eval CER for {since_best} evaluation(s); stopping early "
                              f"and keeping step {state['best_step']} (CER {state['best_cer']:.2%}).")])
                return True
        return False

    if state["step"] == 0 and config.eval_at_start:
        result = run_eval(0)
        state["initial_cer"] = result["cer"]
        record_eval(0, result)
        save(0)  # step 0 = the starting model: "best" is never worse than where we began

    model.train()
    batches = micro_batches(state["epoch"], state["offset"])
    bar = tqdm(total=config.max_steps, initial=state["step"], disable=not (main and progress), unit="step",
               desc="finetune", dynamic_ncols=True)
    window_loss: list[float] = []
    window_samples = 0
    window_start = time.perf_counter()
    stop = False
    try:
        while state["step"] < config.max_steps and not stop:
            step_start = time.perf_counter()
            step_loss = 0.0
            step_samples = 0
            for micro in range(config.gradient_accumulation_steps):
                epoch, offset, batch = next(batches)
                sync = micro == config.gradient_accumulation_steps - 1
                context = accelerator.no_sync(model) if (not sync and world > 1) else nullcontext()
                with context, autocast():
                    out = model(input_features=batch["input_features"].to(accelerator.device),
                                decoder_input_ids=batch["decoder_input_ids"].to(accelerator.device),
                                labels=batch["labels"].to(accelerator.device))
                    loss = out.loss / config.gradient_accumulation_steps
                accelerator.backward(loss)
                step_loss += float(loss.detach())
                step_samples += batch["n_utterances"]
            grad_norm = accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["epoch"], state["offset"] = epoch, offset
            step = state["step"]
            totals = torch.tensor([step_loss, float(step_samples)], device=accelerator.device)
            if world > 1:
                totals = accelerator.reduce(totals, reduction="sum")
                totals[0] /= world
            mean_loss, samples = float(totals[0]), int(totals[1])
            state["samples"] += samples
            elapsed = time.perf_counter() - step_start
            state["train_seconds"] += elapsed
            window_loss.append(mean_loss)
            window_samples += samples
            report(diagnostics.observe_loss(step, mean_loss, float(grad_norm) if grad_norm is not None else None))
            if any(e["level"] == "error" for e in events):
                raise TrainingDivergedError(next(e["message"] for e in events if e["level"] == "error"))
            lr = scheduler.get_last_lr()[0]
            rate = samples / max(elapsed, 1e-9)
            bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}", samples_s=f"{rate:.2f}")
            bar.update(1)
            if main and (step % config.logging_steps == 0 or step == config.max_steps):
                span = time.perf_counter() - window_start
                train_log.write({"step": step, "epoch": epoch, "loss": float(np.mean(window_loss)),
                                 "learning_rate": lr, "grad_norm": float(grad_norm) if grad_norm is not None else None,
                                 "samples_per_second": window_samples / max(span, 1e-9), "samples": state["samples"],
                                 "elapsed": state["train_seconds"]})
                window_loss, window_samples, window_start = [], 0, time.perf_counter()
            at_end = step == config.max_steps
            if step % config.eval_steps == 0 or at_end:
                stop = record_eval(step, run_eval(step))
                window_start = time.perf_counter()
            if step % config.save_steps == 0 or step % config.eval_steps == 0 or at_end or stop:
                save(step)
                window_start = time.perf_counter()
    finally:
        bar.close()

    if main:
        train_log.write({"step": state["step"], "event": "finished", "level": "info",
                         "message": f"best CER {state['best_cer']:.2%} at step {state['best_step']}"})
    result = FinetuneResult(out_dir, state["step"], state["best_step"], state["best_cer"], state["initial_cer"],
                            history=train_log.rows() if main else [], events=events,
                            resumed_from=int(resume_from.name.split("-")[1]) if resume_from else None,
                            samples_per_second=state["samples"] / max(state["train_seconds"], 1e-9),
                            train_seconds=state["train_seconds"])
    if main:
        export_best(config, result, ckpt_root, command=command)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


# ---------------------------------------------------------------------------------------------- export

def export_best(config: FinetuneConfig, result: FinetuneResult, ckpt_root: Path, *, command: str | None) -> Path:
    """Write the best checkpoint's model into output_dir in Transformers layout (LoRA merged), plus the card,
    curves and, with ``export_ct2``, a CTranslate2 copy in ``output_dir/ctranslate2-<quantization>``."""
    from whisper_zh.files import atomic_dir
    from whisper_zh.hf import save_processor
    from whisper_zh.training.modelcard import plot_curves, write_model_card

    out_dir = Path(config.output_dir)
    model, processor = load_model(config.model)
    model = apply_model_options(model, config)
    best = ckpt.checkpoint_dir(ckpt_root, result.best_step) if result.best_step is not None else None
    if best is None or not ckpt.is_complete(best):
        best = ckpt.latest_complete(ckpt_root)
    if best is None:
        raise DataError(f"{ckpt_root}: no complete checkpoint to export")
    load_trainable_state(model, best / "trainable.safetensors")
    if config.lora.enabled:
        model = model.merge_and_unload()
    model.config.apply_spec_augment = False
    # Each file replaced by one rename, the weights last; the run's logs and checkpoints beside them stay.
    with atomic_dir(out_dir, merge=True, last=("model.safetensors",)) as staging:
        model.save_pretrained(str(staging))
        save_processor(processor, staging)
    plot_curves(out_dir / TRAIN_LOG, out_dir / "curves.png")
    if config.export_ct2:
        from whisper_zh.convert import transformers_to_ct2_dir

        transformers_to_ct2_dir(out_dir, out_dir / f"ctranslate2-{config.ct2_quantization}",
                                quantization=config.ct2_quantization)
    write_model_card(config, result, out_dir, exported_step=int(best.name.split("-")[1]), command=command)
    return out_dir

"""The fine-tuning loop: Accelerate for devices, mixed precision and DDP; our own loop for the rest.

Why not Seq2SeqTrainer: the product needs atomic checkpoints with a completion marker, packing with timestamp
tokens and the product's prompt, checkpoints chosen by the product's own decoder and scorer
(:mod:`whisper_zh.training.checkpoint_eval`), and plain-words diagnostics that can stop a run. Each of these fights the Trainer's internals (and its transformers-5.x gradient-accumulation loss scaling with
Whisper, see shared/docs/stack-notes.md); a ~300-line loop on Accelerate is simpler and testable. The loss here is
the model's mean token cross-entropy, divided by the accumulation steps: the same number a plain PyTorch loop logs.

Works unchanged under ``torchrun --nproc_per_node N -m whisper_zh finetune ...`` and ``accelerate launch``
(gloo on CPU, NCCL on GPU): every process takes every N-th window; rank 0 evaluates, logs and saves.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from whisper_zh.errors import DataError
from whisper_zh.training import checkpoints as ckpt
from whisper_zh.training.augment import Augmenter
from whisper_zh.training.checkpoint_eval import EvalResult, ProductEvaluator, decode_options
from whisper_zh.training.config import FinetuneConfig, save_config
from whisper_zh.training.diagnostics import Diagnostics, Event, TrainingDivergedError
from whisper_zh.training.features import (
    Collator,
    EpochPlanner,
    ExampleBuilder,
    Featurizer,
    Item,
    WindowDataset,
    item_duration,
    load_utterances,
    plan_windows,
)
from whisper_zh.training.modelcard import plot_curves, weights_kind, write_model_card

log = logging.getLogger(__name__)

CHECKPOINTS, TRAIN_LOG = ckpt.CHECKPOINTS, ckpt.TRAIN_LOG


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
    averaged: list[int] = field(default_factory=list)  # steps whose weights were averaged into the export
    interpolated: float | None = None  # WiSE-FT: the share of the fine-tuned weights in the export (None: all)


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

def eval_loss(model: Any, builder: ExampleBuilder, items: list[Item], *, batch_size: int, autocast: Any,
              packing: bool = False) -> float | None:
    """Mean teacher-forced loss on ``items``, each window as the product decodes it (with the prompt; with
    ``packing``, several clips to a window in the product's pack form, in a fixed order)."""
    collate = Collator(builder.tokenizer.pad_token_id)
    device = next(model.parameters()).device
    plan = plan_windows([item_duration(it) for it in items], [len(builder.text_ids(it.text)) for it in items],
                        packing=packing, max_seconds=29.0, seed=0, epoch=0,
                        reserved_tokens=4 + len(builder.prompt_ids))
    windows = [[items[i] for i in members] for members in plan]
    was_training = model.training
    model.eval()
    losses = []
    try:
        with torch.no_grad(), autocast():
            for start in range(0, len(windows), batch_size):
                batch = collate([builder.packed(w, timestamps=False) for w in windows[start:start + batch_size]])
                out = model(input_features=batch["input_features"].to(device),
                            decoder_input_ids=batch["decoder_input_ids"].to(device), labels=batch["labels"].to(device))
                losses.append(float(out.loss))
    finally:
        model.train(was_training)
    return float(np.mean(losses)) if losses else None


def evaluate_model(model: Any, evaluator: ProductEvaluator, builder: ExampleBuilder, items: list[Item], *,
                   batch_size: int, autocast: Any, packing: bool = False) -> EvalResult:
    """The product's CER of ``model`` on the eval set (see training.checkpoint_eval), and the teacher-forced loss."""
    was_training = model.training
    model.eval()
    try:
        result = evaluator(model)
    finally:
        model.train(was_training)
    loss = eval_loss(model, builder, items, batch_size=batch_size, autocast=autocast, packing=packing)
    return replace(result, eval_loss=loss)


# ---------------------------------------------------------------------------------------------- the loop

def finetune(config: FinetuneConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
             command: str | None = None) -> FinetuneResult:
    """Run one fine-tuning job described by ``config``; see the module docstring. An output directory that holds
    an earlier run is refused unless ``resume`` (continue it) or ``overwrite`` (start again)."""
    config.validate()
    if not config.train or not config.eval:
        raise DataError("finetune needs both a training source (--train) and an evaluation source (--eval)")
    if int(os.environ.get("RANK", "0")) == 0:
        ckpt.check_output_dir(config.output_dir, resume=resume, overwrite=overwrite)
    run = _Run(config, resume=resume, progress=progress)
    result = run.train()
    source = run.average_checkpoints() if config.average_last > 1 else None
    if source is not None:
        result = replace(result, best_step=source[1], best_cer=run.state["best_cer"], averaged=source[2])
    root = source[0] if source else run.ckpt_root
    if config.wise_ft_alpha < 1.0:
        root, cer = run.interpolate_with_start(root, result.best_step)
        result = replace(result, best_cer=cer, interpolated=config.wise_ft_alpha)
    if run.main:
        export_best(config, result, root, command=command)
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    return result


class _Run:
    """One fine-tuning run: the model and optimizer under Accelerate, the data plan, the state that a checkpoint
    holds, the log and the diagnostics. :meth:`train` runs it to the end."""

    def __init__(self, config: FinetuneConfig, *, resume: bool, progress: bool) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        self.config, self.progress = config, progress
        cuda = torch.cuda.is_available()
        precision = resolve_precision(config.precision, cuda=cuda)
        self.accelerator = Accelerator(
            mixed_precision={"fp32": "no"}.get(precision, precision),
            cpu=not cuda,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        )
        self.main = self.accelerator.is_main_process
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.out_dir = Path(config.output_dir)
        self.ckpt_root = self.out_dir / CHECKPOINTS
        if self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.resume_from = ckpt.latest_complete(self.ckpt_root) if resume else None
        if resume and self.resume_from is None and self.main:
            log.warning("--resume: no complete checkpoint in %s; starting from the beginning", self.ckpt_root)
        set_seed(config.seed)
        self._load_model_and_data()
        self.state: dict[str, Any] = {"step": 0, "epoch": 0, "offset": 0, "best_step": None, "best_cer": None,
                                      "initial_cer": None, "samples": 0, "train_seconds": 0.0}
        if self.resume_from is not None:
            self._restore(self.resume_from)
        self._open_log()
        self.events: list[dict] = []

    def _load_model_and_data(self) -> None:
        config = self.config
        model, processor = load_model(config.model)
        self.processor, self.tokenizer = processor, processor.tokenizer
        model = apply_model_options(model, config)
        featurizer = Featurizer(config.feature_pipeline, n_mels=model.config.num_mel_bins)
        self.builder = ExampleBuilder(self.tokenizer, featurizer, language=config.language, task=config.task,
                                      script=config.script, prompt=config.prompt)
        self.train_items = load_utterances(config.train)
        self.eval_items = load_utterances(config.eval)[: config.max_eval_samples or None]
        if not self.train_items or not self.eval_items:
            raise DataError("finetune: the training or evaluation source holds no utterances")
        augmenter = Augmenter(speeds=config.speed_perturbation, noise_probability=config.noise_probability,
                              noise_snr_db=config.noise_snr_db, seed=config.seed)
        self.planner = EpochPlanner(
            [item_duration(it) for it in self.train_items],
            [len(self.builder.text_ids(it.text)) for it in self.train_items],
            packing=config.packing, max_seconds=config.packing_max_seconds, seed=config.seed, augmenter=augmenter,
            prompt_dropout=config.prompt_dropout if self.builder.prompt_ids else 0.0,
            pack_timestamps=config.pack_timestamps, reserved_tokens=4 + len(self.builder.prompt_ids))
        self.evaluator = ProductEvaluator(
            config.eval, processor,
            decode_options(config.language, config.task, config.script, beam_size=config.num_beams,
                           max_new_tokens=config.generation_max_length, fallback=config.eval_fallback),
            engine=config.eval_engine, limit=config.max_eval_samples)
        self.params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                      eps=config.adam_epsilon, weight_decay=config.weight_decay)
        # The scheduler is stepped by hand once per optimizer step: accelerate's wrapper would step it once per
        # process under DDP, which changes the schedule with the number of processes.
        self.scheduler = make_scheduler(optimizer, config.lr_scheduler, config.warmup_steps, config.max_steps)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.unwrapped = self.accelerator.unwrap_model(self.model)

    def _restore(self, path: Path) -> None:
        load_trainable_state(self.unwrapped, path / "trainable.safetensors")
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        self.state.update(json.loads((path / "trainer_state.json").read_text(encoding="utf-8")))
        rng_file = path / f"rng-{self.rank}.pt"
        if rng_file.is_file():
            _set_rng_state(torch.load(rng_file, weights_only=False))

    def _open_log(self) -> None:
        config = self.config
        self.train_log = (JsonlLog(self.out_dir / TRAIN_LOG, keep_until_step=self.state["step"] if self.resume_from
                                   else None) if self.main else None)
        self.diagnostics = Diagnostics(config.diagnostics, learning_rate=config.learning_rate,
                                       warmup_steps=config.warmup_steps)
        if self.train_log is None:
            return
        save_config(config, self.out_dir / "finetune_config.yaml")
        if self.resume_from is not None:
            self.train_log.write({"step": self.state["step"], "event": "resumed", "level": "info",
                                  "message": f"resumed from {self.resume_from.name}"})
        for row in self.train_log.rows():  # rebuild the diagnostics' view of the past from the kept log
            if "loss" in row and "event" not in row:
                self.diagnostics.losses.append((row["step"], row["loss"]))
            if "cer" in row and weights_kind(row) == "step":
                self.diagnostics.evals.append((row["step"], row["cer"]))

    # ------------------------------------------------------------------------------------------ reporting
    def report(self, new_events: list[Event]) -> None:
        from tqdm.auto import tqdm

        for event in new_events:
            self.events.append(event.to_dict())
            if self.main:
                self.train_log.write(event.to_dict())
                (log.error if event.level == "error" else log.warning)(event.message)
                if self.progress:
                    tqdm.write(f"[{event.level}] {event.message}")

    # ------------------------------------------------------------------------------------------ data
    def micro_batches(self, epoch: int, offset: int) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """Yield (epoch, next_offset, batch) forever; each rank takes every world-th window of the epoch's plan."""
        collate = Collator(self.tokenizer.pad_token_id)
        bs = self.config.per_device_train_batch_size
        while True:
            windows = self.planner(epoch)
            usable = len(windows) - len(windows) % self.world if len(windows) >= self.world else len(windows)
            dataset = WindowDataset(self.train_items, windows[:usable][self.rank::self.world], self.builder)
            for start in range(offset, len(dataset), bs):
                end = min(start + bs, len(dataset))
                yield epoch, end, collate([dataset[i] for i in range(start, end)])
            epoch, offset = epoch + 1, 0

    # ------------------------------------------------------------------------------------------ eval and save
    def evaluate(self) -> EvalResult | None:
        from accelerate.utils import broadcast_object_list

        result = None
        if self.main:
            result = evaluate_model(self.unwrapped, self.evaluator, self.builder, self.eval_items,
                                    batch_size=self.config.per_device_eval_batch_size,
                                    autocast=self.accelerator.autocast, packing=self.config.packing)
        shared = [result]
        if self.world > 1:
            broadcast_object_list(shared, from_process=0)
        return shared[0]

    def save(self, step: int) -> None:
        if self.main:
            def write(tmp: Path) -> None:
                from safetensors.torch import save_file

                save_file(trainable_state(self.unwrapped), str(tmp / "trainable.safetensors"))
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
                (tmp / "trainer_state.json").write_text(json.dumps(self.state, indent=1), encoding="utf-8")
                torch.save(_rng_state(), tmp / "rng-0.pt")

            best = self.state["best_step"]
            ckpt.write_checkpoint(self.ckpt_root, step, write, meta={"best_step": best})
            protect = (ckpt.checkpoint_dir(self.ckpt_root, best),) if best is not None else ()
            protect += tuple(ckpt.checkpoint_dir(self.ckpt_root, s) for s in self.state.get("evaluated", [])
                             [-self.config.average_last:] if self.config.average_last > 1)
            ckpt.prune(self.ckpt_root, self.config.save_total_limit, protect=protect)
        self.accelerator.wait_for_everyone()

    def record_eval(self, step: int, result: EvalResult) -> bool:
        """Log an eval, update the best checkpoint; True when early stopping says stop."""
        from tqdm.auto import tqdm

        state = self.state
        if state["best_cer"] is None or result.cer < state["best_cer"]:
            state["best_cer"], state["best_step"] = result.cer, step
        state["evaluated"] = [*state.get("evaluated", []), step]
        if self.main:
            self.train_log.write({"step": step, **result.to_row()})
            if self.progress:
                loss = "-" if result.eval_loss is None else f"{result.eval_loss:.3f}"
                tqdm.write(f"step {step}: eval CER {result.cer:.2%} (numbers; plain {result.cer_plain:.2%}; best "
                           f"{state['best_cer']:.2%} at step {state['best_step']}), sentence-final punctuation "
                           f"{result.punctuation_final:.0%}, eval loss {loss}, {result.seconds:.0f} s")
        self.report(self.diagnostics.observe_eval(step, result.cer, result.wer_unsegmented))
        patience = self.config.early_stopping_patience
        if patience:
            evals = [c for _, c in self.diagnostics.evals]
            since_best = len(evals) - 1 - int(np.argmin(evals))
            if since_best >= patience:
                self.report([Event("info", "early_stopping", step,
                                   f"step {step}: no better eval CER for {since_best} evaluation(s); stopping early "
                                   f"and keeping step {state['best_step']} (CER {state['best_cer']:.2%}).")])
                return True
        return False

    # ------------------------------------------------------------------------------------------ training
    def optimizer_step(self, batches: Iterator[tuple[int, int, dict[str, Any]]]) -> tuple[float, int, float | None]:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches: (mean loss, samples, grad norm)."""
        config, accelerator = self.config, self.accelerator
        step_loss, step_samples = 0.0, 0
        for micro in range(config.gradient_accumulation_steps):
            epoch, offset, batch = next(batches)
            sync = micro == config.gradient_accumulation_steps - 1
            context = accelerator.no_sync(self.model) if (not sync and self.world > 1) else nullcontext()
            with context, accelerator.autocast():
                out = self.model(input_features=batch["input_features"].to(accelerator.device),
                                 decoder_input_ids=batch["decoder_input_ids"].to(accelerator.device),
                                 labels=batch["labels"].to(accelerator.device))
                loss = out.loss / config.gradient_accumulation_steps
            accelerator.backward(loss)
            step_loss += float(loss.detach())
            step_samples += batch["n_utterances"]
        grad_norm = accelerator.clip_grad_norm_(self.params, config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state["step"] += 1
        self.state["epoch"], self.state["offset"] = epoch, offset
        totals = torch.tensor([step_loss, float(step_samples)], device=accelerator.device)
        if self.world > 1:
            totals = accelerator.reduce(totals, reduction="sum")
            totals[0] /= self.world
        return float(totals[0]), int(totals[1]), float(grad_norm) if grad_norm is not None else None

    def train(self) -> FinetuneResult:
        from tqdm.auto import tqdm

        config, state = self.config, self.state
        if state["step"] == 0 and config.eval_at_start:
            result = self.evaluate()
            state["initial_cer"] = result.cer
            self.record_eval(0, result)
            self.save(0)  # step 0 = the starting model: "best" is never worse than where we began
        self.model.train()
        batches = self.micro_batches(state["epoch"], state["offset"])
        bar = tqdm(total=config.max_steps, initial=state["step"], disable=not (self.main and self.progress),
                   unit="step", desc="finetune", dynamic_ncols=True)
        window = _LogWindow()
        stop = False
        try:
            while state["step"] < config.max_steps and not stop:
                started = time.perf_counter()
                loss, samples, grad_norm = self.optimizer_step(batches)
                elapsed = time.perf_counter() - started
                state["samples"] += samples
                state["train_seconds"] += elapsed
                window.add(loss, samples, elapsed)
                step = state["step"]
                self.report(self.diagnostics.observe_loss(step, loss, grad_norm))
                if any(e["level"] == "error" for e in self.events):
                    raise TrainingDivergedError(next(e["message"] for e in self.events if e["level"] == "error"))
                lr = self.scheduler.get_last_lr()[0]
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", samples_s=f"{samples / max(elapsed, 1e-9):.2f}")
                bar.update(1)
                at_end = step == config.max_steps
                if self.main and (step % config.logging_steps == 0 or at_end):
                    self.train_log.write({"step": step, "epoch": state["epoch"], **window.flush(), "learning_rate": lr,
                                          "grad_norm": grad_norm, "samples": state["samples"],
                                          "elapsed": state["train_seconds"]})
                if step % config.eval_steps == 0 or at_end:
                    stop = self.record_eval(step, self.evaluate())
                if step % config.save_steps == 0 or step % config.eval_steps == 0 or at_end or stop:
                    self.save(step)
        finally:
            bar.close()
        return self._result()

    def average_checkpoints(self) -> tuple[Path, int, list[int]] | None:
        """Average the last ``average_last`` evaluated checkpoints; when the average's eval CER beats the best
        checkpoint's, write it as a checkpoint under ``averaged/`` and return (its root, its step, the steps
        averaged). None when it does not win (the best checkpoint is exported as usual)."""
        from safetensors.torch import load_file

        steps = [s for s in self.state.get("evaluated", [])
                 if ckpt.is_complete(ckpt.checkpoint_dir(self.ckpt_root, s))][-self.config.average_last:]
        if len(steps) < 2:
            return None
        states = [load_file(str(ckpt.checkpoint_dir(self.ckpt_root, s) / "trainable.safetensors")) for s in steps]
        average = {name: torch.stack([st[name].float() for st in states]).mean(0).to(states[0][name].dtype)
                   for name in states[0]}
        result = self._evaluate_weights(average)
        won = result is not None and result.cer < self.state["best_cer"]
        if self.main:
            self.train_log.write({"step": self.state["step"], "averaged": steps, **result.to_row()})
            self.report([Event("info", "averaged", self.state["step"],
                               f"average of steps {', '.join(map(str, steps))}: eval CER {result.cer:.2%} against the "
                               f"best checkpoint's {self.state['best_cer']:.2%}; "
                               + ("exporting the average." if won else "exporting the best checkpoint."))])
        if not won:
            return None
        self.state["best_cer"] = result.cer
        root = self.out_dir / "averaged"
        step = self.state["step"]
        if self.main:
            from safetensors.torch import save_file

            ckpt.write_checkpoint(root, step, lambda tmp: save_file(average, str(tmp / "trainable.safetensors")),
                                  meta={"averaged": steps})
        self.accelerator.wait_for_everyone()
        return root, step, steps

    def interpolate_with_start(self, root: Path, step: int | None) -> tuple[Path, float | None]:
        """WiSE-FT (training.wiseft): move the chosen checkpoint under ``root`` back towards the starting model by
        ``1 - wise_ft_alpha``, score that on the eval set, and write it as a checkpoint under ``interpolated/``.
        It is exported whatever its eval CER: what it buys (other speakers and conditions) is not in the eval
        set. Returns (its root, its eval CER)."""
        from safetensors.torch import load_file

        from whisper_zh.training.wiseft import interpolate

        alpha = self.config.wise_ft_alpha
        step, source = ckpt.complete_or_latest(root, step, "interpolate")
        start = trainable_state(apply_model_options(load_model(self.config.model)[0], self.config))
        merged = interpolate(start, load_file(str(source / "trainable.safetensors")), alpha)
        result = self._evaluate_weights(merged)
        out = self.out_dir / "interpolated"
        if self.main:
            from safetensors.torch import save_file

            self.train_log.write({"step": step, "interpolated": alpha, **result.to_row()})
            self.report([Event("info", "interpolated", step,
                               f"step {step} interpolated with the starting model (WiSE-FT, alpha {alpha:g}): eval "
                               f"CER {result.cer:.2%} against {self.state['best_cer']:.2%}; exporting it.")])
            ckpt.write_checkpoint(out, step, lambda tmp: save_file(merged, str(tmp / "trainable.safetensors")),
                                  meta={"interpolated": alpha})
        self.accelerator.wait_for_everyone()
        return out, result.cer if result is not None else None

    def _evaluate_weights(self, state: dict[str, torch.Tensor]) -> EvalResult | None:
        """Load ``state`` (trainable tensors) into the model and score it on the eval set."""
        params = dict(self.unwrapped.named_parameters())
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor.to(params[name].device, params[name].dtype))
        return self.evaluate()

    def _result(self) -> FinetuneResult:
        state = self.state
        if self.main:
            self.train_log.write({"step": state["step"], "event": "finished", "level": "info",
                                  "message": f"best CER {state['best_cer']:.2%} at step {state['best_step']}"})
        return FinetuneResult(self.out_dir, state["step"], state["best_step"], state["best_cer"], state["initial_cer"],
                              history=self.train_log.rows() if self.main else [], events=self.events,
                              resumed_from=int(self.resume_from.name.split("-")[1]) if self.resume_from else None,
                              samples_per_second=state["samples"] / max(state["train_seconds"], 1e-9),
                              train_seconds=state["train_seconds"])


class _LogWindow:
    """Train loss and throughput (samples per second of training, evals and saves left out) between log lines."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.samples = 0
        self.seconds = 0.0

    def add(self, loss: float, samples: int, seconds: float) -> None:
        self.losses.append(loss)
        self.samples += samples
        self.seconds += seconds

    def flush(self) -> dict[str, float]:
        row = {"loss": float(np.mean(self.losses)), "samples_per_second": self.samples / max(self.seconds, 1e-9)}
        self.losses, self.samples, self.seconds = [], 0, 0.0
        return row


# ---------------------------------------------------------------------------------------------- export

def export_best(config: FinetuneConfig, result: FinetuneResult, ckpt_root: Path, *, command: str | None) -> Path:
    """Write the best checkpoint's model into output_dir in Transformers layout (LoRA merged), plus the card,
    curves and, with ``export_ct2``, a CTranslate2 copy in ``output_dir/ctranslate2-<quantization>``."""
    from whisper_zh.files import atomic_dir
    from whisper_zh.hf import save_processor

    out_dir = Path(config.output_dir)
    model, processor = load_model(config.model)
    model = apply_model_options(model, config)
    exported_step, best = ckpt.complete_or_latest(ckpt_root, result.best_step, "export")
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
    write_model_card(config, result, out_dir, exported_step=exported_step, command=command)
    return out_dir

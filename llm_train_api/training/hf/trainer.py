"""The fine-tuning run: spec in, checkpoints, metrics, stdout events and the model out.

:func:`run_training` does one job and raises on failure; :func:`execute` wraps it in the
contract both trainers keep (``error``/``done`` events, exit codes 0/1/2/75; see
:mod:`llm_train_api.training.common_run`, which also holds the step loop's bookkeeping).

Loss: next-token cross entropy on the target tokens only (:mod:`.render` says which),
averaged over every target token of the optimizer step (all micro-batches, all ranks),
so a long example weighs by its tokens, not as one vote, whatever the accumulation or the
rank count. Reported with it: token accuracy (argmax = target), the learning rate and
tokens/s (non-pad tokens of the global batch). With method ``dpo`` the loss is DPO's on
preference pairs, averaged over the step's pairs, reported with the rewards (:mod:`.dpo`);
the loop, resume and checkpoints are the same.

Resume: a job folder with ``checkpoints/latest.json`` continues at its step with the
weights, optimizer, GradScaler and RNG states restored (:mod:`.state`); batches depend
only on ``(seed, step)`` and the learning rate only on the step, so N steps + resume + N
steps reproduce a 2N-step run. ``metrics.jsonl`` is cut back to the checkpoint's step.
Stopping (``stop`` set on SIGTERM/SIGINT, or ``stop_at_step``) ends the run after the
current step with a checkpoint, outcome ``preempted``, exit code 75.

DDP (under torchrun): as the built-in trainer: ``batch_size`` is global, each rank trains
on its slice of the one-process batch, DistributedDataParallel averages gradients once per
optimizer step, only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from llm_train_api.training import distributed, manifest
from llm_train_api.training.common_run import (
    METRICS_FILE,
    MetricsLog,
    RunResult,
    autocast_for,
    check_diverged,
    due_at,
    end_run,
    finite,
    injected_fault,
    optimizer_step,
    perplexity,
    publish_metrics,
    raise_injected_fault,
    rank_seed,
    resolve_device,
    resolve_dtype,
    run_contract,
    set_learning_rate,
    stop_requested,
    wrap_ddp,
    write_spec_file,
)
from llm_train_api.training.datasets import DatasetError
from llm_train_api.training.events import OUTCOME_SUCCEEDED, EventWriter
from llm_train_api.training.formats import FormatError
from llm_train_api.training.hf import data as hfdata
from llm_train_api.training.hf import dpo, modeling, state
from llm_train_api.training.hf.hyperparams import weights_method
from llm_train_api.training.hf.plan import plan_data
from llm_train_api.training.hf.spec import OUTPUT_FOLDER, FineTuneSpec, ValidSpec, validate_spec
from llm_train_api.training.hyperparams import HyperparameterError
from llm_train_api.training.spec import SpecError, check_global_batch
from llm_train_api.training.storage import LocalStorage

ADAM_BETAS = (0.9, 0.999)
#: Settings a resume must not change: they decide what the weights and batches are.
FIXED_ON_RESUME = ("method", "lora", "max_seq_length", "packing", "seed", "batch_size",
                   "gradient_accumulation_steps", "val_fraction")


def make_optimizer(params: dict[str, torch.nn.Parameter], hp: Mapping[str, Any]
                   ) -> torch.optim.AdamW:
    decay = [p for p in params.values() if p.dim() >= 2]
    rest = [p for p in params.values() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": hp["weight_decay"]},
              {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=hp["learning_rate"], betas=ADAM_BETAS, eps=1e-8)


def local_job_dir(job_dir: str | os.PathLike[str]) -> Path:
    text = os.fspath(job_dir)
    if "://" in text and not text.startswith("file://"):
        raise SpecError("The fine-tuning trainer needs a local job folder (or a mounted "
                        f"one), not {text!r}.")
    return Path(text.removeprefix("file://"))


def _sums(model: Any, batch: dict[str, torch.Tensor], autocast: Any
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy sum, correct predictions) over the batch's target tokens."""
    logits, labels = modeling.next_token_logits(model, batch, autocast)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                           ignore_index=hfdata.IGNORE, reduction="sum")
    correct = ((logits.argmax(-1) == labels) & (labels != hfdata.IGNORE)).sum()
    return loss, correct


class TokenObjective:
    """Supervised fine-tuning: cross entropy on the target tokens. Statistics per
    micro-batch: loss sum, targets, correct predictions."""

    width = 3

    def __init__(self, pad_id: int, device: torch.device, autocast: Any) -> None:
        self.pad_id, self.device, self.autocast = pad_id, device, autocast

    count = staticmethod(hfdata.targets)

    def sums(self, model: Any, seqs: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        loss, correct = _sums(model, hfdata.collate(seqs, self.pad_id, self.device),
                              self.autocast)
        return loss, torch.stack([loss.detach(), torch.tensor(
            float(hfdata.targets(seqs)), device=loss.device), correct.float()])

    @staticmethod
    def metrics(totals: torch.Tensor, prefix: str = "") -> dict[str, float]:
        n, prefix = max(float(totals[1].item()), 1.0), prefix or "train_"
        out = {f"{prefix}loss": float(totals[0].item()) / n,
               f"{prefix}token_accuracy": float(totals[2].item()) / n}
        if prefix == "val_":
            out["val_perplexity"] = perplexity(out["val_loss"])
        return out


def run_training(spec: FineTuneSpec | Mapping[str, Any], job_dir: str | os.PathLike[str],
                 events: EventWriter | None = None, stop: threading.Event | None = None,
                 stop_at_step: int | None = None) -> RunResult:
    events = events or EventWriter()
    stop = stop or threading.Event()
    valid = validate_spec(spec)
    device = resolve_device(valid.hp["device"])
    ddp, device = distributed.from_env(device)
    try:
        return _train(valid, device, ddp, local_job_dir(job_dir), events, stop, stop_at_step)
    finally:
        if ddp is not None:
            ddp.close()


def _train(valid: ValidSpec, device: torch.device, ddp: distributed.DistContext | None,
           job_dir: Path, events: EventWriter, stop: threading.Event,
           stop_at_step: int | None) -> RunResult:
    spec, hp = valid.spec, valid.hp
    is_main = ddp is None or ddp.is_main
    world, rank = (ddp.world_size, ddp.rank) if ddp is not None else (1, 0)
    local_batch = check_global_batch(hp["batch_size"], world)
    storage = LocalStorage(job_dir)
    if is_main:
        write_spec_file(storage, spec)
    dtype = resolve_dtype(hp["dtype"], device)
    dtype_name = str(dtype).removeprefix("torch.")
    if hp["num_threads"]:
        torch.set_num_threads(hp["num_threads"])

    tokenizer = modeling.load_tokenizer(valid.model_path)
    events.log(f"rendering dataset {spec.dataset} ({valid.dataset_path})")
    plan = plan_data(valid, tokenizer)
    train_set, train_seqs, val_seqs = plan.train, plan.train_seqs, plan.val_seqs
    events.emit("prepare", dataset=spec.dataset, sha256=None, n_tokens=train_set.tokens,
                cached=False, kind=train_set.kind, records=train_set.records,
                truncated=train_set.truncated, dropped=train_set.dropped)
    if train_set.truncated or train_set.dropped:
        events.log(f"{train_set.truncated} example(s) truncated to max_seq_length "
                   f"{hp['max_seq_length']}, {train_set.dropped} dropped (nothing to learn "
                   "left)")
    batches = hfdata.StepBatches(train_seqs, hp["batch_size"],
                                 hp["gradient_accumulation_steps"], hp["seed"], rank, world)
    spe, total_steps = plan.steps_per_epoch, plan.total_steps

    torch.manual_seed(hp["seed"])
    weights_hp = {**hp, "method": weights_method(hp)}  # DPO trains LoRA or every weight
    model = modeling.load_model(valid.model_path, weights_hp, device, dtype)
    model = modeling.prepare_for_training(model, weights_hp, hp["seed"])
    if ddp is not None and rank:
        torch.manual_seed(rank_seed(hp["seed"], rank))
    trainable = modeling.trainable_parameters(model)
    optimizer = make_optimizer(trainable, hp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in trainable.values())

    step, best_val, elapsed_before, resumed_from = 0, math.inf, 0.0, None
    corrupt: list[tuple[int, str]] = []
    found = state.resume_folder(job_dir, lambda bad, why: corrupt.append((bad, why)))
    if corrupt:
        fallback = None if found is None else int(found.name.removeprefix("step-"))
        for bad, why in corrupt:
            events.emit("checkpoint_corrupt", step=bad, reason=why, fallback_step=fallback)
            events.log(f"checkpoint of step {bad} is corrupt ({why}); "
                       + (f"resuming from step {fallback}" if fallback is not None
                          else "starting over"))
    if found is not None:
        saved = state.load(found, trainable, optimizer, rank, world)
        changed = [k for k in FIXED_ON_RESUME if saved["config"].get(k) != hp[k]]
        if changed:
            raise SpecError(f"The job folder's checkpoint was made with other "
                            f"{', '.join(changed)}; use an empty job folder.")
        if saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        step, best_val = int(saved["step"]), float(saved["best_val_loss"] or math.inf)
        elapsed_before, resumed_from = float(saved["elapsed_s"]), step
        events.log(f"resumed from step {step}")
    else:
        _load_branch(job_dir, trainable, events)
    metrics_log = MetricsLog(storage, step) if is_main else None
    last_eval: dict[str, Any] | None = None

    train_model: Any = wrap_ddp(model, device) if ddp is not None else model
    autocast = autocast_for(device, dtype)
    objective: Any = TokenObjective(tokenizer.pad_token_id, device, autocast)
    if hp["method"] == "dpo":
        # A frozen full-weight reference loads in the compute dtype, as LoRA's base does.
        reference = dpo.reference_scorer(model, hp, lambda: modeling.load_model(
            valid.model_path, {**hp, "method": "lora"}, device, dtype), autocast)
        objective = dpo.DPOObjective(hp["dpo"], reference, tokenizer.pad_token_id, device,
                                     autocast)
    name = spec.model_name or valid.model_path.name
    events.emit("start", job_id=spec.job_id, model_name=name, method=hp["method"],
                n_params=n_params, trainable_params=n_trainable, dataset=spec.dataset,
                train_tokens=sum(len(s.input_ids) for s in train_seqs),
                val_tokens=sum(len(s.input_ids) for s in val_seqs),
                train_sequences=len(train_seqs), val_sequences=len(val_seqs),
                steps_per_epoch=spe, total_steps=total_steps,
                tokens_per_step=hp["batch_size"] * hp["gradient_accumulation_steps"]
                * hp["max_seq_length"] * (2 if hp["method"] == "dpo" else 1),  # both answers
                device=str(device), dtype=dtype_name,
                resumed_from_step=resumed_from, estimated_memory_bytes=None,
                processes=world, batch_size_per_process=local_batch)
    events.log(f"fine-tuning {name} ({hp['method']}, {n_trainable:,} of {n_params:,} params "
               f"trainable) on {device} {dtype_name}: {total_steps} steps")

    def save(at_step: int, elapsed: float, val_loss: float | None,
             metrics: dict[str, Any] | None = None) -> None:
        rngs = (ddp.gather_objects(state.capture_rng()) if ddp is not None
                else [state.capture_rng()])
        if not is_main:
            return
        folder = state.save(job_dir, at_step, trainable, optimizer, rngs, {
            "best_val_loss": finite(best_val),
            "elapsed_s": elapsed, "scaler": scaler.state_dict() if scaler.is_enabled()
            else None, "config": hp, "epoch": at_step / spe,
            "data": {"kind": "seeded-per-step", "seed": hp["seed"], "next_step": at_step}},
            metrics=metrics, keep=hp["keep_checkpoints"])
        events.emit("checkpoint", step=at_step, path=str(folder), is_best=False,
                    val_loss=val_loss)

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        model.eval()
        totals = torch.zeros(objective.width, device=device)
        for k in range(hp["eval_steps"]):
            chunk = val_seqs[k * hp["batch_size"]:(k + 1) * hp["batch_size"]]
            share = chunk[rank::world]
            if not chunk:
                break
            if share:
                totals += objective.sums(model, share)[1]
        model.train()
        if ddp is not None:
            totals = ddp.mean(totals) * world
        return objective.metrics(totals, "val_")

    params = list(trainable.values())
    model.train()
    window = torch.zeros(objective.width, device=device)  # this rank's statistics
    window_tokens, window_start = 0, time.perf_counter()
    run_start = time.perf_counter()
    last_saved = step if resumed_from is not None else -1
    preempted = False
    fault = injected_fault()
    while step < total_steps:
        if stop_requested(stop, step, stop_at_step, ddp):
            preempted = True
            break
        raise_injected_fault(fault, rank, step)
        lr = set_learning_rate(optimizer, step, hp, total_steps)
        micro_batches = batches.step_sequences(step)
        denom = max(sum(objective.count(mb) for mb in micro_batches), 1)
        for i, micro in enumerate(micro_batches):
            window_tokens += sum(len(s.input_ids) for s in micro)
            local = batches.local(micro)
            skip_sync = ddp is not None and i < len(micro_batches) - 1
            with train_model.no_sync() if skip_sync else contextlib.nullcontext():
                loss, stats = objective.sums(train_model, local)
                # DDP averages gradients over ranks; the step's loss is a sum over them.
                scaler.scale(loss * (world / denom)).backward()
            window += stats
        optimizer_step(optimizer, scaler, params, hp["grad_clip"])
        step += 1

        do_eval, do_ckpt, report = due_at(step, total_steps, hp, can_evaluate=bool(val_seqs))
        if not report:
            continue
        totals = ddp.mean(window) * world if ddp is not None else window
        train = objective.metrics(totals)
        check_diverged(train["train_loss"], step)
        tokens_per_s = window_tokens / max(time.perf_counter() - window_start, 1e-9)
        val = evaluate() if do_eval else None
        val_loss = val["val_loss"] if val is not None else None
        elapsed = elapsed_before + time.perf_counter() - run_start
        if val_loss is not None:
            best_val = min(best_val, val_loss)
        record = publish_metrics(
            events, metrics_log, step=step, total_steps=total_steps, steps_per_epoch=spe,
            train=train, lr=lr, tokens_per_s=tokens_per_s, elapsed=elapsed, val=val)
        if record.get("val_loss") is not None:
            last_eval = record
        if do_ckpt:
            save(step, elapsed, val_loss, record)
            last_saved = step
        window.zero_()
        window_tokens, window_start = 0, time.perf_counter()

    result = end_run(events, preempted, step, last_saved,
                     lambda: save(step, elapsed_before + time.perf_counter() - run_start,
                                  None),
                     best_val)
    if result.outcome == OUTCOME_SUCCEEDED and is_main:
        written = modeling.save_outputs(model, tokenizer, weights_hp, job_dir / OUTPUT_FOLDER)
        events.log(f"saved {', '.join(OUTPUT_FOLDER + '/' + w for w in written)}")
    if is_main:
        result.result = manifest.summary(manifest.read(job_dir), last_eval)
    return result


def _load_branch(job_dir: Path, trainable: dict[str, torch.nn.Parameter],
                 events: EventWriter) -> None:
    """A branched job's first run: the source checkpoint's trained weights, verified
    against the sha256 recorded when they were written; optimizer and data order anew."""
    try:
        branch = manifest.checked_branch(job_dir)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    if branch is None:
        return
    state.load_weights(Path(branch["path"]), trainable)
    origin = branch.get("origin", {})
    events.log(f"branched from job {origin.get('job_id')} at step {branch.get('step')}")


def execute(spec: FineTuneSpec | Mapping[str, Any], job_dir: str | os.PathLike[str],
            events: EventWriter | None = None, stop: threading.Event | None = None,
            stop_at_step: int | None = None) -> int:
    """The run contract: never raises for training problems, returns the exit code."""
    events = events or EventWriter()
    return run_contract(
        lambda: run_training(spec, job_dir, events, stop, stop_at_step), events,
        usage_errors=(SpecError, HyperparameterError, DatasetError, FormatError),
        cuda_oom_advice="Reduce batch_size or max_seq_length, or use "
                        "gradient_accumulation_steps or gradient_checkpointing.",
        host_oom_message="Out of host memory; reduce batch_size or max_seq_length.")


__all__ = ["METRICS_FILE", "RunResult", "execute", "run_training"]

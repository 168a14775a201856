"""The training run: spec in, checkpoints + metrics + stdout events out.

:func:`run_training` does one job end to end and raises on failure; :func:`execute` wraps
it with the run contract (error/done events, exit codes) and is what the CLI calls.

Resume: when the job folder holds ``ckpt_latest.pt`` the run restores model, optimizer,
scaler and RNG states and continues at the saved step. Batches depend only on
``(seed, step)`` and the schedule only on ``step``, so with the same spec and thread
count on CPU, N steps + resume + N steps reproduces a 2N-step run. ``metrics.jsonl`` is
cut back to the checkpoint's step first, so it never holds steps twice.

Stopping: setting ``stop`` (the CLI does it on SIGTERM/SIGINT) ends the run after the
current optimizer step with a checkpoint saved, outcome ``preempted``, exit code 75.

Only this module, :mod:`.common_run` and :mod:`.storage` touch the job folder.

DDP (under torchrun, see :mod:`.distributed` and :mod:`.launch`): ``batch_size`` is the
global batch, split evenly over the ranks, and each rank trains on its own slice of the
very batch a single process would draw, so the loss curve matches a one-process run at the
same ``batch_size``. Gradients are averaged by DistributedDataParallel (once per optimizer
step: ``no_sync`` on the other micro-steps), the logged train and validation losses are
averaged over the ranks, and only rank 0 writes the job folder (spec, metrics,
checkpoints) and the protocol. Checkpoints hold rank 0's model and optimizer (identical on
every rank) plus every rank's RNG state, so resume and preemption behave as in one process.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from llm_train_api.training import checkpoint as ckpt
from llm_train_api.training import distributed, manifest
from llm_train_api.training.catalog import UnknownModel, estimate_memory, get_model_spec
from llm_train_api.training.common_run import (
    MetricsLog,
    RunResult,
    autocast_for,
    check_diverged,
    due_at,
    end_run,
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
from llm_train_api.training.data import (
    DEFAULT_CHUNK_SIZE,
    BatchSampler,
    PreparationInterrupted,
    load_tokens,
    prepare_tokens,
    token_cache_root,
)
from llm_train_api.training.datasets import DatasetError, default_data_dir
from llm_train_api.training.events import EXIT_PREEMPTED, OUTCOME_PREEMPTED, EventWriter
from llm_train_api.training.hyperparams import HyperparameterError
from llm_train_api.training.model import GPT, GPTConfig
from llm_train_api.training.spec import RunSpec, SpecError, check_global_batch, validate_spec
from llm_train_api.training.storage import JobStorage, LocalStorage, open_job_storage

ADAM_BETAS = (0.9, 0.95)


def steps_per_epoch(train_tokens: int, hp: Mapping[str, Any]) -> int:
    per_step = hp["batch_size"] * hp["block_size"] * hp["gradient_accumulation_steps"]
    return max(1, math.ceil(train_tokens / per_step))


def total_steps_for(train_tokens: int, hp: Mapping[str, Any]) -> int:
    """``max_steps`` when set: it decides the run length on its own, more or fewer steps
    than the epochs would give, as in transformers' Trainer (batches are drawn with
    replacement, so a longer run simply draws more); otherwise ``epochs`` passes."""
    return hp["max_steps"] or hp["epochs"] * steps_per_epoch(train_tokens, hp)


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (``None`` if unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def tune_host_allocator() -> bool:
    """Keep freed activation memory in the glibc heap instead of unmapping it.

    By default glibc serves large blocks with ``mmap`` and returns them on ``free``, so
    every CPU training step page-faults (and the kernel zeroes) its activations again:
    1,100 to 7,000 faults per step for gpt-mini at batch 8 x 128, about 50 with this
    tuning. This
    is what jemalloc/tcmalloc do for PyTorch CPU training, without an ``LD_PRELOAD``.
    Best effort: a no-op (``False``) off glibc. Peak RSS is unchanged; freed memory is
    simply kept for the next step.
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's documented maximum
        ok &= libc.mallopt(m_trim_threshold, 2**30)
    except (OSError, AttributeError):
        return False
    return bool(ok)


def make_optimizer(model: GPT, hp: Mapping[str, Any], device: torch.device) -> torch.optim.AdamW:
    kwargs: dict[str, Any] = {"lr": hp["learning_rate"], "betas": ADAM_BETAS, "eps": 1e-8}
    # Fused AdamW: one kernel for all parameters instead of per-tensor loops (CUDA since
    # torch 2.0, CPU since 2.4); fall back quietly where the build lacks it.
    if "fused" in inspect.signature(torch.optim.AdamW).parameters:
        try:
            return torch.optim.AdamW(model.optimizer_groups(hp["weight_decay"]), fused=True,
                                     **kwargs)
        except (RuntimeError, ValueError):
            pass
    return torch.optim.AdamW(model.optimizer_groups(hp["weight_decay"]), **kwargs)


def run_training(
    spec: RunSpec | Mapping[str, Any],
    job_dir: str | os.PathLike[str],
    events: EventWriter | None = None,
    stop: threading.Event | None = None,
    stop_at_step: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> RunResult:
    """Train (or resume) the job in ``job_dir``; raise on errors (see :func:`execute`).

    ``stop_at_step`` behaves like a SIGTERM arriving before that step: checkpoint, return
    outcome ``preempted``. Tests and time-sliced schedulers use it.
    """
    events = events or EventWriter()
    stop = stop or threading.Event()
    spec, hp, dataset_path = validate_spec(spec)
    device = resolve_device(hp["device"])
    ddp, device = distributed.from_env(device)
    try:
        return _train(spec, hp, dataset_path, device, ddp, job_dir, events, stop,
                      stop_at_step, chunk_size)
    finally:
        if ddp is not None:
            ddp.close()


def _train(
    spec: RunSpec,
    hp: dict[str, Any],
    dataset_path: Path,
    device: torch.device,
    ddp: distributed.DistContext | None,
    job_dir: str | os.PathLike[str],
    events: EventWriter,
    stop: threading.Event,
    stop_at_step: int | None,
    chunk_size: int,
) -> RunResult:
    model_spec = get_model_spec(spec.model_name)
    is_main = ddp is None or ddp.is_main
    world = ddp.world_size if ddp is not None else 1
    local_batch = check_global_batch(hp["batch_size"], world)
    storage = open_job_storage(job_dir)
    if is_main:
        write_spec_file(storage, spec)

    dtype = resolve_dtype(hp["dtype"], device)
    dtype_name = str(dtype).removeprefix("torch.")
    if hp["num_threads"]:
        torch.set_num_threads(hp["num_threads"])
    if device.type == "cpu":
        tune_host_allocator()
    else:
        # float32 matmuls on tensor cores (TF32): ~10-bit mantissa products with fp32
        # accumulation, the usual trade for training; bf16/fp16 runs are unaffected.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    need = estimate_memory(model_spec, local_batch, hp["block_size"], dtype_name)
    # CPU ranks share the host's memory; each CUDA rank has a GPU of its own.
    sharing = ddp.local_world_size if ddp is not None and device.type == "cpu" else 1
    free = available_memory(device)
    if is_main and free is not None and need * sharing > free:
        per = f" x {sharing} processes" if sharing > 1 else ""
        raise SpecError(
            f"Model {model_spec.name} with batch_size {hp['batch_size']} and block_size "
            f"{hp['block_size']} needs about {need / 2**30:.1f} GiB{per} but only "
            f"{free / 2**30:.1f} GiB is free on {device.type}."
        )

    data_dir = default_data_dir(spec.data_dir)
    prepared = None
    if is_main:  # one rank tokenises (writes the shared cache); the others wait for it
        events.log(f"preparing dataset {spec.dataset} ({dataset_path})")
        with contextlib.suppress(PreparationInterrupted):
            prepared = prepare_tokens(dataset_path, token_cache_root(data_dir), chunk_size,
                                      stop.is_set)
    if ddp is not None:
        prepared = ddp.broadcast_object(prepared)
    if prepared is None:
        # Nothing trained yet, so nothing to checkpoint: the rerun starts over.
        events.log("stopped while preparing the dataset; rerun to continue")
        return RunResult(OUTCOME_PREEMPTED, EXIT_PREEMPTED, 0, None)
    events.emit("prepare", dataset=spec.dataset, sha256=prepared.sha256,
                n_tokens=prepared.n_tokens, cached=prepared.cached)

    sampler = BatchSampler(load_tokens(prepared), hp["block_size"], hp["batch_size"],
                           hp["seed"], hp["val_fraction"], device,
                           hp["gradient_accumulation_steps"],
                           rank=ddp.rank if ddp is not None else 0, world_size=world)
    spe = steps_per_epoch(sampler.n_train, hp)
    total_steps = total_steps_for(sampler.n_train, hp)
    tokens_per_step = hp["batch_size"] * hp["block_size"] * hp["gradient_accumulation_steps"]

    torch.manual_seed(hp["seed"])
    config = GPTConfig.from_spec(model_spec, dropout=hp["dropout"])
    model = GPT(config).to(device)  # the same initial weights on every rank
    if ddp is not None and ddp.rank:
        torch.manual_seed(rank_seed(hp["seed"], ddp.rank))
    optimizer = make_optimizer(model, hp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    step, best_val_loss, elapsed_before = 0, math.inf, 0.0
    resumed_from: int | None = None
    local_dir = storage.root if isinstance(storage, LocalStorage) else None
    source = _resume_source(storage, local_dir, events)
    if source is not None:
        state = (ckpt.load_checkpoint(source, map_location=device)
                 if isinstance(source, Path)
                 else ckpt.load_checkpoint(storage, ckpt.LATEST, map_location=device))
        if state["model_args"] != config.to_dict():
            raise SpecError("The checkpoint in the job folder was made for a different "
                            "model configuration; use an empty job folder.")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, best_val_loss = int(state["step"]), float(state["best_val_loss"])
        elapsed_before = float(state.get("elapsed_s", 0.0))
        if state.get("dataset", {}).get("sha256") != prepared.sha256:
            events.log("warning: the dataset changed since the checkpoint was written")
        rng_ranks = state.get("rng_ranks")
        if ddp is not None and rng_ranks and len(rng_ranks) == world:
            ckpt.restore_rng_state(rng_ranks[ddp.rank])
        else:  # a checkpoint from another rank count: rank 0 continues, others reseed
            ckpt.restore_rng_state(state["rng"])
            if ddp is not None and ddp.rank:
                torch.manual_seed(rank_seed(hp["seed"], ddp.rank) + step)
        del state
        resumed_from = step
        events.log(f"resumed from step {step}")
    elif local_dir is not None:
        _load_branch(local_dir, model, config, device, events)
    metrics_log = MetricsLog(storage, step) if is_main else None

    ddp_model: Any = wrap_ddp(model, device) if ddp is not None else None
    train_model: Any = ddp_model if ddp_model is not None else model
    if hp["compile"]:
        train_model = torch.compile(train_model)
    # Evaluation bypasses the DDP wrapper: no gradient, nothing to synchronise.
    eval_model: Any = train_model if ddp is None else model
    autocast = autocast_for(device, dtype)
    last_eval: dict[str, Any] | None = None
    events.emit("start", job_id=spec.job_id, model_name=model_spec.name,
                n_params=model.num_parameters(), dataset=spec.dataset,
                train_tokens=sampler.n_train, val_tokens=sampler.n_val,
                steps_per_epoch=spe, total_steps=total_steps, tokens_per_step=tokens_per_step,
                device=str(device), dtype=dtype_name, resumed_from_step=resumed_from,
                estimated_memory_bytes=need, num_threads=torch.get_num_threads(),
                processes=world, batch_size_per_process=local_batch)
    events.log(f"training {model_spec.name} ({model.num_parameters():,} params) on {device} "
               f"{dtype_name}: {total_steps} steps x {tokens_per_step} tokens"
               + (f" over {world} processes ({ddp.backend})" if ddp is not None else ""))

    def checkpoint_payload(at_step: int, elapsed: float) -> dict[str, Any]:
        return ckpt.build_checkpoint(
            model=model.state_dict(), optimizer=optimizer.state_dict(),
            scaler=scaler.state_dict(), model_name=model_spec.name,
            model_args=config.to_dict(), step=at_step, epoch=at_step / spe,
            total_steps=total_steps, best_val_loss=best_val_loss, config=hp,
            dataset={"name": spec.dataset, "sha256": prepared.sha256,
                     "n_tokens": prepared.n_tokens},
            rng=ckpt.capture_rng_state(),
            sampler={"kind": "seeded-per-step", "seed": hp["seed"], "next_step": at_step},
            elapsed_s=elapsed, job_id=spec.job_id,
        )

    def save(name: str, at_step: int, elapsed: float, val_loss: float | None,
             metrics: Mapping[str, Any] | None = None) -> None:
        # Collective: every rank hands its RNG state to rank 0, which alone writes.
        rng_ranks = ddp.gather_objects(ckpt.capture_rng_state()) if ddp is not None else None
        if not is_main:
            return
        payload = checkpoint_payload(at_step, elapsed)
        if rng_ranks is not None:
            payload["rng_ranks"] = rng_ranks
        path = ckpt.save_checkpoint(storage, name, payload)
        if name == ckpt.LATEST and local_dir is not None:
            rel = ckpt.keep_step(local_dir, at_step)
            manifest.record(local_dir, at_step, rel, metrics, hp["keep_checkpoints"])
        events.emit("checkpoint", step=at_step, path=path, is_best=name == ckpt.BEST,
                    val_loss=val_loss)

    @torch.no_grad()
    def evaluate() -> tuple[float, float]:
        """Mean validation loss and token accuracy (argmax = next byte)."""
        model.eval()
        total = torch.zeros(2, device=device)  # loss, accuracy
        for k in range(hp["eval_steps"]):
            x, y = sampler.val_batch(k)
            with autocast:
                logits, loss = eval_model(x, y)
            accuracy = (logits.argmax(-1) == y).float().mean()
            total += torch.stack([loss.float(), accuracy])
        model.train()
        if ddp is not None:  # equal shards: the mean of the ranks' means is the batch mean
            total = ddp.mean(total)
        loss, accuracy = (float(v) / hp["eval_steps"] for v in total.tolist())
        return loss, accuracy

    accum = hp["gradient_accumulation_steps"]
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    loss_sum = torch.zeros((), device=device)
    window_steps, window_start = 0, time.perf_counter()
    run_start = time.perf_counter()
    last_saved = step if resumed_from is not None else -1
    preempted = False
    fault = injected_fault()
    my_rank = ddp.rank if ddp is not None else 0

    while step < total_steps:
        if stop_requested(stop, step, stop_at_step, ddp):
            preempted = True
            break
        raise_injected_fault(fault, my_rank, step)
        lr = set_learning_rate(optimizer, step, hp, total_steps)
        xs, ys = sampler.train_batch(step)
        for micro in range(accum):
            # DDP all-reduces gradients in backward; only the last micro-step needs it.
            skip_sync = ddp_model is not None and micro < accum - 1
            with ddp_model.no_sync() if skip_sync else contextlib.nullcontext():
                with autocast:
                    _, loss = train_model(xs[micro], ys[micro])
                loss_sum += loss.detach()
                scaler.scale(loss / accum if accum > 1 else loss).backward()
        optimizer_step(optimizer, scaler, params, hp["grad_clip"])
        step += 1
        window_steps += 1

        do_eval, do_ckpt, report = due_at(step, total_steps, hp)
        if not report:
            continue
        # The only host sync of the step: everything above stays queued on the device
        # (the DDP stop vote is a CPU-side gloo collective, not a device sync).
        window_loss = ddp.mean(loss_sum) if ddp is not None else loss_sum
        train_loss = float(window_loss.item()) / (window_steps * accum)
        now = time.perf_counter()
        tokens_per_s = window_steps * tokens_per_step / max(now - window_start, 1e-9)
        check_diverged(train_loss, step)
        val_loss, val_acc = evaluate() if do_eval else (None, None)
        elapsed = elapsed_before + time.perf_counter() - run_start
        record = publish_metrics(
            events, metrics_log, step=step, total_steps=total_steps, steps_per_epoch=spe,
            train={"train_loss": train_loss}, lr=lr, tokens_per_s=tokens_per_s,
            elapsed=elapsed,
            val=None if val_loss is None else {
                "val_loss": val_loss, "val_perplexity": perplexity(val_loss),
                "val_token_accuracy": val_acc})
        if record.get("val_loss") is not None:
            last_eval = record
        improved = val_loss is not None and val_loss < best_val_loss
        if improved:
            best_val_loss = val_loss  # type: ignore[assignment]
        if do_ckpt:
            save(ckpt.LATEST, step, elapsed, val_loss, record)
            last_saved = step
        if improved:
            if last_saved == step:
                if is_main:
                    storage.copy(ckpt.LATEST, ckpt.BEST)
                events.emit("checkpoint", step=step, path=storage.uri(ckpt.BEST),
                            is_best=True, val_loss=val_loss)
            else:
                save(ckpt.BEST, step, elapsed, val_loss)
        loss_sum.zero_()
        window_steps, window_start = 0, time.perf_counter()

    result = end_run(events, preempted, step, last_saved,
                     lambda: save(ckpt.LATEST, step,
                                  elapsed_before + time.perf_counter() - run_start, None),
                     best_val_loss)
    if is_main and local_dir is not None:
        result.result = manifest.summary(manifest.read(local_dir), last_eval)
    return result


def _resume_source(storage: JobStorage, local_dir: Path | None, events: EventWriter
                   ) -> str | Path | None:
    """What a rerun continues from: in a local folder the newest checkpoint whose sha256
    verifies (each newer corrupt one is reported by a ``checkpoint_corrupt`` event), else
    ``ckpt_latest.pt`` where a folder has no manifest (older runs, object storage)."""
    if local_dir is not None and manifest.read(local_dir):
        corrupt: list[tuple[int, str]] = []
        entry = manifest.newest_good(
            local_dir, lambda bad, why: corrupt.append((bad["step"], why)))
        fallback = None if entry is None else entry["step"]
        for bad_step, why in corrupt:
            events.emit("checkpoint_corrupt", step=bad_step, reason=why,
                        fallback_step=fallback)
            events.log(f"checkpoint of step {bad_step} is corrupt ({why}); "
                       + (f"resuming from step {fallback}" if fallback is not None
                          else "starting over"))
        return None if entry is None else local_dir / entry["path"]
    if storage.exists(ckpt.LATEST):
        local = storage.local_path(ckpt.LATEST)
        return local if local is not None else ckpt.LATEST
    return None


def _load_branch(local_dir: Path, model: GPT, config: GPTConfig, device: torch.device,
                 events: EventWriter) -> None:
    """A branched job's first run: the source checkpoint's weights (verified against the
    sha256 recorded when it was written), with a fresh optimizer and data order."""
    try:
        branch = manifest.checked_branch(local_dir)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    if branch is None:
        return
    state = ckpt.load_checkpoint(Path(branch["path"]), map_location=device)
    if state["model_args"] != config.to_dict():
        raise SpecError("cannot branch: the source checkpoint is of another model "
                        "configuration")
    model.load_state_dict(state["model"])
    origin = branch.get("origin", {})
    events.log(f"branched from job {origin.get('job_id')} at step {branch.get('step')}")


def execute(
    spec: RunSpec | Mapping[str, Any],
    job_dir: str | os.PathLike[str],
    events: EventWriter | None = None,
    stop: threading.Event | None = None,
    stop_at_step: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> int:
    """Run the contract: never raises for training problems, returns the exit code.

    On failure the last protocol lines are ``error`` (``message`` suitable for a job's
    ``error_message``) and ``done`` with outcome ``failed``.
    """
    events = events or EventWriter()

    def run() -> RunResult:
        run_spec = spec if isinstance(spec, RunSpec) else RunSpec.from_dict(spec)
        return run_training(run_spec, job_dir, events, stop, stop_at_step, chunk_size)

    return run_contract(
        run, events,
        usage_errors=(SpecError, HyperparameterError, UnknownModel, DatasetError),
        reported_errors=(ckpt.CheckpointDiskFull,),
        cuda_oom_advice="Reduce batch_size or block_size, or use gradient_accumulation_steps.",
        host_oom_message="Out of host memory; reduce batch_size or block_size.")

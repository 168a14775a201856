"""Data-parallel plumbing for the trainer: what a rank needs beyond a single-process run.

torchrun starts one process per rank with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT`` in the environment; :func:`from_env` joins the group
from them (NCCL on CUDA, gloo on CPU). Without torchrun (or with ``WORLD_SIZE=1``) it
returns ``None`` and the trainer runs exactly the single-process code path.

Every collective here is called by all ranks at the same point of the loop; the loop's
decisions (log, evaluate, checkpoint, stop) are functions of the step number or of values
all-reduced here, so the ranks never disagree about which collective comes next. Control
traffic (the stop vote, RNG states, the prepare status) goes over a gloo group even on
CUDA, so it never forces a device sync.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

#: How long a collective may wait. Generous because ranks 1.. wait in one while rank 0
#: tokenises a new dataset (minutes for GBs); a rank that dies is noticed by torchrun,
#: which stops the others, so this only bounds a rank that hangs without dying.
PG_TIMEOUT = timedelta(hours=2)


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank_from_env() -> int:
    return int(os.environ.get("RANK", "0") or 0)


@dataclass
class DistContext:
    """This process's place in the group, with the few collectives the trainer uses."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    backend: str
    control: Any  # gloo process group for CPU-side control messages

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any: a SIGTERM may reach the ranks a
        step apart, but they must all stop after the same step."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return bool(t.item())

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over ranks, on every rank (gloo has no AVG: sum, divide)."""
        out = tensor.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world_size

    def gather_objects(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.control)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def from_env(device: torch.device) -> tuple[DistContext | None, torch.device]:
    """Join the torchrun group if there is one; return it and this rank's device.

    On CUDA each rank takes ``cuda:LOCAL_RANK`` of the GPUs it can see (the worker sets
    ``CUDA_VISIBLE_DEVICES`` to the job's GPUs, one per rank).
    """
    world_size = world_size_from_env()
    if world_size <= 1:
        return None, device
    rank = rank_from_env()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"rank {rank} needs cuda:{local_rank} but only {torch.cuda.device_count()} "
                "GPU(s) are visible; run as many processes as GPUs.")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                            timeout=PG_TIMEOUT,
                            **({"device_id": device} if backend == "nccl" else {}))
    control = (dist.new_group(backend="gloo", timeout=PG_TIMEOUT) if backend != "gloo"
               else dist.group.WORLD)
    return DistContext(rank, local_rank, world_size, local_world, backend, control), device

"""Running under ``torchrun``: PyTorch's own process groups, DDP and samplers, nothing of our own.

``torchrun --nproc-per-node N -m slimkit train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; slimkit
then joins the process group (NCCL on GPUs, gloo on CPU), wraps the model in
DistributedDataParallel and shards every batch. ``--batch-size`` is always the *global* batch
(what one process would use alone), so the LR rule and the loss curve do not depend on N; each
process takes batch / (N x accumulation steps) per micro-step. Only rank 0 writes files and draws
progress bars.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "setup", "is_main", "all_reduce_sum", "barrier", "world_size", "cleanup", "replicas_identical"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_type: str = "cpu") -> DistInfo:
    """Join the process group torchrun describes (once); a plain run stays single-process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                    dist.get_backend())


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def all_reduce_sum(*values: float, device: torch.device | str = "cpu") -> list[float]:
    """Sum Python numbers over all processes (identity when single-process)."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def replicas_identical(model: torch.nn.Module) -> bool:
    """True when every process holds exactly rank 0's parameters (DDP's promise, checked). BN running
    statistics are not compared: each process updates them from its own slice, and DDP re-broadcasts
    rank 0's before every forward (rank 0's are the ones saved)."""
    if world_size() == 1:
        return True
    flat = torch.cat([t.detach().reshape(-1).double() for t in model.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return bool(diff.item() == 0.0)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

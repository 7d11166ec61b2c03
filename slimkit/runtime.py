"""Where slimkit computes: the device, the memory layout, mixed precision and ``torchrun`` processes.

**Device and layout.** Models and image batches are placed channels-last (NHWC) on every device,
CPU included: oneDNN's CPU convolutions and cuDNN's both run faster in that layout (a user's model
whose code needs NCHW, such as ``x.view(x.size(0), -1)`` over a feature map, keeps it:
:func:`runs_channels_last`). The layout
changes strides, not the maths (float rounding aside), so checkpoints and exports are unaffected.
Activations that PyTorch runs in place by cloning their input when autograd needs it (ReLU6 /
Hardtanh, Hardswish, SiLU) are switched to out-of-place while slimkit trains or learns gates: the
clone is a full extra pass over every activation (about 5% of a MobileNet-V1 step here).
Together, on this project's 2-core CPU: training steps 1.14-1.18x and gate-learning steps
1.17-1.48x faster (``bench/gate_step.py`` times both ways side by side).

**Mixed precision.** bf16 autocast on CUDA (no loss scaling needed); fp32 on the CPU.

**torchrun.** PyTorch's own process groups, DDP and samplers, nothing of our own.
``torchrun --nproc-per-node N -m slimkit train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; slimkit
then joins the process group (NCCL on GPUs, gloo on CPU), wraps the model in
DistributedDataParallel and shards every batch. ``--batch-size`` is always the *global* batch
(what one process would use alone), so the LR rule and the loss curve do not depend on N; each
process takes batch / (N x accumulation steps) per micro-step. Only rank 0 writes files and draws
progress bars. The same variables set by hand (a SLURM script, one terminal per process) work too:
rank 0 serves the rendezvous at MASTER_ADDR:MASTER_PORT and every process waits for the others, for
at most ``HAND_LAUNCH_JOIN_SECONDS``, interruptibly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from slimkit.errors import SlimkitError

__all__ = ["resolve_device", "place_model", "place_batch", "runs_channels_last", "out_of_place_activations", "autocast",
           "DistInfo", "launch_env", "setup_distributed", "local_device", "is_main", "all_reduce_sum", "barrier", "world_size",
           "cleanup_distributed", "replicas_identical"]


# ---------------------------------------------------------------------------- device and layout
# In-place versions of these clone their input under autograd (checked on torch 2.14); ReLU does not.
_CLONING_INPLACE = (nn.Hardtanh, nn.Hardswish, nn.SiLU)


def available_memory_bytes() -> int | None:
    """Memory this machine can still give (Linux's MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when visible, else CPU; an explicit ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SlimkitError("--device cuda asked but no CUDA GPU is visible: use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError:
        raise SlimkitError(f"unknown --device '{device}': use auto, cpu or cuda") from None


def place_model(model: nn.Module, device: torch.device, channels_last: bool = True) -> nn.Module:
    """Move ``model`` to ``device``; 4-D weights (convolutions) go channels-last unless told not to."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def place_batch(x: torch.Tensor, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """Move an input batch to ``device``; image batches (N, C, H, W) go channels-last to match the model."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def runs_channels_last(model: nn.Module, example: torch.Tensor) -> bool:
    """Whether ``model`` (on the CPU) runs on ``example``, one image batch, in the channels-last layout. A user's
    model that flattens a feature map with ``.view`` (``x.view(x.size(0), -1)``, written for NCHW) fails in it and
    runs in the layout it was written for (the layout changes speed, not the maths); a model that fails either way
    is left to fail where it runs, with its own error. Tried in eval mode without gradients: nothing changes."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                model.to(memory_format=torch.channels_last)(example.contiguous(memory_format=torch.channels_last))
                return True
            except RuntimeError:
                pass
            try:
                model.to(memory_format=torch.contiguous_format)(example.contiguous())
            except RuntimeError:
                return True
            return False
    finally:
        model.train(was_training)


def out_of_place_activations(model: nn.Module) -> list[nn.Module]:
    """Run ``model``'s cloning in-place activations out of place; returns the modules changed.

    Same values either way; for grad-mode steps, out of place skips a clone and a copy-back.
    """
    changed = [m for m in model.modules() if isinstance(m, _CLONING_INPLACE) and getattr(m, "inplace", False)]
    for m in changed:
        m.inplace = False
    return changed


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA when ``enabled``; a no-op context on the CPU (fp32 there)."""
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


# ---------------------------------------------------------------------------- torchrun
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


def launch_env() -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) as torchrun sets them, (0, 1, 0) without it; checked, so a stray
    or mistyped variable is one line instead of a traceback, or of a prune that writes nothing because
    it took itself for a non-zero rank."""
    fix = "slimkit reads it from torchrun: unset it, or launch with torchrun --nproc-per-node N -m slimkit ..."

    def read(name: str, default: int) -> int:
        text = os.environ.get(name, "").strip()
        if not text:
            return default
        try:
            return int(text)
        except ValueError:
            raise SlimkitError(f"{name}={text[:40]!r} is not a whole number; {fix}") from None

    rank, world, local = read("RANK", 0), read("WORLD_SIZE", 1), read("LOCAL_RANK", 0)
    # torchrun sets all three, with LOCAL_RANK < LOCAL_WORLD_SIZE <= WORLD_SIZE; a rank taken as 0 by default
    # would write as the main process beside the real one
    local_world = read("LOCAL_WORLD_SIZE", world)
    if world > 1 and not os.environ.get("RANK", "").strip():
        raise SlimkitError(f"WORLD_SIZE={world} without RANK is no process of a torchrun launch; {fix}")
    if world < 1 or not 0 <= rank < world or not 0 <= local < min(world, local_world):
        raise SlimkitError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local} is no process of a torchrun launch "
                           f"(0 <= RANK < WORLD_SIZE, 0 <= LOCAL_RANK < LOCAL_WORLD_SIZE <= WORLD_SIZE); {fix}")
    return rank, world, local


def setup_distributed(device_type: str = "cpu") -> DistInfo:
    """Join the process group torchrun describes (once); a plain run stays single-process."""
    _, world, local = launch_env()
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            if local >= torch.cuda.device_count():  # torch.cuda.set_device's own error is a traceback
                raise SlimkitError(f"LOCAL_RANK={local} names GPU {local}, but this machine has "
                                   f"{torch.cuda.device_count()}: launch at most that many processes per node "
                                   "(torchrun --nproc-per-node)")
            torch.cuda.set_device(local)
        try:
            if os.environ.get("TORCHELASTIC_RUN_ID"):  # torchrun: its agent has gathered every peer
                dist.init_process_group(backend)
            else:
                rank = launch_env()[0]
                dist.init_process_group(backend, store=_join_by_hand(rank, world), rank=rank, world_size=world)
        except (ValueError, RuntimeError) as exc:  # WORLD_SIZE set by hand: no MASTER_ADDR, no peers
            raise SlimkitError(f"WORLD_SIZE={world} asks for {world} processes, but joining their process group "
                               f"failed ({str(exc).splitlines()[0][:160]}): launch with torchrun, or unset "
                               "WORLD_SIZE") from None
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, dist.get_backend())


# How long a process launched without torchrun waits for its peers. torch's own wait (30 min) sits in
# C++, where neither Ctrl-C nor SIGTERM reach Python; this one polls from Python, so both stop it.
HAND_LAUNCH_JOIN_SECONDS = 300.0


def _join_by_hand(rank: int, world: int, patience: float | None = None) -> dist.TCPStore:
    """The rendezvous store of a launch whose RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT were set by
    hand (a script, srun, two terminals): rank 0 serves it, the others connect, and every process
    waits, interruptibly, until all ``world`` have joined or ``patience`` seconds have passed."""
    import socket
    import time
    from datetime import timedelta

    host, port_text = os.environ.get("MASTER_ADDR", "").strip(), os.environ.get("MASTER_PORT", "").strip()
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"MASTER_ADDR={host!r} MASTER_PORT={port_text!r}: both must be set (a host and a port)")
    port, patience = int(port_text), HAND_LAUNCH_JOIN_SECONDS if patience is None else patience
    deadline = time.monotonic() + patience
    short = timedelta(seconds=10)
    if rank == 0:
        store = dist.TCPStore(host, port, world, is_master=True, timeout=short, wait_for_workers=False)
    else:  # a plain socket first: the store's own connect retries log C++ errors while it waits
        while True:
            try:
                with socket.create_connection((host, port), timeout=1.0):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise ValueError(f"RANK={rank} waited {patience:.0f} s for rank 0 at {host}:{port}, which "
                                     "never answered (is it running?)") from None
                time.sleep(0.5)
        store = dist.TCPStore(host, port, world, is_master=False, timeout=short, wait_for_workers=False)
    joined = store.add("slimkit/joined", 1)
    while joined < world:
        if time.monotonic() > deadline:
            raise ValueError(f"{joined} of WORLD_SIZE={world} processes joined at {host}:{port} within "
                             f"{patience:.0f} s (is every RANK from 0 to {world - 1} running?)")
        time.sleep(0.2)
        joined = store.add("slimkit/joined", 0)
    store.set_timeout(timedelta(minutes=30))  # torch's default for what follows (collectives, barriers)
    return store


def local_device(device: str) -> tuple[torch.device, DistInfo]:
    """``--device`` resolved, joined to torchrun's process group when there is one: each process
    takes the GPU of its local rank."""
    dev = resolve_device(device)
    info = setup_distributed(dev.type)
    if info.enabled and dev.type == "cuda":
        dev = torch.device("cuda", info.local_rank)
    return dev, info


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


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

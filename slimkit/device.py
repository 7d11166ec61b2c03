"""Where slimkit computes: the device a ``--device`` option names, and the memory layout used there.

Models and image batches are placed channels-last (NHWC) on every device, CPU included: oneDNN's
CPU convolutions and cuDNN's both run faster in that layout. The layout changes strides, not the
maths (float rounding aside), so checkpoints and exports are unaffected.

Activations that PyTorch runs in place by cloning their input when autograd needs it (ReLU6 /
Hardtanh, Hardswish, SiLU) are switched to out-of-place while slimkit trains or learns gates: the
clone is a full extra pass over every activation (about 5% of a MobileNet-V1 step here).

Together, on this project's 2-core CPU: training steps 1.14-1.18x and gate-learning steps
1.17-1.48x faster (MobileNet-V1 at 224 and 64 px, ResNet-20/56 at 32 px; ``bench/gate_step.py``
times both ways side by side).
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.errors import SlimkitError

__all__ = ["resolve_device", "place_model", "place_batch", "out_of_place_activations"]

# In-place versions of these clone their input under autograd (checked on torch 2.14); ReLU does not.
_CLONING_INPLACE = (nn.Hardtanh, nn.Hardswish, nn.SiLU)


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when visible, else CPU; an explicit ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SlimkitError("--device cuda asked but no CUDA GPU is visible: use --device cpu or auto")
    return torch.device(device)


def place_model(model: nn.Module, device: torch.device, channels_last: bool = True) -> nn.Module:
    """Move ``model`` to ``device``; 4-D weights (convolutions) go channels-last unless told not to."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def place_batch(x: torch.Tensor, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """Move an input batch to ``device``; image batches (N, C, H, W) go channels-last to match the model."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def out_of_place_activations(model: nn.Module) -> list[nn.Module]:
    """Run ``model``'s cloning in-place activations out of place; returns the modules changed.

    Same values either way; for grad-mode steps, out of place skips a clone and a copy-back.
    """
    changed = [m for m in model.modules() if isinstance(m, _CLONING_INPLACE) and getattr(m, "inplace", False)]
    for m in changed:
        m.inplace = False
    return changed

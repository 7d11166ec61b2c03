"""Checkpoints: a trained model's weights with the plan, config and metrics they belong to.

Written atomically by ``slimkit train`` after every epoch and read back safely
(``torch.load(weights_only=True)``): the plan and metrics are JSON text inside the file, so reading
never unpickles code. Every reader goes through :func:`load_checkpoint`, so a damaged file is one
clear error wherever it is named; :func:`full_model_weights` is what weight inheritance (G with
``weights=``) and gate learning on trained weights read. Those also accept weights from outside
slimkit: a plain ``torch.save(model.state_dict())`` file or a timm/torchvision checkpoint, including
the common wrappers (``{"state_dict": ...}``, ``{"model": ...}``) and DataParallel's ``module.`` prefix.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pickletools
import re
import zipfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit import registry
from slimkit.errors import PlanError, SlimkitError
from slimkit.files import atomic_write
from slimkit.plan import ChannelPlan
from slimkit.validate import check_type, show

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "write_checkpoint", "load_checkpoint", "load_weights",
           "full_model_weights", "read_weights", "parent_shape", "weights_fingerprint", "fitted_to", "model_keys",
           "missing_checkpoint"]

CHECKPOINT_FORMAT = "slimkit.checkpoint/1"
# Where other training code keeps the state dict inside its checkpoint (timm's train.py: "state_dict";
# torchvision's references and many scripts: "model"; others: "model_state"...), in the order tried.
STATE_DICT_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "net")
# Where they keep the weights' exponential moving average beside them (timm's train.py: "state_dict_ema";
# torchvision's references: "model_ema"): weights too, but which of the two is meant cannot be told.
EMA_KEYS = ("state_dict_ema", "model_ema", "ema")
# Prefixes a wrapper adds to every key: DataParallel/DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(SlimkitError):
    """A checkpoint that cannot be read or does not match the run."""


def write_checkpoint(path: str | os.PathLike, *, model: dict, plan: ChannelPlan, config: dict[str, Any],
                     epoch: int, metrics: list[dict[str, Any]], optimizer: dict | None = None,
                     scheduler: dict | None = None, rng: torch.Tensor | None = None) -> Path:
    """Everything a run needs to continue or be rebuilt, written atomically. The plan and metrics are
    JSON text so ``torch.load(weights_only=True)`` can read the file without unpickling code."""
    obj = {"format": CHECKPOINT_FORMAT, "model": model, "optimizer": optimizer, "scheduler": scheduler,
           "epoch": epoch, "rng": rng, "config": config, "metrics": json.dumps(metrics), "plan": plan.to_json(),
           "slimkit_version": plan.slimkit_version}
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``) and check its structure, once, here: any damage
    is a one-line error. The returned dict holds the plan as a :class:`ChannelPlan` under ``"plan"``
    and the metrics as a list, so no caller parses them again."""
    problem = missing_checkpoint(path)
    if problem is not None:
        raise CheckpointError(problem)
    p = Path(path)
    ckpt = _torch_load(p)
    if not _is_slimkit(ckpt):
        raise CheckpointError(f"{p} is not a slimkit checkpoint (expected format {CHECKPOINT_FORMAT})")
    return _checked(ckpt, p)


def _is_slimkit(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def missing_checkpoint(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be a checkpoint file before it is even opened (empty, absent, a folder), as the
    end of a sentence; ``None`` when it is a file. Every option that names a checkpoint says it this way."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"a checkpoint must be given as a file path (str or os.PathLike), got {show(path)} "
                        f"({type(path).__name__})")
    if not str(path).strip():
        return "the path is empty: give a checkpoint file"
    p = Path(path)
    if p.is_dir():
        inside = p / "checkpoint.pt"
        return (f"{p} is a folder, not a checkpoint file" +
                (f": pass {inside}" if inside.is_file() else ": pass the checkpoint file in it"))
    if not p.is_file():
        return f"checkpoint not found: {p}"
    return None


def _torch_load(p: Path) -> Any:
    """``torch.load(weights_only=True)``, or one line saying what the file is instead."""
    problem = missing_checkpoint(p)
    if problem is not None:
        raise CheckpointError(problem)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, pickle error, wrong file type
        raise CheckpointError(f"{p} {_what_file(p, exc)}") from None


def _what_file(p: Path, exc: Exception) -> str:
    """Why ``p`` did not load as weights, from its first bytes: the message after the file name."""
    with open(p, "rb") as f:
        head = f.read(4096)
    text = head.lstrip()
    if text.startswith(b"{"):
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            doc = None
        if isinstance(doc, dict) and str(doc.get("format", "")).startswith("slimkit.plan"):
            return ("is a ChannelPlan (a slimkit plan from `slimkit prune`), not trained weights: pass the trained model's checkpoint.pt "
                    "(or its torch.save(model.state_dict()) file)")
        return "is a JSON file, not a checkpoint: pass a .pt file written by torch.save"
    # An ONNX ModelProto starts with its ir_version field (tag 0x08), then the producer's name.
    onnx_like = head[:1] == b"\x08" and any(w in head[:256].lower() for w in (b"onnx", b"pytorch"))
    if p.suffix.lower() == ".onnx" or onnx_like:
        return ("is an ONNX model, not a PyTorch checkpoint: pass the checkpoint it was exported from "
                "(a .pt file written by torch.save)")
    # torch.save writes a zip archive (or, before PyTorch 1.6, a pickle: protocol byte 0x80).
    if not head.startswith((b"PK\x03\x04", b"\x80")):
        if not head:
            return ("is empty (0 bytes), not a checkpoint: if `slimkit train` or a copy wrote it, it was cut off "
                    "(restore a good copy, or move it aside to train again); otherwise pass a checkpoint.pt or a "
                    "torch.save(model.state_dict(), path) file")
        if _is_text(head):
            return ("is a text file, not a PyTorch checkpoint: pass a checkpoint.pt or a "
                    "torch.save(model.state_dict(), path) file")
        return ("is not a PyTorch checkpoint (not a file written by torch.save): pass a checkpoint.pt or a "
                "torch.save(model.state_dict(), path) file")
    if "Weights only load failed" in str(exc) or "Unsupported global" in str(exc):  # read, but refused: not damage
        if head.startswith(b"\x80") and head[1:2] not in (b"\x02",):  # torch.save's legacy pickles are protocol 2
            return (f"is a plain pickle (protocol {head[1]}), not a file written by torch.save: save the weights "
                    "with torch.save(model.state_dict(), path) where the file came from")
        named = re.search(r"GLOBAL ([\w.]+)", str(exc))
        whole = _pickled_object_class(p)
        if whole is not None and named is not None and whole == named.group(1):  # torch.save(model), not a dict
            return (f"is a whole pickled {whole.rsplit('.', 1)[-1]} ({whole}), not a state dict: weights_only=True "
                    "refuses to unpickle it; save its weights with torch.save(model.state_dict(), 'weights.pt') "
                    "where the file came from")
        return ("holds Python objects besides tensors" + (f" ({named.group(1)})" if named else "") + ", which "
                "weights_only=True refuses to unpickle: re-save only its weights with "
                "torch.save(ckpt['state_dict'], 'weights.pt') where the file came from")
    # Never advise deleting a file that could not be read as a checkpoint: it may be something else.
    return (f"is not a readable checkpoint ({type(exc).__name__}): if `slimkit train` wrote it, it is truncated "
            "(restore a good copy, or move it aside to train again); otherwise pass a checkpoint.pt from `slimkit train`")


def _is_text(head: bytes) -> bool:
    """Whether a file's first bytes read as text: UTF-8 (a character cut at the end aside) with no control
    characters but whitespace. NUL and other control bytes decode as UTF-8 too, yet mark a binary file."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:
            return False
        text = head[:exc.start].decode("utf-8")
    return bool(text.strip()) and not any(ord(c) < 32 and c not in "\t\n\r\f\v" for c in text)


def _pickled_object_class(p: Path) -> str | None:
    """The class of the object a torch.save zip file holds at its top, when that is an instance of a class
    (``torch.save(model)``) rather than a dict; read from the pickle's first opcodes, never unpickled."""
    try:
        with zipfile.ZipFile(p) as z:
            name = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None:
                return None
            with z.open(name) as f:
                ops = [(op.name, arg) for op, arg, _ in itertools.islice(pickletools.genops(f), 2)]
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    if len(ops) == 2 and ops[0][0] == "PROTO" and ops[1][0] == "GLOBAL" and isinstance(ops[1][1], str):
        return ops[1][1].replace(" ", ".")
    return None


def _checked(ckpt: dict[str, Any], p: Path) -> dict[str, Any]:
    damaged = f"{p} is a damaged slimkit checkpoint"
    fix = "delete it to start over, or restore a good copy"
    for key, kind in (("model", dict), ("plan", str), ("config", dict), ("metrics", str)):
        if not isinstance(ckpt.get(key), kind):
            raise CheckpointError(f"{damaged}: '{key}' is missing or not a {kind.__name__}; {fix}")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt["model"].items()):
        raise CheckpointError(f"{damaged}: its weights are not a state dict of tensors; {fix}")
    epoch = ckpt.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise CheckpointError(f"{damaged}: epoch {epoch!r} is not a count of epochs; {fix}")
    for key in ("optimizer", "scheduler"):
        if ckpt.get(key) is not None and not isinstance(ckpt[key], dict):
            raise CheckpointError(f"{damaged}: '{key}' is not a state dict; {fix}")
    if ckpt.get("rng") is not None and not isinstance(ckpt["rng"], torch.Tensor):
        raise CheckpointError(f"{damaged}: its RNG state is not a tensor; {fix}")
    try:
        plan = ChannelPlan.from_dict(json.loads(ckpt["plan"]), source=f"{p}'s plan")
        metrics = json.loads(ckpt["metrics"])
    except (json.JSONDecodeError, PlanError) as exc:
        raise CheckpointError(f"{damaged}: {str(exc).splitlines()[0][:200]}; {fix}") from None
    if not isinstance(metrics, list) or not all(isinstance(m, dict) for m in metrics):
        raise CheckpointError(f"{damaged}: its metrics are not a list of epochs; {fix}")
    return {**ckpt, "plan": plan, "metrics": metrics}


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike) -> nn.Module:
    """``state`` into ``model``, or a one-line error when the weights do not fit the plan's model."""
    check_type("load_weights", "model", model, nn.Module, "a torch.nn.Module (slimkit.generate(plan) builds one)")
    check_type("load_weights", "state", state, Mapping, "a state dict (load_checkpoint(path)['model'])")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:2] or [str(exc)]
        raise CheckpointError(f"{path}: its weights do not fit the model its plan describes ({first[0].strip()[:160]}); "
                              "the file was edited or mixed from two runs: restore a good copy") from None
    return model


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ChannelPlan | None]:
    """The model weights in ``path`` and, for a slimkit checkpoint, the plan they belong to (``None`` for
    a plain state dict, a timm/torchvision checkpoint or one of the common wrappers around them)."""
    problem = missing_checkpoint(path)
    if problem is not None:
        raise CheckpointError(problem)
    p = Path(path)
    obj = _torch_load(p)
    if _is_slimkit(obj):
        ckpt = _checked(obj, p)
        return ckpt["model"], ckpt["plan"]
    state = _unwrapped_state(obj, p)
    if state is None:
        held = f"a {type(obj).__name__}" if not isinstance(obj, dict) else "an empty dict" if not obj else \
            f"a dict of {', '.join(repr(k) for k in list(obj)[:4])}" + (" ..." if len(obj) > 4 else "")
        raise CheckpointError(f"{p} holds {held}, not model weights: pass a slimkit checkpoint.pt or a file written "
                              "with torch.save(model.state_dict(), path)")
    return state, None


def _unwrapped_state(obj: Any, p: Path) -> dict[str, torch.Tensor] | None:
    """A state dict of tensors found in ``obj`` (itself, or under one of :data:`STATE_DICT_KEYS` or, alone,
    :data:`EMA_KEYS`), with a prefix every key shares from a wrapper removed; ``None`` when there is none.
    The model's weights beside their moving average are refused: which one is meant cannot be told."""
    def is_state(d: Any) -> bool:
        return isinstance(d, dict) and bool(d) and all(isinstance(k, str) for k in d) and \
            any(isinstance(v, torch.Tensor) for v in d.values())

    def first(keys: tuple[str, ...]) -> str | None:
        return next((k for k in keys if isinstance(obj, dict) and is_state(obj.get(k))), None)

    plain, ema = first(STATE_DICT_KEYS), first(EMA_KEYS)
    if plain and ema:
        raise CheckpointError(f"{p} holds two sets of weights, the model's ('{plain}') and their moving average "
                              f"('{ema}'): save the one to use, e.g. torch.save(ckpt['{ema}'], 'weights.pt'), and "
                              "pass that file")
    # A wrapper also holds non-tensor entries (epoch, metrics); a state dict holds tensors only.
    found = obj[plain or ema] if plain or ema else obj if is_state(obj) else None
    if found is None or not all(isinstance(v, torch.Tensor) for v in found.values()):
        return None
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in found):
            found = {k[len(prefix):]: v for k, v in found.items()}
    return dict(found)


def fitted_to(state: Mapping[str, torch.Tensor], keys_of_model: Collection[str], source: str) -> dict[str, torch.Tensor]:
    """``state`` with the prefix a wrapping module puts before its model's keys removed (a Lightning
    module's ``model.``, a training wrapper's ``net.`` or ``backbone.``), when the keys under exactly one
    prefix are the model's own (BatchNorm step counters may be absent); otherwise ``state`` as it is, and
    loading it names the mismatches. Only the model's weights are kept: a loss's or metric's beside
    them are not the model's."""
    keys = set(keys_of_model)
    needed = {k for k in keys if not k.endswith(".num_batches_tracked")}
    if not needed or needed <= set(state):
        return dict(state)
    ref = min(needed)  # any key of the model: where it sits in ``state`` gives the candidate prefixes
    prefixes = sorted({k[:-len(ref)] for k in state if k.endswith("." + ref)})
    fits = {}
    for prefix in prefixes:
        under = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if needed <= set(under) <= keys:
            fits[prefix] = under
    if len(fits) > 1:
        raise CheckpointError(f"{source} holds the model's weights under several prefixes ({', '.join(fits)}): save "
                              "the one to use with torch.save(model.state_dict(), path) and pass that file")
    return next(iter(fits.values())) if fits else dict(state)


def model_keys(arch: str, arch_kwargs: dict[str, Any]) -> list[str]:
    """The state-dict keys of ``arch`` built with ``arch_kwargs``, without allocating its weights where the
    builder allows (the meta device)."""
    try:
        with torch.device("meta"):
            model = registry.create_model(arch, **arch_kwargs)
    except Exception:  # noqa: BLE001 - a builder that cannot build on the meta device: build it for real
        model = registry.create_model(arch, **arch_kwargs)
    return list(model.state_dict())


def weights_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """``sha256:`` and 16 hex digits of a state dict's contents (names, dtypes, shapes and values, not the
    file that held them): a plan's kept channels record the parent they were ranked on, and inheriting
    checks that the weights given are that parent, wherever and however they were saved."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TypeError(f"weights_fingerprint: 'state' must be a state dict of tensors, got {type(state).__name__}")
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()[:16]


def classifier_of(model: nn.Module) -> nn.Module | None:
    """A classifier's output layer: timm names it (``get_classifier()``); elsewhere (torchvision,
    slimkit's own) it is the last linear layer. ``None`` where there is none."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        # a distilled model's (head, head_dist): the class head comes first, the distillation head has the same rows
        return head[0] if isinstance(head, tuple) and head and isinstance(head[0], nn.Module) else head
    return next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)


def head_classes(model: nn.Module) -> int | None:
    """How many classes ``model``'s classifier outputs (its output layer's rows), None where it has no
    linear one (a conv head, no head)."""
    return getattr(classifier_of(model), "out_features", None)


def same_arch_kwargs(arch: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether ``a`` and ``b`` build the same ``arch``: equal, or differing only by a ``num_classes`` or
    ``in_chans`` that one side leaves at the model's default and the other gives as that default (a
    checkpoint of `slimkit train resnet20` records num_classes 10, a uniform plan of resnet20 none)."""
    if a == b:
        return True
    keys = {k for k in {*a, *b} if a.get(k) != b.get(k)}
    if not keys <= {"num_classes", "in_chans"} or any(k in a and k in b for k in keys):
        return False
    default = registry.create_model(arch, **{k: v for k, v in a.items() if k not in keys})
    first_conv = next((m for m in default.modules() if isinstance(m, nn.Conv2d)), None)
    defaults = {"num_classes": head_classes(default),
                "in_chans": getattr(first_conv, "in_channels", None)}
    return all(defaults[k] is not None and a.get(k, defaults[k]) == b.get(k, defaults[k]) for k in keys)


def parent_shape(path: str | os.PathLike, arch: str) -> tuple[int | None, int | None, tuple[int, ...] | None]:
    """``(num_classes, in_chans, input_size)`` of the model whose weights ``path`` holds, as far as the file
    says: a slimkit checkpoint records all three; a plain state dict gives the classes from its
    classifier's rows (0 where the file holds the model without its classifier, a backbone) and the input
    channels from its first conv (``None`` where they match ``arch``'s default or cannot be told), and no
    input size."""
    state, plan = read_weights(path)
    if plan is not None:
        return plan.num_classes, plan.arch_kwargs.get("in_chans"), tuple(plan.input_size)
    try:
        default = registry.create_model(arch)
    except SlimkitError:
        if not registry.accepts(arch, "num_classes"):
            raise
        default = registry.create_model(arch, num_classes=1)  # a factory whose num_classes must be given: same names
    head = classifier_of(default)
    first_conv = next((m for m in default.modules() if isinstance(m, nn.Conv2d)), None)
    names = {id(m): n for n, m in default.named_modules()}
    state = fitted_to(state, default.state_dict(), str(path))  # under a wrapper's prefix: its classifier too

    def size(module: nn.Module | None, dim: int) -> int | None:
        w = state.get(f"{names.get(id(module))}.weight") if module is not None else None
        return int(w.shape[dim]) if w is not None and w.dim() > dim else None

    in_chans = size(first_conv, 1) if first_conv is not None and first_conv.groups == 1 else None
    # The classes are always recorded (training checks them against the data); the input channels only
    # when they differ from the default, as a user's --in-chans would be.
    default_chans = first_conv.in_channels if first_conv is not None else None
    classes = size(head, 0)
    head_name = names.get(id(head)) if head is not None else None
    own = set(default.state_dict())
    if classes is None and head_name is not None and any(k.startswith(f"{head_name}.") for k in own) and \
            not any(k.startswith(f"{head_name}.") for k in state) and own & set(state):
        classes = 0  # the rest of the model without its classifier: a backbone saved with timm's num_classes=0
    return classes, (in_chans if in_chans != default_chans else None), None


def full_model_weights(path: str | os.PathLike, arch: str, arch_kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint of the *full* (unpruned, unexpanded) ``arch`` built with
    ``arch_kwargs``: what inheriting weights and learning gates on trained weights start from. A plain
    state dict is returned as it is: loading it into ``arch`` is what checks it fits."""
    state, plan = read_weights(path)
    if plan is None:  # from outside slimkit: under the model's own names, as its fingerprint is taken
        try:
            keys = model_keys(arch, arch_kwargs)
        except Exception:  # noqa: BLE001 - not buildable here (a model object's plan): loading it names mismatches
            return state
        return fitted_to(state, keys, str(path))
    canonical = registry.resolve(arch).canonical
    if registry.resolve(plan.arch).canonical != canonical or \
            not same_arch_kwargs(canonical, plan.arch_kwargs, arch_kwargs) or \
            any(g["width"] != g["full"] for g in plan.groups.values()) or plan.expand != 1.0:
        unpruned = all(g["width"] == g["full"] for g in plan.groups.values()) and plan.expand == 1.0
        if unpruned and registry.resolve(plan.arch).canonical == canonical:  # the full model, other arguments
            differ = ", ".join(f"{k} {plan.arch_kwargs.get(k, 'default')!s}, not {arch_kwargs.get(k, 'default')!s}"
                               for k in dict.fromkeys([*plan.arch_kwargs, *arch_kwargs])
                               if plan.arch_kwargs.get(k) != arch_kwargs.get(k))
            raise CheckpointError(f"{path} holds the full {canonical} trained with other arguments ({differ}): give "
                                  "the ones it was trained with (--num-classes, --in-chans, --arch-kwargs), or a "
                                  "checkpoint trained with these")
        held = registry.arch_text(plan.arch, plan.arch_kwargs) + ("" if unpruned else " (a pruned plan)")
        own = "" if unpruned else (" (to use that trained pruned model itself: `slimkit export` it, or load it with "
                                   "slimkit.artifacts.model_from_checkpoint)")
        raise CheckpointError(f"{path} holds {held}, not the full {registry.arch_text(canonical, arch_kwargs)}: "
                              "train the full model "
                              f"with `slimkit train {canonical.split(':')[-1]}` and pass its checkpoint.pt{own}")
    return state

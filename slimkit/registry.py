"""Architecture names -> freshly initialised models (timm, torchvision, slimkit's built-ins).

Names resolve in this order: a friendly alias (``mobilenet_v1``), slimkit's built-in CIFAR
networks, torchvision's classification models, then timm. ``timm:NAME``, ``torchvision:NAME`` and
``slimkit:NAME`` pick a source explicitly. Every model starts from random weights: nothing is
ever downloaded. The canonical ``source:name`` form is what a ChannelPlan records.

The user's own models are sources too (slimkit.models.user): ``python:package.module:build_net``
or ``path/to/nets.py:build_net`` names a factory, imported only when named; an ``nn.Module`` or a
function passed to the Python API is held in this process as ``object:NAME#N``.
:func:`model_source` turns any of these into the text every other function takes.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import timm
import torchvision
from torch import nn

from slimkit import validate as limits
from slimkit.errors import RegistryError
from slimkit.validate import check_number, check_type, close_matches
from slimkit.models import user
from slimkit.models.tasks import deployment_side, traced_part
from slimkit.models.cifar import BUILTIN_DESCRIPTIONS, BUILTIN_MODELS

__all__ = ["ArchSpec", "resolve", "create_model", "default_input_size", "list_archs", "ALIASES", "model_source",
           "is_user_code", "accepts", "arch_kwargs_for", "traced_part", "arch_text"]

SOURCES = ("slimkit", "torchvision", "timm")
USER_SOURCES = ("python", "object")  # the user's code: plans record a fingerprint of its traced graph

# Names people use for the papers' networks that no library spells that way.
ALIASES: dict[str, str] = {
    "mobilenet_v1": "timm:mobilenetv1_100",
    "mobilenetv1": "timm:mobilenetv1_100",
    "mobilenet_v1_125": "timm:mobilenetv1_125",
    "mobilenetv2": "torchvision:mobilenet_v2",
    "mobilenetv3": "torchvision:mobilenet_v3_large",
    "mobilenet_v3": "torchvision:mobilenet_v3_large",
    "vgg16_cifar10": "slimkit:vgg16_cifar",
    "vgg19_cifar10": "slimkit:vgg19_cifar",
}


@dataclass(frozen=True)
class ArchSpec:
    source: str  # "slimkit" | "torchvision" | "timm" | "python" | "object"
    name: str

    @property
    def canonical(self) -> str:
        return f"{self.source}:{self.name}"

    @property
    def user_code(self) -> bool:
        return self.source in USER_SOURCES


def model_source(arch: str | nn.Module | Callable[..., nn.Module]) -> str:
    """What the API accepts as a model (a name, a factory reference, an ``nn.Module``, a function
    that builds one) as the text every other function takes."""
    if isinstance(arch, str):
        return arch
    return user.reference_for(arch)


def is_user_code(arch: str) -> bool:
    """Does ``arch`` name the user's own code (a python: factory, a file, a model object)?"""
    text = arch.strip()
    return user.is_factory_reference(text) or text.startswith(user.OBJECT_PREFIX)


# torchvision's task families slimkit builds besides classification (list_models(module=torchvision.models)
# lists classification only). Their builders default to an ImageNet backbone download: slimkit passes
# weights_backbone=None, so every model starts from random weights like the rest.
TASK_MODULES = {"detection": torchvision.models.detection, "segmentation": torchvision.models.segmentation}


@functools.cache
def _torchvision_names() -> tuple[str, ...]:
    names = list(torchvision.models.list_models(module=torchvision.models))
    for module in TASK_MODULES.values():
        names += torchvision.models.list_models(module=module)
    return tuple(dict.fromkeys(names))


@functools.cache
def torchvision_task(name: str) -> str:
    """'classification', 'detection' or 'segmentation' for a torchvision model name."""
    for task, module in TASK_MODULES.items():
        if name in torchvision.models.list_models(module=module):
            return task
    return "classification"


def model_task(arch: str | nn.Module | Callable[..., nn.Module]) -> str:
    """'classification', 'detection' or 'segmentation' (torchvision's task models; every other model,
    a user's own included, is taken as a classifier)."""
    spec = resolve(model_source(arch))
    return torchvision_task(spec.name) if spec.source == "torchvision" else "classification"


@functools.cache
def _timm_names() -> frozenset[str]:
    return frozenset(timm.list_models())


# torchvision models slimkit does not take (yet), by kind: they are named as such instead of being
# called unknown. The one place to change when a kind is taken.
_OTHER_TASKS = {  # torchvision.models submodule -> (what it holds, why slimkit refuses it); detection and
    # segmentation models are taken (slimkit.models.tasks)
    "video": ("a video model", "slimkit does not take video models: it prunes image classifiers"),
    "optical_flow": ("an optical-flow model", "slimkit does not take optical-flow models: it prunes image classifiers"),
    "quantization": ("an already quantized model", "prune the float model (e.g. torchvision:resnet50) and export "
                     "it with --int8"),
}


def _other_task(name: str) -> str | None:
    """Why a torchvision model of another task is refused, or None when ``name`` is none of them."""
    for kind, (what, why) in _OTHER_TASKS.items():
        module = getattr(torchvision.models, kind, None)
        if module is not None and name in torchvision.models.list_models(module=module):
            return f"torchvision:{name} is {what}: {why}"
    return None


def _exists(source: str, name: str) -> bool:
    if source == "slimkit":
        return name in BUILTIN_MODELS
    if source == "torchvision":
        return name in _torchvision_names()
    return name in _timm_names()


def resolve(name: str) -> ArchSpec:
    """Turn a user's architecture name into its canonical source and name."""
    text = name.strip()
    text = ALIASES.get(text, text)
    if user.is_factory_reference(text):
        return ArchSpec("python", user.parse_factory(text).canonical.removeprefix("python:"))
    if text.startswith(user.OBJECT_PREFIX):
        return ArchSpec("object", text.removeprefix(user.OBJECT_PREFIX))
    if ":" in text:
        source, _, bare = text.partition(":")
        if source not in SOURCES:
            raise RegistryError(
                f"unknown model source '{source}' in '{name}': use one of {', '.join(SOURCES)} "
                "(e.g. timm:resnet50)"
            )
        if not _exists(source, bare):
            other = _other_task(bare) if source == "torchvision" else None
            raise RegistryError(other or f"{source} has no model '{bare}'{_suggest(bare, source)}")
        return ArchSpec(source, bare)
    for source in SOURCES:
        if _exists(source, text):
            return ArchSpec(source, text)
    if os.path.exists(text):  # a plan, checkpoint or folder given where a model name goes
        raise RegistryError(f"'{name}' is a {'folder' if os.path.isdir(text) else 'file'}, not an architecture name: "
                            "give the model's name (e.g. resnet20, timm:resnet50) or a factory in a .py file "
                            "(nets.py:build_net)")
    raise RegistryError(_other_task(text) or f"unknown architecture '{name}'{_suggest(text)}")


def _suggest(name: str, source: str | None = None) -> str:
    pool: list[str] = []
    if source in (None, "slimkit"):
        pool += list(ALIASES) + list(BUILTIN_MODELS)
    if source in (None, "torchvision"):
        pool += list(_torchvision_names())
    if source in (None, "timm"):
        pool += sorted(_timm_names())
    close = close_matches(name, pool, n=4)  # one entry for resnet50, in timm and torchvision
    hint = " (see `slimkit models --filter PATTERN`)"
    return f"; did you mean {', '.join(close)}?{hint}" if close else hint


def arch_text(arch: str, arch_kwargs: dict[str, Any] | None) -> str:
    """An architecture as messages name it: with its builder's arguments when it has any (not "resnet20 {}")."""
    return arch + (f" {arch_kwargs}" if arch_kwargs else "")


def arch_kwargs_for(num_classes: int | None, in_chans: int | None,
                    extra: dict[str, Any] | None = None, *, classes_from: str | None = None) -> dict[str, Any]:
    """The model keyword arguments a plan records: only what the user set (defaults stay the library's).
    ``extra`` holds any other keyword arguments (``--arch-kwargs``); they must be JSON, as plans are.
    ``classes_from`` names the data ``num_classes`` was read from, when the user did not give it."""
    out: dict[str, Any] = dict(check_arch_kwargs(extra) if extra else {})
    for key, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if value is None:
            continue
        if key in out and out[key] != value:
            if key == "num_classes" and classes_from:
                raise RegistryError(f"--arch-kwargs sets num_classes={out[key]!r} but {classes_from} has {value} "
                                    "classes: drop num_classes from --arch-kwargs (the data's classes size the "
                                    "head), or use data with that many classes")
            raise RegistryError(f"--arch-kwargs sets {key}={out[key]!r} but --{key.replace('_', '-')} is {value}: "
                                "give it once")
        out[key] = value
    return out


def check_arch_kwargs(kwargs: Any) -> dict[str, Any]:
    """Model keyword arguments as a plan can record them: a JSON object with string keys."""
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
        raise RegistryError(f"arch kwargs must be an object of name -> value, like {{\"width\": 64}}; got "
                            f"{str(kwargs)[:80]}")
    try:
        json.dumps(kwargs, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"arch kwargs must be plain JSON values (numbers, strings, lists, objects): {exc}") \
            from None
    return kwargs


def accepts(arch: str, key: str) -> bool:
    """Does ``arch``'s builder take the keyword ``key`` (``num_classes``, ``in_chans``)? Library models
    do; a user factory does when its signature says so; a model object never."""
    spec = resolve(arch)
    if spec.source == "python":
        return user.factory_accepts(user.parse_factory(spec.canonical), key)
    if spec.source == "object":
        return user.object_accepts(spec.canonical, key)
    return key != "in_chans" or spec.source != "torchvision"


def create_model(name: str, num_classes: int | None = None, in_chans: int | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build ``name`` with random weights. ``num_classes``/``in_chans`` default to the model's own."""
    check_type("create_model", "name", name, str, "an architecture name like 'resnet20' or 'timm:resnet50'")
    spec = resolve(name)
    if spec.user_code:  # the user's own code takes exactly the arguments given
        opts = {**kwargs, **arch_kwargs_for(num_classes, in_chans)}
        if spec.source == "object":
            return user.build_from_object(spec.canonical, opts)
        return user.build_from_factory(user.parse_factory(spec.canonical), opts)
    check_number("create_model: 'num_classes'", num_classes, limits.SMALL_COUNT, RegistryError)
    check_number("create_model: 'in_chans'", in_chans, limits.IN_CHANS, RegistryError)
    if spec.source == "torchvision" and in_chans not in (None, 3):
        raise RegistryError(
            f"torchvision:{spec.name} takes 3-channel input; drop --in-chans (slimkit's data "
            "loader repeats grayscale to 3 channels) or use a timm model"
        )
    opts = dict(kwargs)
    if num_classes is not None:
        opts["num_classes"] = num_classes
    if in_chans is not None and spec.source != "torchvision":
        opts["in_chans"] = in_chans
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's init-weights FutureWarnings etc.
        try:
            if spec.source == "slimkit":
                return BUILTIN_MODELS[spec.name](**opts)
            if spec.source == "timm":
                return timm.create_model(spec.name, pretrained=False, **opts)
            if torchvision_task(spec.name) != "classification":
                opts.setdefault("weights_backbone", None)  # never download a backbone
            return torchvision.models.get_model(spec.name, weights=None, **opts)
        except TypeError as exc:
            raise RegistryError(f"{spec.canonical} does not accept these arguments: {exc}") from exc
        except (AssertionError, ValueError, RuntimeError, NotImplementedError, KeyError, IndexError) as exc:
            # a model's own constructor refusing these arguments (an image size its windows or patches
            # do not divide, a channel count it cannot take): its words, as one line
            text = " ".join(str(exc).split())[:200] or type(exc).__name__
            given = ", ".join(f"{k}={v!r}" for k, v in opts.items()) or "its defaults"
            raise RegistryError(f"{spec.canonical} cannot be built with {given}: {type(exc).__name__}: {text}") from exc


def default_input_size(name: str, model: nn.Module | None = None, in_chans: int | None = None) -> tuple[int, int, int]:
    """(C, H, W) the architecture is designed for: timm's config, torchvision's weights'
    crop size, 32x32 for the CIFAR built-ins, a user model's ``default_input_size`` attribute (when
    the model is given) or 224x224."""
    spec = resolve(name)
    size: tuple[int, int, int] = (3, 224, 224)
    if spec.user_code:
        size = tuple(getattr(model, "default_input_size", size))  # type: ignore[assignment]
    elif spec.source == "slimkit":
        size = tuple(getattr(model, "default_input_size", (3, 32, 32)))  # type: ignore[assignment]
    elif spec.source == "timm":
        if model is not None:
            cfg_size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
        else:  # timm's config registry answers without building the model
            cfg = timm.models.get_pretrained_cfg(spec.name)
            cfg_size = cfg.input_size if cfg is not None else None
        size = tuple(cfg_size or size)  # type: ignore[assignment]
    else:
        size = _torchvision_input_size(spec.name, model)
    if in_chans is not None:
        size = (in_chans, size[1], size[2])
    return size


def _torchvision_input_size(name: str, model: nn.Module | None) -> tuple[int, int, int]:
    """Classification: the weights' crop; segmentation: the weights' resize (520 for DeepLab/LR-ASPP);
    detection: the side the model's own transform resizes every image to (320 for SSDlite, 800 for
    the R-CNNs), the input it is deployed at."""
    task = torchvision_task(name)
    try:
        if task == "detection":
            model = model if model is not None else create_model(f"torchvision:{name}")
            side = deployment_side(model)
        else:
            preset = torchvision.models.get_model_weights(name).DEFAULT.transforms()
            side = int((preset.crop_size if task == "classification" else preset.resize_size)[0])
    except Exception:  # noqa: BLE001 - models without weights metadata keep 224
        return (3, 224, 224)
    return (3, side, side)


def list_archs(pattern: str | None = None) -> list[tuple[str, str]]:
    """(name, description) for every architecture whose name matches the glob ``pattern``."""
    import fnmatch

    def keep(n: str) -> bool:
        return pattern is None or fnmatch.fnmatch(n, pattern) or (
            not any(c in pattern for c in "*?[") and pattern in n
        )

    out: list[tuple[str, str]] = []
    for alias, target in ALIASES.items():
        if keep(alias):
            out.append((alias, f"alias of {target}"))
    for n, desc in BUILTIN_DESCRIPTIONS.items():
        if keep(n):
            out.append((f"slimkit:{n}", desc))
    out += [(f"torchvision:{n}", "torchvision") for n in _torchvision_names() if keep(n)]
    out += [(f"timm:{n}", "timm") for n in sorted(_timm_names()) if keep(n)]
    return out


def is_held(arch: str) -> bool:
    """Is ``arch`` a model object this process holds (so its plans can be rebuilt here)?"""
    return arch.startswith(user.OBJECT_PREFIX) and user.is_held(arch)

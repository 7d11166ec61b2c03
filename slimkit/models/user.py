"""The user's own models: ``python:`` factories and in-process model objects.

A factory is a function (or class) that returns an ``nn.Module``. It is named
``python:package.module:build_net`` (imported as ``python -m`` would, with the current folder on
the import path) or ``path/to/nets.py:build_net`` (that file, run as a module with its folder on
the import path). The canonical ``python:...`` text is what a ChannelPlan records, so G rebuilds
the model through the same factory with the same keyword arguments.

User code is imported only when it is named: on the command line, in a recipe, in an API call,
or by a plan or checkpoint made from it. It runs with the user's rights, like any script.

A model object (an ``nn.Module`` instance, or a factory that cannot be imported by name: a
lambda, a local function, one defined in ``__main__``) is held in this process under
``object:NAME#N``. Plans made from one can be regenerated only in the same process (or by passing
the model to ``slimkit.generate(plan, model=...)``).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from slimkit.errors import RegistryError
from slimkit.validate import a_kind, close_matches

__all__ = ["FactoryRef", "is_factory_reference", "parse_factory", "factory_file", "build_from_factory", "factory_accepts",
           "register_object", "build_from_object", "object_accepts", "reference_for", "OBJECT_PREFIX", "user_code_frame"]

OBJECT_PREFIX = "object:"
_IDENT = r"[A-Za-z_]\w*"
_ATTR = re.compile(rf"{_IDENT}(\.{_IDENT})*")
_MODULE = re.compile(rf"{_IDENT}(\.{_IDENT})*")
_FILE_NO_FACTORY = re.compile(r"^[^:]+\.py:$")  # 'nets.py:': the factory's name forgotten
_FILE_FORM = re.compile(rf"^(?P<path>[^:]+\.py):(?P<attr>{_IDENT}(\.{_IDENT})*)$")


@dataclass(frozen=True)
class FactoryRef:
    """``module`` (dotted) or ``path`` (a .py file) and the attribute that builds the model."""

    attr: str
    module: str | None = None
    path: str | None = None

    @property
    def canonical(self) -> str:
        return f"python:{self.module or self.path}:{self.attr}"

    @property
    def where(self) -> str:
        return self.path or self.module or ""


def is_factory_reference(text: str) -> bool:
    """``python:...`` or ``something.py:name``: text that names user code, not a library model."""
    return text.startswith("python:") or bool(_FILE_FORM.match(text)) or bool(_FILE_NO_FACTORY.match(text))


def parse_factory(text: str) -> FactoryRef:
    """The factory ``text`` names (syntax only: nothing is imported here)."""
    body = text[len("python:"):] if text.startswith("python:") else text
    usage = (f"cannot read the model factory '{text[:80]}': use python:package.module:build_net or "
             "path/to/nets.py:build_net")
    where, sep, attr = body.rpartition(":")
    if sep and where and not attr:
        raise RegistryError(f"'{text[:80]}' names no factory after the colon: write {text[:80]}build_net, the "
                            f"function in {where[:80]} that returns the model")
    if not sep or not where or not _ATTR.fullmatch(attr):
        raise RegistryError(usage)
    if where.endswith(".py") or "/" in where or os.sep in where:
        if not where.endswith(".py"):
            raise RegistryError(usage)
        return FactoryRef(attr=attr, path=os.path.normpath(where))
    if not _MODULE.fullmatch(where):
        raise RegistryError(usage)
    return FactoryRef(attr=attr, module=where)


def factory_file(text: str) -> Path | None:
    """The file of the user's code that ``text`` names, found without running it (an input no output
    may replace): the .py of the file form, or for ``python:a.b:fn`` ``a/b.py`` (or its package's
    ``__init__.py``) in the current folder, where the import looks first. None when it is elsewhere or
    ``text`` names no factory."""
    if not is_factory_reference(text):
        return None
    try:
        ref = parse_factory(text)
    except RegistryError:
        return None
    if ref.path is not None:
        return Path(ref.path)
    base = Path.cwd().joinpath(*(ref.module or "").split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


# Files run once per process (keyed by absolute path), so repeated builds use the same classes.
_FILE_MODULES: dict[str, Any] = {}
# The files of every factory's module imported so far (real paths): an error raised in them is the user's code's.
_USER_FILES: set[str] = set()


def user_code_frame(exc: BaseException) -> str | None:
    """Where in the user's own model code (a factory's file or module) ``exc`` was raised, as ``nets.py, line 8,
    in forward`` (the innermost such frame); None when no frame of its traceback is theirs."""
    where, tb = None, exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if os.path.realpath(code.co_filename) in _USER_FILES:
            where = f"{os.path.relpath(code.co_filename)}, line {tb.tb_lineno}, in {code.co_name}"
        tb = tb.tb_next
    return where


def _import_file(ref: FactoryRef) -> Any:
    path = Path(ref.path or "")
    if not path.is_file():
        raise RegistryError(f"model factory file not found: {path} (from {ref.canonical}); relative paths are read "
                            f"from the current folder {Path.cwd()}")
    key = str(path.resolve())
    if key in _FILE_MODULES:
        return _FILE_MODULES[key]
    name = f"slimkit_user_{path.stem}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, key)
    if spec is None or spec.loader is None:
        raise RegistryError(f"cannot import {path} as Python code (from {ref.canonical})")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # its sibling modules import as they would when run as a script
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's code: any error is theirs to see, in one line
        del sys.modules[name]
        raise RegistryError(f"importing {path} raised {_one_line(exc)}: fix that file") from exc
    finally:
        sys.path.remove(folder)
    _FILE_MODULES[key] = module
    _USER_FILES.add(os.path.realpath(key))
    return module


def _import_module(ref: FactoryRef) -> Any:
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # `python -m` puts the current folder first; the `slimkit` script does not
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(ref.module or "")
    except ModuleNotFoundError as exc:
        raise RegistryError(f"cannot import {ref.module} for {ref.canonical}: {exc}; install the package or run "
                            "slimkit from the folder that holds it") from exc
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's code (a stray sys.exit too)
        raise RegistryError(f"importing {ref.module} raised {_one_line(exc)}: fix that module") from exc
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    if getattr(module, "__file__", None):
        _USER_FILES.add(os.path.realpath(module.__file__))
    # The current folder comes first on the path, so its file loses only to a module already imported
    # (the standard library's json, torch, slimkit itself): say so, not "json has no 'build_net'".
    local = factory_file(ref.canonical)
    loaded = getattr(module, "__file__", None)
    if local is not None and (loaded is None or Path(loaded).resolve() != local.resolve()):
        mine = os.path.relpath(local)
        raise RegistryError(f"{ref.canonical} names {mine} in the current folder, but the module name {ref.module} "
                            f"is taken by {loaded or 'a built-in module'}: rename your file, or name it as a file "
                            f"({mine}:{ref.attr})")
    return module


def load_factory(ref: FactoryRef) -> Callable[..., Any]:
    """The callable ``ref`` names, imported (once per process)."""
    module = _import_file(ref) if ref.path else _import_module(ref)
    obj: Any = module
    for part in ref.attr.split("."):
        if not hasattr(obj, part):
            names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
            close = close_matches(part, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else \
                f" (it defines {', '.join(sorted(names)[:6]) or 'no functions'}{', ...' if len(names) > 6 else ''})"
            raise RegistryError(f"{ref.where} has no '{ref.attr}'{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RegistryError(f"{ref.where}:{ref.attr} is {a_kind(obj)}, not a function that builds a model")
    return obj


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _accepts(fn: Callable[..., Any], key: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return True
    return any(p.name == key or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


# What a factory may change for the whole process, and how to put each back: a float64 default dtype
# made every later model and tensor float64 (the export then failed on a dtype mismatch), a factory that
# switched gradients off made gate learning fail with "does not require grad", and a chdir made the
# next import of the factory's own file fail.
_GLOBALS = (("torch's default dtype", torch.get_default_dtype, torch.set_default_dtype),
            ("torch's default device", torch.get_default_device, torch.set_default_device),
            ("torch's gradient mode", torch.is_grad_enabled, torch.set_grad_enabled),
            ("the current folder", os.getcwd, os.chdir))


def _global_state() -> list[Any]:
    return [get() for _, get, _ in _GLOBALS]


def _restore_global_state(before: list[Any]) -> str:
    """Put back what a factory changed; the changes, in words ('' when none)."""
    changed = []
    for (what, get, put), old in zip(_GLOBALS, before):
        new = get()
        if new != old:
            put(old)
            changed.append(f"{what} from {old} to {new}")
    return ", ".join(changed)


def _call(fn: Callable[..., Any], label: str, kwargs: dict[str, Any]) -> nn.Module:
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as exc:
        hint = " (prune sets num_classes from the data: add a num_classes parameter, or build the model for " \
               "the data's classes and prune with --method uniform)" if "num_classes" in kwargs else ""
        raise RegistryError(f"{label} does not take these arguments ({shown}): {exc}{hint}") from exc
    except ValueError:  # no signature to check: the call decides
        pass
    before = _global_state()
    try:
        model = fn(**kwargs)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's code (a stray sys.exit too)
        raise RegistryError(f"{label}({shown}) raised {_one_line(exc)}") from exc
    finally:
        changed = _restore_global_state(before)
    if changed:
        raise RegistryError(f"{label}({shown}) changed {changed} (slimkit put it back): a factory must leave "
                            "process-wide settings as it found them; set them on the model, or outside the factory")
    if not isinstance(model, nn.Module):
        raise RegistryError(f"{label}({shown}) returned {a_kind(model)}, not a torch.nn.Module")
    return model


def build_from_factory(ref: FactoryRef, kwargs: dict[str, Any]) -> nn.Module:
    return _call(load_factory(ref), ref.canonical, kwargs)


def factory_accepts(ref: FactoryRef, key: str) -> bool:
    return _accepts(load_factory(ref), key)


# ---------------------------------------------------------------------------- objects in this process
_OBJECTS: dict[str, Any] = {}


def reference_for(obj: Any) -> str:
    """A model source for a Python object: ``python:module:name`` for a factory importable by name,
    else ``object:NAME#N`` held in this process."""
    if isinstance(obj, nn.Module):
        return register_object(obj)
    if not callable(obj):
        raise RegistryError(f"expected an architecture name, an nn.Module or a function that builds one, got a "
                            f"{type(obj).__name__}")
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if module and module != "__main__" and "<" not in qualname:
        found: Any = sys.modules.get(module)
        for part in qualname.split("."):
            found = getattr(found, part, None)
        if found is obj and not module.startswith("slimkit_user_"):
            return f"python:{module}:{qualname}"
        if found is obj:  # a function from a file slimkit imported: name the file again
            path = next((p for p, m in _FILE_MODULES.items() if m is sys.modules.get(module)), None)
            if path:
                return f"python:{os.path.relpath(path)}:{qualname}"
    return register_object(obj)


def register_object(obj: Any) -> str:
    for name, held in _OBJECTS.items():
        if held is obj:
            return name
    label = type(obj).__qualname__ if isinstance(obj, nn.Module) else getattr(obj, "__qualname__", "factory")
    name = f"{OBJECT_PREFIX}{re.sub(r'[^A-Za-z0-9_.]', '_', label)}#{len(_OBJECTS) + 1}"
    _OBJECTS[name] = obj
    return name


def build_from_object(name: str, kwargs: dict[str, Any]) -> nn.Module:
    held = _OBJECTS.get(name)
    if held is None:
        raise RegistryError(f"{name} was a model object in another Python process: it cannot be rebuilt here; pass "
                            "the model (slimkit.generate(plan, model=...)) or prune a python: factory instead")
    if isinstance(held, nn.Module):
        if kwargs:
            raise RegistryError(f"{name} is a model object: it takes no arguments ({', '.join(kwargs)}); build it "
                                "with them, or pass a function that builds it")
        return copy.deepcopy(held)  # G resizes the copy; the caller's model stays as it is
    return _call(held, name, kwargs)


def object_accepts(name: str, key: str) -> bool:
    held = _OBJECTS.get(name)
    return held is not None and not isinstance(held, nn.Module) and _accepts(held, key)


def is_held(name: str) -> bool:
    return name in _OBJECTS

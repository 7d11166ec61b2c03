"""Tracing a model for the channel graph, and reading what the trace recorded.

* **Capture**: :func:`export_program` runs ``torch.export(..., strict=False)`` (it captures every
  timm and torchvision CNN we tried, with exact shapes on every node) and turns a failure into one
  :class:`GraphError` line a user can act on (an input too small, a data-dependent branch, ...).
* **Node metadata**: an FX node's aten op name (:func:`op_name`), output shape (:func:`meta_shape`)
  and the module and source line that issued it (:func:`call_site`, :func:`function_text`).
* **Stored sizes**: the ``self.X`` attributes on that source line whose values match a split size
  or shape (:func:`stored_candidates`), which G can rewrite when widths change.
* **Fingerprint**: a hash of the traced computation (:func:`trace_fingerprint`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import linecache
import logging
import operator
import os
import re
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from slimkit.errors import SlimkitError

__all__ = ["GraphError", "call_site", "export_program", "failing_module", "function_text", "input_size_problem",
           "meta_shape", "model_error", "op_name", "quiet_torch_logs", "stored_candidates", "trace_fingerprint"]


class GraphError(SlimkitError, RuntimeError):
    """The model could not be traced or analysed (a user-facing error: bad input sizes end here)."""


# What torch and timm say when an input is too small or of a size a model cannot take, in words.
_SIZE_TEXTS = (
    ("Kernel size can't be greater than actual input size", "its feature maps become smaller than a kernel"),
    ("Output size is too small", "its feature maps shrink to nothing"),
    ("doesn't match model", "it is built for one input size only"),
    ("divisible", "its sides must be divisible by the model's patch or window size"),
    ("Expected more than 1 value per channel", "its feature maps shrink to a single value"),
)


def input_size_problem(text: str) -> str | None:
    """A user's words for torch's text about an input the model cannot take (None: not about the size)."""
    return next((words for needle, words in _SIZE_TEXTS if needle in text), None)


@contextlib.contextmanager
def quiet_torch_logs() -> Iterator[None]:
    """Silence torch's own loggers meanwhile: a failed trace logs whole tracebacks (fake-tensor
    ``E...`` lines) and prints its partial graph to stderr before it raises, and the one line slimkit
    reports is what the user needs."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name == "torch" or name.startswith("torch.")]
    loggers.append(logging.getLogger("torch.fx.experimental.symbolic_shapes"))  # torch resets its level: disable
    was = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, disabled in zip(loggers, was):
            lg.disabled = disabled


def failing_module(exc: BaseException, model: nn.Module) -> str | None:
    """The innermost module of ``model`` whose code was running when ``exc`` was raised (its
    qualified name, "" for the root), or None when it did not come from the model's forward."""
    names = {id(m): n for n, m in model.named_modules()}
    found: str | None = None
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if owner is not None and id(owner) in names:
            found = names[id(owner)]
        tb = tb.tb_next
    return found


def exception_text(exc: BaseException) -> str:
    """``exc``'s first line, or for a bare assert in a model's code (timm's HaloAttn and BAT: no message
    at all) the statement that failed, read from its source: ``_assert(H % self.block_size == 0, '')``."""
    text = str(exc).splitlines()[0].strip() if str(exc).strip() else ""
    if text or not isinstance(exc, AssertionError):
        return text
    torch_dir = os.path.dirname(torch.__file__)
    line, tb = "", exc.__traceback__
    while tb is not None:  # the innermost frame outside torch: torch._assert raises from torch's own code
        if not tb.tb_frame.f_code.co_filename.startswith(torch_dir):
            line = linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno).strip()
        tb = tb.tb_next
    return f"{line} failed" if "assert" in line else ""


def model_error(doing: str, exc: BaseException, model: nn.Module) -> GraphError:
    """One line for an unexpected failure inside a model's own code: what slimkit was doing, the
    module and class it failed in, and torch's first line of text."""
    where = failing_module(exc, model)
    text = " ".join(exception_text(exc).split())[:200] or type(exc).__name__
    if where is not None:
        module = model.get_submodule(where) if where else model
        at = f" in module '{where or 'model'}' ({type(module).__name__})"
    else:
        at = ""
    return GraphError(f"{doing} failed{at}: {type(exc).__name__}: {text}")


def export_program(model: nn.Module, input_size: tuple[int, ...]) -> torch.export.ExportedProgram:
    """``model`` (left in its own train/eval mode afterwards) traced in eval mode on a zero batch of one
    at ``input_size`` (C, H, W); any capture failure becomes one :class:`GraphError` line."""
    was_training = model.training
    model.eval()
    example = torch.zeros(1, *input_size)
    try:
        with warnings.catch_warnings(), quiet_torch_logs():
            warnings.simplefilter("ignore")
            return torch.export.export(model, (example,), strict=False)
    except Exception as exc:  # noqa: BLE001 - report any capture failure as one error
        first = exception_text(exc)
        size_problem = input_size_problem(first)
        where = failing_module(exc, model)
        at = f" at module '{where}' ({type(model.get_submodule(where)).__name__})" if where else ""
        if size_problem:
            raise GraphError(f"input {input_size[1]}x{input_size[2]} px does not fit this model: {size_problem}{at}; "
                             "use a larger --input-size (or the model's own: leave --input-size out)") from None
        hint = ""
        if "data-dependent" in first:
            hint = ("; the forward pass branches on tensor values, which torch.export cannot trace: decide "
                    "such branches from Python settings instead")
        if isinstance(exc, AssertionError) and not str(exc).strip():  # a bare assert: exception_text read it
            hint = ("; a check in the model's own code, often on the size of a feature map: a larger "
                    "--input-size (or the model's own: leave --input-size out) may pass it")
        if "channels" in first and "expected input" in first:
            hint = (f"; the input has {input_size[0]} channel(s): --input-size sets them only with the size "
                    "(3,224,224), --in-chans changes the model's")
        raise GraphError(f"could not trace the model at input {list(input_size)}{at}: {type(exc).__name__}: "
                         f"{first[:300]}{hint}") from exc
    finally:
        model.train(was_training)


def trace_fingerprint(ep: torch.export.ExportedProgram, model: nn.Module, input_size: tuple[int, ...]) -> str:
    """A short hash of the traced computation: input size, the op of every graph node in order, and the
    shape of every parameter and buffer (weight values do not count)."""
    ops = [op_name(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    shapes = sorted((n, list(t.shape)) for n, t in list(model.named_parameters()) + list(model.named_buffers()))
    text = json.dumps([list(input_size), ops, shapes], separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------ node metadata
def op_name(target: Any) -> str:
    """The aten op a node calls, without its overload: ``aten.conv2d.default`` -> "conv2d"."""
    if target is operator.getitem:
        return "getitem"
    name = getattr(target, "__name__", str(target))  # "conv2d.default"
    return name.split(".")[0]


def meta_shape(node: Any) -> tuple[int, ...] | None:
    """The shape of the tensor ``node`` computed when traced (None: not a single tensor)."""
    val = node.meta.get("val") if hasattr(node, "meta") else None
    if isinstance(val, torch.Tensor):
        return tuple(int(s) for s in val.shape)
    return None


def call_site(node: Any) -> tuple[str, str]:
    """(module path, source line) of the Python code that issued ``node``."""
    stack = node.meta.get("nn_module_stack") or {}
    module = re.sub(r"@\d+$", "", list(stack.values())[-1][0]) if stack else ""
    line = ""
    frames = re.findall(r'File "([^"]+)", line (\d+)', node.meta.get("stack_trace") or "")
    if frames:
        path, lineno = frames[-1]
        line = linecache.getline(path, int(lineno)).strip()
    return module, line


def function_text(node: Any) -> str:
    """The calling function's source up to the op's line (``H, DH = self.n_heads,
    self.head_dim`` a few lines above a reshape counts as stored)."""
    frames = re.findall(r'File "([^"]+)", line (\d+)', node.meta.get("stack_trace") or "")
    if not frames:
        return ""
    path, lineno = frames[-1][0], int(frames[-1][1])
    lines = []
    for n in range(lineno, max(0, lineno - 80), -1):
        text = linecache.getline(path, n)
        lines.append(text)
        if re.match(r"\s*def ", text):
            break
    return "".join(reversed(lines))


# ------------------------------------------------------------------------ stored sizes
_SELF_ATTR = re.compile(r"self\.(\w+)(?:\s*//\s*(\d+))?")


def stored_candidates(model: nn.Module, module: str, line: str) -> list[tuple[str, Any, int]]:
    """``self.X`` (and ``self.X // N``) on ``line``: (attr, value, N) for the calling ``module`` of ``model``."""
    try:
        owner = model.get_submodule(module) if module else model
    except AttributeError:
        return []
    out = []
    for attr, div in _SELF_ATTR.findall(line):
        value = getattr(owner, attr, None)
        if isinstance(value, (int, list, tuple)) and not isinstance(value, bool):
            out.append((attr, value, int(div) if div else 1))
    return out

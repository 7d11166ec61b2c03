"""Numbers people give slimkit (CLI options, recipe keys, plan fields): finite and in range, up front.

One mechanism for every input of this kind. A command, the recipe schema and the plan reader all
call :func:`check_number` with a :class:`Range`; the ranges a CLI option and the recipe key of the
same meaning share live here (``EXPAND``, ``LR``, ...), so ``--expand`` and ``prune.expand`` can
never disagree. NaN and infinity are refused everywhere: ``nan < 0`` is False, so a plain range
test lets NaN through (a NaN ``--gamma`` used to give every group width 1 and exit 0).

:func:`show` prints a value inside an error message with bounded cost: a YAML alias bomb expands
to a structure whose full ``repr`` runs to gigabytes.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import numbers
import re
import reprlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from slimkit.errors import SlimkitError

__all__ = ["Range", "check_number", "check_type", "check_input_size", "show", "a_kind", "did_you_mean", "close_matches", "INT64_MAX",
           "DuplicateKeyError", "loads_json"]

INT64_MAX = 2**63 - 1  # torch, numpy and onnxruntime all overflow past this


@dataclass(frozen=True)
class Range:
    """Allowed values: ``low``/``high`` bounds (None: unbounded), open or closed; ``integer`` refuses floats."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def contains(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True

    def words(self) -> str:
        """The range for help text, in words (help is rendered as markup: no brackets)."""
        parts = []
        if self.low is not None:
            parts.append(f"{'above' if self.low_open else 'at least'} {_fmt(self.low)}")
        if self.high is not None:
            parts.append(f"{'below' if self.high_open else 'at most'} {_fmt(self.high)}")
        return ", ".join(parts) or "any finite number"

    def text(self) -> str:
        lo, hi = _fmt(self.low), _fmt(self.high)
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{lo}, {hi}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {lo}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {hi}"
        return "a finite number"


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    if float(x).is_integer() and abs(x) >= 1e6:
        return f"{x:.0e}".replace("e+0", "e").replace("e+", "e")
    return f"{x:g}" if isinstance(x, float) else str(x)


_short = reprlib.Repr()
_short.maxlevel, _short.maxdict, _short.maxlist, _short.maxtuple, _short.maxset = 2, 4, 4, 4, 4
_short.maxstring, _short.maxother, _short.maxlong = 40, 40, 40


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` on one line (a module's repr spans many), cut to ``limit`` characters, computed in
    bounded time for any nesting or size."""
    text = re.sub(r"\s*\n\s*", " ", _short.repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def close_matches(name: Any, choices: Iterable[str], n: int = 1) -> list[str]:
    """The ``n`` choices nearest ``name`` (a typo's intended words), nearest first: every "did you mean" in
    slimkit's messages comes from here."""
    if not isinstance(name, str):
        return []
    return difflib.get_close_matches(name, list(dict.fromkeys(choices)), n=n, cutoff=0.6)


def did_you_mean(name: Any, choices: Iterable[str]) -> str:
    """``" (did you mean 'X'?)"`` naming the choice nearest ``name`` (a typo's intended word), or ``""``."""
    close = close_matches(name, choices)
    return f" (did you mean '{close[0]}'?)" if close else ""


def a_kind(value: Any) -> str:
    """``value``'s type with its article, for a message: "an int", "a tuple"."""
    kind = type(value).__name__
    return f"{'an' if kind[:1] in tuple('aeiouAEIOU') else 'a'} {kind}"


def check_number(name: str, value: Any, allowed: Range, error: type[SlimkitError] = SlimkitError,
                 fix: str = "") -> Any:
    """``value`` if it is a finite number inside ``allowed`` (None passes: "not given"); else ``error``
    with one line naming ``name``, the value and the range (and ``fix`` when given)."""
    if value is None:
        return None
    tail = f"; {fix}" if fix else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{name} must be a number {allowed.text()}, got {show(value)}{tail}")
    if allowed.integer and not isinstance(value, int):
        raise error(f"{name} must be a whole number {allowed.text()}, got {show(value)}{tail}")
    if isinstance(value, float) and not math.isfinite(value):
        raise error(f"{name} must be a finite number {allowed.text()}, got {value}{tail}")
    if isinstance(value, int) and abs(value) > INT64_MAX:
        raise error(f"{name} {show(value, 30)} is too large: it must be {allowed.text()}{tail}")
    if not allowed.contains(value):
        raise error(f"{name} must be {allowed.text()}, got {show(value, 30)}{tail}")
    return value


def check_type(function: str, name: str, value: Any, kinds: type | tuple[type, ...], expected: str) -> Any:
    """``value`` if it is one of ``kinds`` (a bool never counts as a number); else a TypeError naming the
    public function, its argument and what it takes: a Python caller's mistake, said in one line."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise TypeError(f"{function}: '{name}' must be {expected}, got {show(value)} ({type(value).__name__})")
    return value


def check_callable(function: str, name: str, value: Any, args: int, expected: str) -> Any:
    """``value`` if it can be called with ``args`` positional arguments (None passes); else a TypeError
    naming the public function and its argument, before any work, instead of the bare
    "<lambda>() takes 0 positional arguments" from deep inside it. Builtins whose signature Python cannot
    read are taken on trust."""
    if value is None:
        return None
    if not callable(value):
        raise TypeError(f"{function}: '{name}' must be {expected}, got {show(value)} ({type(value).__name__})")
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):
        return value
    try:
        signature.bind(*([None] * args))
    except TypeError:
        raise TypeError(f"{function}: '{name}' must be {expected}; {show(value)} cannot be called with "
                        f"{args} argument{'s' if args != 1 else ''} {signature}") from None
    return value


def check_input_size(function: str, value: Any, required: bool = False) -> tuple[int, int, int] | None:
    """An API ``input_size`` as (C, H, W) positive whole numbers in range (None passes: the model's own,
    unless ``required``: a bare module has no size of its own)."""
    if value is None and not required:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 3 or \
            any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in value):
        hint = f" (for {value} px write ({3}, {value}, {value}))" if isinstance(value, int) and not isinstance(value, bool) else ""
        raise TypeError(f"{function}: 'input_size' must be (C, H, W), e.g. (3, 224, 224), got {show(value)}{hint}")
    c, h, w = (int(v) for v in value)
    check_number(f"{function}: input_size channels", c, IN_CHANS)
    for side in (h, w):
        check_number(f"{function}: input_size side", side, SIDE)
    return (c, h, w)


# ---------------------------------------------------------------------------- shared ranges
# What a CLI option and the recipe key of the same meaning accept. Upper bounds are far beyond any
# real use; they exist so absurd values fail here in one line rather than as an overflow or an
# out-of-memory deep inside torch.
COUNT = Range(1, 1_000_000_000, integer=True)  # epochs, steps, runs, batch sizes...
SMALL_COUNT = Range(1, 65_536, integer=True)  # batch, classes, channels
# Intra-op threads: onnxruntime and torch start that many OS threads at once; at tens of thousands the
# process hangs for minutes in thread creation, gigabytes of stacks, deaf to SIGTERM. 1024 still starts
# in a second.
THREADS = Range(1, 1024, integer=True)
NON_NEGATIVE_COUNT = Range(0, 1_000_000_000, integer=True)  # warm-up rounds, workers, val images
SEED = Range(0, 2**32 - 1, integer=True)  # numpy's legacy seeding and most tools take 32 bits
EXPAND = Range(1.0, 16.0)  # channel expansion: widens, never thins (the paper uses 1.25)
ROUND_TO = Range(1, 1024, integer=True)
TOLERANCE = Range(0.0, 1.0, low_open=True, high_open=True)
GAMMA = Range(0.0, 1e6)
LR = Range(0.0, 100.0, low_open=True)
EPOCHS_FRACTIONAL = Range(0.0, 1_000_000.0, low_open=True)  # gate-learning epochs (may be fractional)
WARMUP_EPOCHS = Range(0.0, 1_000_000.0)
WEIGHT_DECAY = Range(0.0, 1.0)
LABEL_SMOOTHING = Range(0.0, 1.0, high_open=True)
SIDE = Range(1, 8192, integer=True)  # image side in pixels
IN_CHANS = Range(1, 64, integer=True)
OPSET = Range(7, 99, integer=True)
RUNS = Range(5, 10_000_000, integer=True)  # timed rounds: fewer than 5 give no usable statistics
ATOL = Range(0.0, 1e6, low_open=True)


class DuplicateKeyError(ValueError):
    """A JSON object that names one key twice: json.loads would keep the last value without a word."""


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(f"the key {show(key, 60)} appears twice: keep one of them")
        out[key] = value
    return out


def loads_json(text: str | bytes) -> Any:
    """json.loads for a file a person may have edited (a plan, --arch-kwargs): a key given twice is a
    :class:`DuplicateKeyError`, as it is in a recipe, never the last value taken silently."""
    return json.loads(text, object_pairs_hook=_refuse_duplicates)

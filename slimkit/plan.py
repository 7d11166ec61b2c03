"""ChannelPlan: the hand-off between every stage (a small, versioned, human-readable JSON file).

A plan is "architecture name + the width of every channel group". ``slimkit.generate(plan)``
rebuilds the same thin network from it on any machine. Field names are a fixed contract (see
DESIGN.md); unknown top-level fields are rejected so typos do not pass silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

from slimkit import validate as limits
from slimkit.errors import PlanError, SlimkitError
from slimkit.validate import Range, check_number, show

__all__ = ["ChannelPlan", "load_plan", "save_plan", "atomic_write", "atomic_write_text", "folder_lock",
           "PLAN_FORMAT"]

PLAN_FORMAT = "slimkit.plan/1"


def _version() -> str:
    from slimkit import __version__

    return __version__


@dataclass
class ChannelPlan:
    arch: str
    input_size: list[int]
    groups: dict[str, dict[str, int]]  # name -> {"full": int, "width": int}
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    expand: float = 1.0
    round_to: int = 8
    method: str = "uniform"
    seed: int = 0
    budget: dict[str, Any] | None = None  # {"kind", "text", "value"}
    flops: int | None = None
    params: int | None = None
    latency: dict[str, Any] | None = None
    search: dict[str, Any] = field(default_factory=dict)
    slimkit_version: str = field(default_factory=_version)
    format: str = PLAN_FORMAT

    @property
    def widths(self) -> dict[str, int]:
        return {name: g["width"] for name, g in self.groups.items()}

    @property
    def num_classes(self) -> int | None:
        return self.arch_kwargs.get("num_classes")

    def keep_ratios(self) -> dict[str, float]:
        return {name: g["width"] / g["full"] for name, g in self.groups.items()}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        order = ["format", "arch", "arch_kwargs", "input_size", "expand", "round_to", "method",
                 "seed", "budget", "groups", "flops", "params", "latency", "search",
                 "slimkit_version"]
        return {k: d[k] for k in order}

    def to_json(self) -> str:
        # One group per line: readable by a person, diffable in review.
        d = self.to_dict()
        groups = d.pop("groups")
        body = re.sub(r"\[\s*([-\d.,\s]*?)\s*\]",
                      lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
                      json.dumps(d, indent=2))
        lines = ",\n".join(f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in groups.items())
        return body[:-2] + ',\n  "groups": {\n' + lines + "\n  }\n}\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = "plan") -> ChannelPlan:
        if not isinstance(data, dict):
            raise PlanError(f"{source} is not a ChannelPlan (expected a JSON object)")
        fmt = data.get("format")
        if fmt != PLAN_FORMAT:
            raise PlanError(
                f"{source} has format {show(fmt)}, expected {PLAN_FORMAT!r}: regenerate it with `slimkit prune`"
            )
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise PlanError(f"{source} has unknown fields {show(unknown)}: remove them (see DESIGN.md)")
        for key in ("arch", "input_size", "groups"):
            if key not in data:
                raise PlanError(f"{source} lacks the required field '{key}'")
        if not isinstance(data["arch"], str) or not data["arch"]:
            raise PlanError(f"{source}: 'arch' must be a model name like 'timm:mobilenetv1_100'")
        size = data["input_size"]
        if not (isinstance(size, list) and len(size) == 3 and all(isinstance(s, int) and s > 0 for s in size)):
            raise PlanError(f"{source}: 'input_size' must be [C, H, W] positive integers, got {show(size)}")
        _check_plan_numbers(data, source)
        groups = data["groups"]
        if not isinstance(groups, dict) or not groups:
            raise PlanError(f"{source}: 'groups' must be a non-empty object of name -> {{full, width}}")
        expand = float(data.get("expand", 1.0))
        for name, g in groups.items():
            if not (isinstance(g, dict) and set(g) == {"full", "width"}
                    and all(isinstance(g[k], int) and not isinstance(g[k], bool) and g[k] >= 1 for k in g)):
                raise PlanError(
                    f"{source}: group {show(name, 40)} must be {{\"full\": int >= 1, \"width\": int >= 1}}, "
                    f"got {show(g)}"
                )
            check_number(f"{source}: group {show(name, 40)} 'full'", g["full"], MAX_CHANNELS, PlanError)
            # G widens a group by at most `expand` (plus rounding up to a divisor); a wider group is not
            # a plan slimkit made, and at expand 1.0 nothing may be wider than the source model.
            widest = g["full"] if expand == 1.0 else 2 * expand * g["full"]
            if g["width"] > widest:
                raise PlanError(f"{source}: group {show(name, 40)} is {g['width']} channels wide, wider than its full "
                                f"model ({g['full']}) at expand {expand:g}: regenerate the plan with `slimkit prune`")
        kwargs = data.get("arch_kwargs", {})
        if not isinstance(kwargs, dict):
            raise PlanError(f"{source}: 'arch_kwargs' must be an object")
        return cls(**data)


MAX_CHANNELS = Range(1, 1 << 20, integer=True)
_COUNT_OR_NONE = Range(0, limits.INT64_MAX, integer=True)


def _check_plan_numbers(data: dict[str, Any], source: str) -> None:
    """The plan's numbers, finite and in the ranges slimkit writes (a hand-edited or damaged plan fails
    here in one line, not as NaN widths or an overflow later)."""
    for key, allowed in (("expand", limits.EXPAND), ("round_to", limits.ROUND_TO), ("seed", Range(0, limits.INT64_MAX, integer=True)),
                         ("flops", _COUNT_OR_NONE), ("params", _COUNT_OR_NONE)):
        if key in data:
            check_number(f"{source}: '{key}'", data[key], allowed, PlanError, "regenerate the plan with `slimkit prune`")
    c, h, w = data["input_size"]
    check_number(f"{source}: input channels", c, limits.IN_CHANS, PlanError)
    for side in (h, w):
        check_number(f"{source}: input side", side, limits.SIDE, PlanError)
    kwargs = data.get("arch_kwargs") or {}
    if isinstance(kwargs, dict):
        for key, allowed in (("num_classes", limits.SMALL_COUNT), ("in_chans", limits.IN_CHANS)):
            if key in kwargs:
                check_number(f"{source}: arch_kwargs.{key}", kwargs[key], allowed, PlanError)
    budget = data.get("budget")
    if budget is not None:
        if not isinstance(budget, dict):
            raise PlanError(f"{source}: 'budget' must be an object {{kind, text, value}}, got {show(budget)}")
        for key in ("value", "fraction"):
            if budget.get(key) is not None:
                check_number(f"{source}: budget.{key}", budget[key], Range(0.0, 1e30, low_open=True), PlanError)
    latency = data.get("latency")
    if latency is not None and not isinstance(latency, dict):
        raise PlanError(f"{source}: 'latency' must be an object or null, got {show(latency)}")
    for key, value in (latency or {}).items():
        if isinstance(value, float):
            check_number(f"{source}: latency.{key}", value, Range(), PlanError)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Write via a temp file in the same folder + rename: readers never see half a file, and a
    crash leaves the previous version intact. ``write(tmp_path)`` produces the content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


LOCK_NAME = ".slimkit.lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "run") -> Iterator[None]:
    """Hold ``folder`` for one writer: a second slimkit process writing the same run folder would
    interleave checkpoints. flock is released by the kernel when the holder dies (even SIGKILL), so a
    crash never leaves a stale lock; the lock file is removed on a clean exit."""
    import fcntl

    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, _, kind = os.pread(fd, 128, 0).decode(errors="replace").strip().partition(" ")
            raise SlimkitError(f"{folder} is in use by another slimkit {kind or 'command'} (pid {pid or '?'}): "
                               "wait for it to finish or choose another --out") from None
        if not path.exists() or os.stat(path).st_ino != os.fstat(fd).st_ino:
            # The previous holder removed the file between our open and our lock: ours is stale.
            raise SlimkitError(f"{folder} changed hands while locking it; run the command again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}".encode(), 0)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # before unlocking, so no one locks a file about to vanish
    finally:
        os.close(fd)
        if created and path.parent.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # a command that failed before writing anything leaves no empty folder


def save_plan(plan: ChannelPlan, path: str | os.PathLike) -> Path:
    return atomic_write_text(path, plan.to_json())


def load_plan(path: str | os.PathLike | dict | ChannelPlan) -> ChannelPlan:
    """Read and validate a plan from a path (or pass a dict / plan through)."""
    if isinstance(path, ChannelPlan):
        return path
    if isinstance(path, dict):
        return ChannelPlan.from_dict(path)
    p = Path(path)
    if not p.is_file():
        raise PlanError(f"plan file not found: {p} (create one with `slimkit prune ARCH --out {p}`)")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"{p} is not valid JSON ({exc}); regenerate it with `slimkit prune`") from exc
    return ChannelPlan.from_dict(data, source=str(p))

"""What every command shares: one error path, consoles, progress, number checks, small parsers."""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import json
import os
import sys
import time
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
import typer.core
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.segment import Segments
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from slimkit.errors import SlimkitError, os_error_in
from slimkit.models import user
from slimkit import validate as limits
from slimkit.validate import DuplicateKeyError, Range, check_number, loads_json


def _never_fail_on_encoding() -> None:
    """A terminal or pipe that cannot encode a character ('—', 'λ', '×': PYTHONIOENCODING=ascii, a
    latin-1 locale) gets a '?' instead of a UnicodeEncodeError: printing must never lose a finished
    command's work (every command also writes its files before it prints about them)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", "strict") == "strict":
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="replace")


_never_fail_on_encoding()


class _ClosedOutputSafe:
    """sys.stdout / sys.stderr for the command line: when the reader goes away (``slimkit prune ... |
    head -1``) the rest of the output is dropped and the command finishes its work, instead of dying
    on the next line it prints (click's handling of EPIPE: exit 1, the plan never written)."""

    def __init__(self, stream: Any) -> None:
        self._stream, self._closed = stream, False

    def _drop_the_rest(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError, ValueError, AttributeError):  # later flushes (at exit too) go nowhere
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def write(self, text: str) -> int:
        if not self._closed:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._drop_the_rest()
        return len(text)

    def flush(self) -> None:
        if not self._closed:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop_the_rest()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def survive_closed_output() -> None:
    """Install :class:`_ClosedOutputSafe` on stdout and stderr (the ``slimkit`` command only: a library
    leaves its caller's streams alone)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _ClosedOutputSafe):
            setattr(sys, name, _ClosedOutputSafe(stream))
console = Console()
err_console = Console(stderr=True)

# A column that may fold (a file or model name) is given at most this many cells when a table is squeezed.
FOLD_WIDTH = 10


def print_table(table: Any, target: Console | None = None) -> None:
    """Print ``table`` without cutting a cell short. Rich squeezes a table wider than the terminal by
    cutting its widest columns, numbers too ("120.…", "10.9…" in the run summary at 80 columns, nothing
    readable at 40). Here such a table gets each column at its longest word (a number is one word;
    headers and texts wrap, names fold at :data:`FOLD_WIDTH`), then the terminal's remaining width,
    shared among the columns in proportion to what their text would still use (without it, the export
    table's parity text wrapped in a 13-cell column of a 120-column terminal); and when even the
    longest words are wider than the terminal it is printed at the width it needs (the terminal wraps
    its lines; a log keeps them whole)."""
    target = target or console
    opts = target.options.update_width(1 << 16)
    if Measurement.get(target, opts, table).maximum > target.width:
        lows, wants = [], []
        for column in table.columns:
            sizes = [Measurement.get(target, opts, cell) for cell in [column.header, *column.cells]]
            widest = max((m.minimum for m in sizes), default=1)
            low = min(widest, FOLD_WIDTH) if column.overflow == "fold" and widest > FOLD_WIDTH else widest
            lows.append(low)
            wants.append(max(max((m.maximum for m in sizes), default=1) - low, 0))
            column.width = low
        spare = target.width - Measurement.get(target, opts, table).maximum
        if spare > 0 and any(wants):
            for column, low, want in zip(table.columns, lows, wants):
                column.width = low + min(want, spare * want // sum(wants))
    need = Measurement.get(target, opts, table).maximum
    if need > target.width:  # Console.print clamps `width` to the terminal's: render at `need`, print uncropped
        target.print(Segments(target.render(table, target.options.update_width(need))), crop=False)
    else:
        target.print(table)

F = TypeVar("F", bound=Callable[..., Any])

# When stdout is not a terminal (CI logs, `| tee`), a plain progress line at most this often.
PLAIN_PROGRESS_SECONDS = 30.0


def plain_progress_seconds() -> float:
    """``$SLIMKIT_PROGRESS_SECONDS`` (default :data:`PLAIN_PROGRESS_SECONDS`), read when a command draws
    progress, so a bad value is that command's one-line error, not a traceback on importing the CLI."""
    text = os.environ.get("SLIMKIT_PROGRESS_SECONDS", "").strip()
    if not text:
        return PLAIN_PROGRESS_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= 1e9:  # NaN fails too: it would print a line on every step
        raise SlimkitError(f"SLIMKIT_PROGRESS_SECONDS={text[:40]!r} is not a number of seconds in [0, 1e9]: set it "
                           f"like 30, or unset it for the default ({PLAIN_PROGRESS_SECONDS:g})")
    return value


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "?"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class SlimkitProgress(Progress):
    """rich's progress bars, plus two things every long command needs.

    * When the console is not a terminal, rich draws nothing until the end; then a plain line per
      counted task (description, done/total, rate, ETA) is printed every ``plain_every`` seconds,
      so CI logs and ``| tee`` show the run is alive and when it will end.
    * A task without a total (a spinner: "tracing resnet20") is a phase; it ends when the next
      counted task (gate learning, an epoch) starts, instead of spinning on beside it.
    """

    def __init__(self, *columns: Any, plain_every: float | None = None, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self.plain = not self.console.is_terminal
        self.plain_every = plain_progress_seconds() if plain_every is None else plain_every
        self._last_line: dict[TaskID, float] = {}

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        if kwargs.get("total", 100.0) is not None:
            for task in list(self.tasks):
                if task.total is None:
                    self.remove_task(task.id)
        task_id = super().add_task(description, *args, **kwargs)
        self._last_line[task_id] = time.monotonic()
        return task_id

    def remove_task(self, task_id: TaskID) -> None:
        if any(t.id == task_id for t in self.tasks):  # a phase may have ended already (see add_task)
            super().remove_task(task_id)

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        if self.plain:
            self._plain_line(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        if self.plain:
            self._plain_line(task_id)

    def _plain_line(self, task_id: TaskID) -> None:
        task = next((t for t in self.tasks if t.id == task_id), None)
        if task is None or task.total is None:
            return
        now = time.monotonic()
        done = task.completed >= task.total
        if now - self._last_line.get(task_id, 0.0) < self.plain_every and not done:
            return
        self._last_line[task_id] = now
        rate = task.speed or (task.completed / task.elapsed if task.elapsed else None)
        line = (f"{time.strftime('%H:%M:%S')} {task.description}: {task.completed:g}/{task.total:g}"
                f" ({100 * task.completed / max(task.total, 1e-9):.0f}%)"
                + (f", {rate:.2f}/s" if rate else "")
                + f", elapsed {_duration(task.elapsed)}"
                + ("" if done else f", ETA {_duration(task.time_remaining)}"))
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)


def make_progress() -> SlimkitProgress:
    """The progress display every long command uses (cleared when done; plain lines off a terminal)."""
    return SlimkitProgress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
                           MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                           transient=True)


def say_plain(progress: Progress) -> Callable[[str], None]:
    """A ``log`` callback: one line above the bars, printed as is (user text is never markup)."""
    return lambda msg: progress.console.print(msg, markup=False, highlight=False, soft_wrap=True)


def refuse_idle(options: list[tuple[str, Any, Any]], purpose: str, fix: str) -> None:
    """Options that would do nothing in this command, each ``(name, value, default)`` and given when its value is
    not the default: one line naming them, what they set up and how to make them count, instead of accepting
    and ignoring them (the user who gave one expects it to have done something)."""
    given = [name for name, value, default in options if value != default]
    if given:
        raise SlimkitError(f"{', '.join(given)} set{'s' if len(given) == 1 else ''} up {purpose}: {fix}, or drop "
                           f"{'it' if len(given) == 1 else 'them'}")


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    # escape: messages name things like slimkit[openvino] that rich would take for markup and drop
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# errno -> what to tell the user when a write (plan, checkpoint, ONNX, report) fails.
_WRITE_FIXES = {
    errno.ENOSPC: "the disk is full: free some space (or choose another --out) and run again; "
                  "files written before are intact",
    errno.EDQUOT: "the disk quota is exceeded: free some space (or choose another --out) and run again",
    errno.EROFS: "the file system is read-only: choose a writable --out",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another --out",
    errno.EEXIST: "a file is in the way of a folder: choose another --out",
    errno.EISDIR: "that is a folder, not a file: give a file name",
    errno.EACCES: "permission denied: choose a writable --out",
    errno.EPERM: "permission denied: choose a writable --out",
    errno.ENAMETOOLONG: "the file name is too long: choose a shorter --out",
    errno.EIO: "is the disk full or read-only? free some space or choose a writable --out, then run again; "
               "files written before are intact",
}


def os_error_message(exc: OSError) -> str:
    """One line for an OSError: what failed, on which path, and the fix."""
    where = exc.filename or ""
    if exc.filename2:
        where = f"{where} -> {exc.filename2}"
    reason = exc.strerror or type(exc).__name__
    fix = _WRITE_FIXES.get(exc.errno or -1)
    return f"{reason}: {where}" + (f" ({fix})" if fix else "") if where else reason + (f" ({fix})" if fix else "")


OUT_OF_MEMORY = ("out of memory: this model at this input size (and batch) needs more memory than this machine has; "
                 "use a smaller --input-size or --batch-size (files written before are intact)")


def _out_of_memory(exc: BaseException) -> bool:
    """torch's allocators report an exhausted CPU or GPU as a RuntimeError (OutOfMemoryError is one)."""
    text = str(exc)
    return (type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in text
            or "CUDA out of memory" in text or "not enough memory" in text)


def user_errors(fn: F) -> F:
    """Bad input -> one line on stderr and a non-zero exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SlimkitError as exc:
            fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        except OSError as exc:  # a path that is not there, not writable, or a full disk
            fail(os_error_message(exc))
        except MemoryError:
            fail(OUT_OF_MEMORY)
        except RuntimeError as exc:
            if _out_of_memory(exc):
                fail(OUT_OF_MEMORY)
            os_err = os_error_in(exc)
            if os_err is None:
                _fail_in_user_code(exc)
            fail(os_error_message(os_err))
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - the user's model code: theirs to fix, in one line
            _fail_in_user_code(exc)

    return wrapper  # type: ignore[return-value]


def _fail_in_user_code(exc: Exception) -> None:
    """One line for an error raised in the user's own model code (their forward on a batch of several images,
    say); any other exception is slimkit's and keeps its traceback."""
    where = user.user_code_frame(exc)
    if where is None:
        raise exc
    text = " ".join(str(exc).split())[:200]
    fail(f"your model's code raised {type(exc).__name__}{': ' + text if text else ''} ({where}): fix the model; its "
         "forward must run on batches of any size, in train and eval mode")


FORCE_HELP = "Replace files at the outputs' paths that slimkit cannot recognise as its own (by default it refuses)."


def check_out_folder(out: Path) -> None:
    """--out of a command that writes a folder: not an existing file, nor inside one."""
    if out.exists() and not out.is_dir():
        raise SlimkitError(f"--out {out} is a file, but this command writes a folder there: choose another --out")
    check_out_parent(out)


def check_out_parent(out: Path) -> None:
    """The nearest existing folder above --out must be a folder (not a file), checked before any work."""
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise SlimkitError(f"--out {out}: {parent} is a file, not a folder; choose another --out")
            break


# ---------------------------------------------------------------------------- numbers
def _is_number(tp: Any) -> bool:
    if tp in (int, float):
        return True
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _is_number(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return len(args) == 1 and _is_number(args[0])
    return False


def checked_numbers(**ranges: Range) -> Callable[[F], F]:
    """Every int/float parameter of a command must be finite and inside its :class:`Range`, checked
    before the command does anything. Every numeric parameter needs a range here: a new option
    without one fails at import, so no option can skip the check."""

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        numeric = [name for name in sig.parameters if _is_number(hints.get(name))]
        missing, extra = set(numeric) - set(ranges), set(ranges) - set(numeric)
        if missing or extra:
            raise TypeError(f"{fn.__name__}: give a Range for every numeric option (missing {sorted(missing)}, "
                            f"not numeric {sorted(extra)})")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            for name in numeric:
                check_number("--" + name.replace("_", "-"), bound.arguments[name], ranges[name])
            return fn(*args, **kwargs)

        wrapper.number_ranges = dict(ranges)  # type: ignore[attr-defined]  # for the help text (SlimkitCommand)
        return wrapper  # type: ignore[return-value]

    return decorate


def file_paths(**examples: str) -> Callable[[F], F]:
    """Path options of a command that name a file (or a report's stem), each with an example name:
    ``--out runs/`` names a folder, which Path() would turn into a file called ``runs``. SlimkitCommand
    refuses a trailing ``/`` while the raw text is still there."""

    def decorate(fn: F) -> F:
        fn.file_paths = dict(examples)  # type: ignore[attr-defined]
        return fn

    return decorate


# ---------------------------------------------------------------------------- help text
def _no_type(option: Any) -> Any:
    if option is not None:
        option.metavar = ""  # an on/off flag takes no value: no "<bool>" beside it
    return option


def _reflowed(help_text: str | None) -> str | None:
    """A docstring's paragraphs as single lines, for the terminal to wrap: typer 0.29's rich help keeps
    the source's line breaks, which wrap mid-sentence in an 80-column terminal (no command's help
    holds a list or a block that needs them)."""
    if not help_text:
        return help_text
    return "\n\n".join(" ".join(p.split("\n")) for p in inspect.cleandoc(help_text).split("\n\n"))


class SlimkitGroup(typer.core.TyperGroup):
    """The top-level ``slimkit`` command: no ``<bool>`` beside --help and --version."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for p in self.params:
            if isinstance(p, typer.core.TyperOption) and p.is_flag:
                _no_type(p)

    def get_help_option(self, ctx: Any) -> Any:
        return _no_type(super().get_help_option(ctx))


class SlimkitCommand(typer.core.TyperCommand):
    """Help as people read it: ``ARCH`` in the usage line (typer 0.29 prints ``{arch}``), no
    ``<bool>`` type beside on/off flags, and each number's allowed range (from :func:`checked_numbers`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = _reflowed(self.help)
        ranges = getattr(self.callback, "number_ranges", {})
        for p in self.params:
            if p.name in ranges and isinstance(p, typer.core.TyperOption):
                p.help = (p.help or "").rstrip() + f" Allowed: {ranges[p.name].words()}."
            if isinstance(p, typer.core.TyperOption) and p.is_flag:
                p.metavar = ""
            elif isinstance(p, typer.core.TyperArgument) and p.metavar is None and p.name:
                p.metavar = p.name.upper()

    def get_help_option(self, ctx: Any) -> Any:
        return _no_type(super().get_help_option(ctx))

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # An empty path ('--out ""') reaches the command as Path('.'): the current folder, which the
        # user did not name; 'runs/' reaches it as Path('runs'), a file where the user named a folder.
        # Refuse both while the raw text is still here.
        files = getattr(self.callback, "file_paths", {})
        for p in self.params:
            if not isinstance(p, typer.core.TyperOption) or p.type_descriptor.annotation is not Path:
                continue
            for i, arg in enumerate(args):
                if arg in p.opts and i + 1 < len(args):
                    value = args[i + 1]
                else:
                    value = next((arg[len(o) + 1:] for o in p.opts if o.startswith("--") and arg.startswith(o + "=")),
                                 None)
                if value is None:
                    continue
                if not value.strip():
                    raise typer.BadParameter("is empty: give a file or folder name", ctx=ctx, param=p)
                if p.name in files and value.endswith(("/", os.sep)):
                    raise typer.BadParameter(f"{value} ends in '/', a folder, but this option names a file: give a "
                                             f"file name, e.g. {value.rstrip('/' + os.sep)}/{files[p.name]}",
                                             ctx=ctx, param=p)
                if p.name in files and "." not in files[p.name] and os.path.isdir(value):
                    # a report's stem (bench --out lat: lat.json, lat.md, lat.png) would put the files beside
                    # the folder the user named, not in it (an option naming one file refuses a folder itself)
                    raise typer.BadParameter(f"{value} is a folder, but this option names the report's files (its "
                                             f"stem): give a name inside it, e.g. {value.rstrip('/' + os.sep)}/"
                                             f"{files[p.name]}", ctx=ctx, param=p)
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if isinstance(p, typer.core.TyperArgument):
                name = (p.metavar or (p.name or "").upper()) + ("..." if p.nargs != 1 else "")
                pieces.append(name if p.required else f"[{name}]")
        return pieces


ARCH_KWARGS_HELP = ("Keyword arguments for the model's builder, as JSON: '{\"width\": 64}' (recorded in the plan; "
                    "for a python: factory, its own parameters).")


def parse_arch_kwargs(text: str | None) -> dict[str, Any] | None:
    """--arch-kwargs '{"width": 64}' -> a dict (one clear line when it is not a JSON object)."""
    if text is None:
        return None
    try:
        value = loads_json(text)
    except DuplicateKeyError as exc:
        raise SlimkitError(f"--arch-kwargs: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SlimkitError(f"cannot read --arch-kwargs '{text[:60]}': {exc.msg}; use JSON like "
                           "'{\"width\": 64}'") from None
    if not isinstance(value, dict):
        raise SlimkitError(f"--arch-kwargs must be a JSON object like '{{\"width\": 64}}', got {text[:60]}")
    return value


def parse_input_size(text: str | None, in_chans: int | None = None) -> tuple[int, int, int] | None:
    """'224' -> (3,224,224), its channels ``in_chans`` when given; '3,224,224' or '224x224' accepted. Channels
    given both ways must agree: one of them silently dropped would build another model than asked."""
    if text is None:
        return None
    if in_chans is not None:
        size = parse_input_size(text)
        if len(text.replace("x", ",").split(",")) == 3 and size[0] != in_chans:
            raise SlimkitError(f"--input-size {text[:40]} gives {size[0]} input channels but --in-chans {in_chans}: "
                               "give the channels once (--input-size H,W with --in-chans, or C,H,W alone)")
        return (in_chans, size[1], size[2])
    usage = f"cannot read --input-size '{text[:40]}': use 224, 224x224 or 3,224,224"
    parts = text.replace("x", ",").split(",")
    if len(parts) not in (1, 2, 3) or any(not p.strip() for p in parts):
        raise SlimkitError(usage)
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise SlimkitError(usage) from None
    if len(nums) == 1:
        nums = [3, nums[0], nums[0]]
    elif len(nums) == 2:
        nums = [3, *nums]
    if len(nums) != 3 or min(nums) < 1:
        raise SlimkitError(usage)
    check_number("--input-size channels", nums[0], limits.IN_CHANS)
    for side in nums[1:]:
        check_number("--input-size side", side, limits.SIDE)
    return (nums[0], nums[1], nums[2])

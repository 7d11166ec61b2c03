"""What every command shares: one error path, consoles, small parsers."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from slimkit.errors import SlimkitError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def make_progress() -> Progress:
    """The progress display every long command uses (cleared when done)."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)


def fail(message: str, code: int = 2) -> None:
    # escape: messages name things like slimkit[openvino] that rich would take for markup and drop
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def user_errors(fn: F) -> F:
    """Bad input -> one line on stderr and a non-zero exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SlimkitError as exc:
            fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
            fail(f"{exc.strerror or exc}: {exc.filename}")
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def parse_input_size(text: str | None) -> tuple[int, int, int] | None:
    """'224' -> (3,224,224) later filled with channels; '3,224,224' or '224x224' accepted."""
    if text is None:
        return None
    parts = text.replace("x", ",").split(",")
    if len(parts) not in (1, 2, 3) or any(not p.strip() for p in parts):
        raise SlimkitError(f"cannot read --input-size '{text}': use 224, 224x224 or 3,224,224")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise SlimkitError(f"cannot read --input-size '{text}': use 224, 224x224 or 3,224,224") from None
    if len(nums) == 1:
        nums = [3, nums[0], nums[0]]
    elif len(nums) == 2:
        nums = [3, *nums]
    if len(nums) != 3 or min(nums) < 1:
        raise SlimkitError(f"cannot read --input-size '{text}': use 224, 224x224 or 3,224,224")
    return (nums[0], nums[1], nums[2])

"""Writing artifacts safely: atomic writes (a reader never sees half a file) and one writer per folder.

Every artifact slimkit writes (plans, checkpoints, ONNX files, reports, plots) goes through
:func:`atomic_write`; every command that writes a run folder holds :func:`folder_lock` on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from slimkit.errors import SlimkitError

__all__ = ["atomic_write", "atomic_write_text", "cache_dir", "folder_lock", "LOCK_NAME", "RUN_RECIPE_NAME"]


def cache_dir() -> Path:
    """Where slimkit keeps what it measured or downloaded once per machine: ``$SLIMKIT_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/slimkit``, else ``~/.cache/slimkit``."""
    if os.environ.get("SLIMKIT_CACHE_DIR"):
        return Path(os.environ["SLIMKIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slimkit"


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
RUN_RECIPE_NAME = "recipe.yaml"  # marks a `slimkit run` folder (its resolved recipe)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "run") -> Iterator[None]:
    """Hold ``folder`` for one writer: a second slimkit process writing the same run folder would
    interleave checkpoints. flock is released by the kernel when the holder dies (even SIGKILL), so a
    crash never leaves a stale lock; the lock file is removed on a clean exit."""
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

"""Writing artifacts safely: atomic writes (a reader never sees half a file), one writer per folder,
and never over a file slimkit did not write.

Every artifact slimkit writes (plans, checkpoints, ONNX files, reports, plots) goes through
:func:`atomic_write`; every command that writes a run folder holds :func:`folder_lock` on it.
Before any work, every command lists each file it will write (the one the user named and the ones
beside it: plots, reports, run files) as an :class:`Output` and calls :func:`check_outputs`: a
file already there is replaced only when slimkit can recognise it as its own (its format or mark,
see :data:`MARK`) or with ``--force``; no output may be an input, two outputs may not share a
path, and a folder or an over-long name where a file goes fails before the work, not after it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimkit.errors import SlimkitError, os_error_in

__all__ = ["atomic_write", "atomic_write_text", "cache_dir", "read_cache", "write_cache", "folder_lock", "LOCK_NAME",
           "RUN_RECIPE_NAME", "Output",
           "OutputError", "check_outputs", "MARK", "MARKDOWN_MARK", "PNG_MARK", "has_mark", "is_json_with",
           "png_mark", "plot_of", "JSON_KINDS", "json_kind",
           "same_path", "scratch_path"]

# What slimkit writes into files that have no format field of their own, so that a later command can
# tell its own file (safe to replace) from a user's: a PNG's tEXt "Software" entry, a Markdown comment.
MARK = "slimkit"
PNG_MARK = {"Software": MARK}
MARKDOWN_MARK = "<!-- written by slimkit -->"
PLOT_KEY = "slimkit-plot"  # a PNG's tEXt entry naming which plot it is: "training curves", "channels", ...
NAME_MAX = 255  # bytes in one file name on every file system slimkit targets


def cache_dir() -> Path:
    """Where slimkit keeps what it measured or downloaded once per machine: ``$SLIMKIT_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/slimkit``, else ``~/.cache/slimkit``."""
    if os.environ.get("SLIMKIT_CACHE_DIR"):
        return Path(os.environ["SLIMKIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slimkit"


def read_cache(path: Path | None, format: str) -> dict[str, Any] | None:
    """A per-machine cache file as slimkit wrote it (a JSON object whose ``format`` is ``format``), or
    None when it is absent, damaged or someone else's: the caller measures again."""
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == format else None


def write_cache(path: Path, data: dict[str, Any], say: Callable[[str], None]) -> None:
    """Write a cache (``data["format"]`` names it) atomically, never over a file that is not that cache
    (a user's own file in ``$SLIMKIT_CACHE_DIR``): that one is left byte-identical and the value is
    measured again next time. A cache that cannot be written never fails the command it serves."""
    if path.exists() and read_cache(path, data["format"]) is None:
        say(f"note: {path} is not slimkit's cache ({data['format']}): left as it is, so this measurement is "
            "not cached; move that file away (or set SLIMKIT_CACHE_DIR) to cache it")
        return
    try:
        atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    except OSError as exc:  # a read-only home: the next run measures again
        say(f"note: could not write the cache {path} ({exc.strerror or exc})")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Write via a temp file in the same folder + rename: readers never see half a file, and a
    crash leaves the previous version intact. ``write(tmp_path)`` produces the content."""
    path = Path(path)
    if path.is_dir():  # os.replace would fail with EBUSY/EISDIR naming a temporary file, after the work
        raise OutputError(f"{path} is a folder, not a file: give a file name inside it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path.name), suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get normal permissions
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename == tmp:
            exc.filename = str(path)  # the user named `path`; the temporary name means nothing to them
        elif isinstance(exc, RuntimeError) and (os_err := os_error_in(exc)) is not None:
            # a library that wrapped the failed write (torch.save on a full disk: a RuntimeError naming no
            # file): the write failed, on the file the user named
            raise OSError(os_err.errno, os_err.strerror, str(path)) from exc
        raise
    return path


def scratch_path(path: str | os.PathLike, tag: str) -> Path:
    """A hidden working file beside ``path`` (``.NAME.TAG``, plus room for a ``.data`` sibling), its
    name cut to fit :data:`NAME_MAX` bytes whenever ``path``'s own name does, and never the name of a
    file already there (``.NAME.TAG1``, ``2``, ... instead)."""
    path = Path(path)
    room = NAME_MAX - len(os.fsencode(tag)) - 2 - 16
    base = path.parent / f".{os.fsdecode(os.fsencode(path.name)[:room])}.{tag}"
    scratch, n = base, 0
    # the caller writes and then removes it (and its .data): a file of that name already there is someone
    # else's (a user's .model.onnx.export was deleted by `export --out model.onnx`): take the next free name
    while any(p.exists() or p.is_symlink() for p in (scratch, Path(f"{scratch}.data"))):
        n += 1
        scratch = base.with_name(f"{base.name}{n}")
    return scratch


def _temp_prefix(name: str) -> str:
    """``.NAME.`` cut so that the temporary name (prefix + 8 random characters + ``.tmp``) fits in
    :data:`NAME_MAX` bytes whenever ``name`` itself does: a legal 255-byte name must not fail."""
    room = NAME_MAX - 2 - 8 - len(".tmp")
    return "." + os.fsdecode(os.fsencode(name)[:room]) + "."


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


# ---------------------------------------------------------------------------- whose file is this
class OutputError(SlimkitError):
    """An output path that would replace something slimkit did not write, or cannot be written."""


@dataclass(frozen=True)
class Output:
    """A file a command is about to write: ``what`` it is (for messages), and ``ours``, which says
    whether a file already at ``path`` is one slimkit wrote (so replacing it loses nothing of the
    user's). The default recognises nothing: any existing file needs ``--force``."""

    path: Path
    what: str
    ours: Callable[[Path], bool] = lambda path: False


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name one file (through links, ``..`` or another spelling)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def has_mark(path: Path) -> bool:
    """A PNG or text file carrying :data:`MARK` where slimkit puts it (PNG metadata, a Markdown comment)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    if head.startswith(b"\x89PNG"):
        return b"tEXtSoftware\x00" + MARK.encode() in head
    return MARKDOWN_MARK.encode() in head or _tail(path, MARKDOWN_MARK.encode())


# slimkit's JSON files by the name in their format field, for a message when one is given where another
# kind goes (a plan where a baseline goes, a report where a plan goes): say what it is, never advise
# writing over it.
JSON_KINDS = {"slimkit.plan": "a slimkit plan (from `slimkit prune`)",
              "slimkit.latency": "a latency report (from `slimkit bench` or `slimkit export`)",
              "slimkit.run-summary": "a run summary (from `slimkit run`)",
              "slimkit.run-stages": "a run's stage record (from `slimkit run`)"}


def json_kind(fmt: str) -> str:
    """What a JSON file whose format field is ``fmt`` is, as a noun phrase."""
    return JSON_KINDS.get(fmt.split("/")[0], "a slimkit file" if fmt.startswith("slimkit.") else f"a {fmt} file")


def png_mark(kind: str) -> dict[str, str]:
    """The PNG metadata slimkit writes into a plot: its mark, and which plot it is (``kind``), so a
    plot of one kind is never taken for another's to replace (a run's training curves for a plan's
    channel plot, `prune --out RUN/curves.json`)."""
    return {**PNG_MARK, PLOT_KEY: kind}


def _png_text(path: Path) -> dict[str, str]:
    """The tEXt entries of a PNG (up to its image data), {} for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return {}
    if not head.startswith(b"\x89PNG\r\n\x1a\n"):
        return {}
    text, at = {}, 8
    while at + 8 <= len(head):
        length, kind = int.from_bytes(head[at:at + 4], "big"), head[at + 4:at + 8]
        if kind in (b"IDAT", b"IEND"):
            break
        if kind == b"tEXt":
            key, _, value = head[at + 8:at + 8 + length].partition(b"\x00")
            text[key.decode("latin-1")] = value.decode("latin-1")
        at += 12 + length
    return text


def plot_of(kind: str) -> Callable[[Path], bool]:
    """A recogniser for one kind of slimkit plot (see :func:`png_mark`): slimkit's mark, and either this
    kind or none recorded (a plot written before kinds were)."""
    def ours(path: Path) -> bool:
        return has_mark(path) and _png_text(path).get(PLOT_KEY, kind) == kind
    return ours


def _tail(path: Path, needle: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            return needle in f.read()
    except OSError:
        return False


def is_json_with(*keys: str, **values: Any) -> Callable[[Path], bool]:
    """A recogniser: the file is a JSON object holding ``keys`` (and ``values`` under their keys)."""
    def ours(path: Path) -> bool:
        try:
            if path.stat().st_size > 256 << 20:
                return False
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and all(k in data for k in keys) and all(
            data.get(k) == v for k, v in values.items())
    return ours


def _name_too_long(path: Path) -> bool:
    return any(len(os.fsencode(part)) > NAME_MAX for part in path.parts)


def check_outputs(outputs: Sequence[Output], *, inputs: Sequence[str | os.PathLike] = (), force: bool = False,
                  option: str = "--out", not_ours: str = "is not {what} written by slimkit") -> None:
    """Before any work: every output can be written and replaces nothing of the user's.

    Refused (one line, naming the path and the fix): an output that is an input; two outputs on one
    path (``--out plan.png`` would put the plan and its plot there); a folder, or a file in the way
    of a folder, where an output goes; a name longer than the file system allows; an existing file
    that ``ours`` does not recognise, unless ``force`` (``not_ours`` says why it is not slimkit's)."""
    seen: dict[str, Output] = {}
    for out in outputs:
        path = Path(out.path)
        key = os.path.realpath(path)
        if key in seen:
            raise OutputError(f"{option} {path}: {seen[key].what} and {out.what} would both be written to {path}; "
                              f"choose another {option}")
        seen[key] = out
        if _name_too_long(path):
            raise OutputError(f"{option} {path}: a name in it is longer than {NAME_MAX} bytes; choose a shorter "
                              f"{option}")
        for source in inputs:
            if path.exists() and Path(source).exists() and same_path(path, source):
                raise OutputError(f"{option} {path} is also an input of this command: writing {out.what} there "
                                  f"would replace it; choose another {option}")
        for parent in path.parents:
            if parent.exists() or parent.is_symlink():
                if not parent.is_dir():
                    raise OutputError(f"{option} {path}: {parent} is a file, not a folder; choose another {option}")
                break
        if path.is_dir():
            raise OutputError(f"{path} is a folder, but {out.what} goes there; move it away or choose another "
                              f"{option}")
        if (path.exists() or path.is_symlink()) and not force and not out.ours(path):
            why = not_ours.format(what=out.what)
            raise OutputError(f"{path} exists and {why}: slimkit will not replace it; move it away, choose another "
                              f"{option}, or pass --force to replace it")

"""One exception family: the CLI prints these as a single line and exits non-zero."""

from __future__ import annotations

import errno
import re


class SlimkitError(ValueError):
    """A user-facing error; its message names the problem and the fix, in one line."""


class RegistryError(SlimkitError):
    """Unknown architecture name or unsupported argument."""


class PlanError(SlimkitError):
    """A ChannelPlan file that cannot be read or does not fit its architecture."""


class BudgetError(SlimkitError):
    """A budget string that cannot be parsed or cannot be met."""


# What an OSError's text says when a library wrapped it into its own exception (torch.save reports a
# full disk as a RuntimeError; torch.onnx.export wraps it into an export error).
_OS_ERROR_TEXTS = ((errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system"),
                   (errno.EDQUOT, "Disk quota exceeded"))


_TORCH_WRITE_TEXTS = re.compile(r"PytorchStreamWriter failed writing file|basic_ios::clear: iostream error|"
                                r"unexpected pos \d+ vs \d+")


def os_error_in(exc: BaseException | None) -> OSError | None:
    """The OSError behind ``exc`` (itself, its cause chain, or its text), or None: a full disk must be
    reported as a full disk, not as whatever the library that hit it was doing."""
    for _ in range(10):
        if exc is None:
            return None
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        text = str(exc)
        for code, name in _OS_ERROR_TEXTS:
            if name in text:
                return OSError(code, name)
        # torch.save keeps no errno: a short write says "failed writing file", a full disk met while
        # closing the archive "basic_ios::clear: iostream error" then "unexpected pos N vs M"
        if _TORCH_WRITE_TEXTS.search(text):
            return OSError(errno.EIO, "torch.save could not write the file")
        # `raise ... from None` says the error it replaced is beside the point: do not read it
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return None

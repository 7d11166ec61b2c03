"""Export backends for thin networks (installed as ``slimkit.exporters``).

Every backend implements one function with the same shape::

    export(model, input_size, out, *, batch=1, metadata=None, **options) -> ExportResult

and writes ``out`` atomically (a temp file renamed into place only after every check passed), so a
failed export never leaves a partial file. ONNX is the first backend; others register in
``BACKENDS``.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slimkit.errors import SlimkitError
from slimkit.files import Output

__all__ = ["ExportError", "ExportResult", "BACKENDS", "get_exporter", "METADATA_MARK", "onnx_output",
           "is_slimkit_onnx"]

METADATA_MARK = "slimkit.version"  # the metadata key every file slimkit exports carries


class ExportError(SlimkitError):
    """The model cannot be exported, or the exported file does not match PyTorch."""


@dataclass
class ExportResult:
    path: Path
    backend: str
    size_bytes: int
    export_seconds: float
    details: dict[str, Any] = field(default_factory=dict)  # backend-specific facts (nodes, opset, parity)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


# name -> "module:function"; imported lazily so `import slimkit` stays light.
BACKENDS = {"onnx": "slimkit.exporters.onnx:export"}


def get_exporter(name: str):
    if name not in BACKENDS:
        raise ExportError(f"unknown export backend '{name}': choose one of {', '.join(BACKENDS)}")
    module, func = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), func)


def is_slimkit_onnx(path: Path) -> bool:
    """An ONNX file slimkit exported: its metadata holds :data:`METADATA_MARK` (protobuf stores the key
    as plain bytes, so a scan finds it without parsing a possibly huge or foreign file)."""
    needle, tail = METADATA_MARK.encode(), b""
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                if needle in tail + chunk:
                    return True
                tail = chunk[-len(needle):]
    except OSError:
        return False
    return False


def onnx_output(path: str | Path, what: str = "the ONNX file") -> Output:
    """An ONNX file about to be written: one already there may be replaced when slimkit exported it."""
    return Output(Path(path), what, is_slimkit_onnx)

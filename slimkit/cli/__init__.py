"""The ``slimkit`` command: a thin Typer layer over the Python API, one module per command."""

from __future__ import annotations

import os
import signal
from typing import Annotated

import typer

from slimkit.cli import bench as _bench
from slimkit.cli import export as _export
from slimkit.cli import info as _info
from slimkit.cli import prune as _prune
from slimkit.cli import run as _run
from slimkit.cli import train as _train
from slimkit.cli._common import SlimkitCommand, SlimkitGroup, survive_closed_output
from slimkit.version import __version__

app = typer.Typer(
    name="slimkit",
    help=("Prune a timm, torchvision or your own model (classifier, detector, segmenter) to a FLOPs, "
          "parameter or measured-latency budget; train it from scratch or fine-tune a trained parent; "
          "export verified ONNX."),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=SlimkitGroup,
)


def _version(value: bool) -> None:
    if value:
        import torch  # torch's version only: already loaded by the commands, no cost here

        typer.echo(f"slimkit {__version__} (torch {torch.__version__})")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Prune a model to a FLOPs, parameter or measured-latency budget, train it, export it."""


for _name, _fn in (("models", _info.models), ("info", _info.info), ("prune", _prune.prune), ("train", _train.train),
                  ("export", _export.export), ("bench", _bench.bench), ("run", _run.run)):
    app.command(_name, cls=SlimkitCommand)(_fn)


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (kill, a CI timeout, torchrun stopping its workers) unwinds like Ctrl-C: every
    ``finally`` runs, so temporary files and folders are removed and locks released."""
    os.write(2, b"terminated\n")
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    survive_closed_output()
    app()

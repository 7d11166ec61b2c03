"""`slimkit info` over every timm and torchvision classification model: each one answers with its
costs or with one line saying what is not supported, never with a traceback (torch's logged ones
included). The whole zoo is slow (hours on 2 cores); a sample of models that once crashed runs by
default.

Each slow case records what it printed (``record_property``, so ``--junitxml=FILE`` keeps it) and,
with ``SLIMKIT_ZOO_LOG=FILE``, appends it to FILE as one JSON line as soon as it ends (a long run
keeps what it did when stopped): docs/zoo.md lists the models that cannot be pruned from such a run.
"""

from __future__ import annotations

import json
import os
import time

import timm
import torchvision
import pytest
from typer.testing import CliRunner

from slimkit.cli import app

SIDE = 64  # small enough for the whole zoo; models built for one size are rebuilt at it

# Models whose `info` once ended in a traceback: a class token expanded under no_grad (the MACs
# counter's module tracker asserted), a module shared under two names (the graph's KeyError), a
# thinned copy failing in a reshape (now frozen, so it prunes).
FAST_SAMPLE = ["timm:pit_ti_224", "timm:coat_lite_tiny", "slimkit:resnet20", "torchvision:squeezenet1_0"]


def classification_models() -> list[str]:
    return ([f"torchvision:{n}" for n in torchvision.models.list_models(module=torchvision.models)]
            + [f"timm:{n}" for n in timm.list_models()])


def run_info(arch: str, capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and everything printed (stdout, stderr and torch's log handlers) by ``slimkit info``."""
    result = CliRunner().invoke(app, ["info", arch, "--input-size", str(SIDE)])
    captured = capfd.readouterr()
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{arch}: {type(result.exception).__name__}: {result.exception}") from result.exception
    text = result.output + captured.out + captured.err
    assert "Traceback" not in text, f"{arch} printed a traceback:\n{text[-3000:]}"
    assert result.exit_code in (0, 2), (arch, result.exit_code, text[-500:])
    if result.exit_code:
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), f"{arch}: not one error line:\n{text[-2000:]}"
    return result.exit_code, text


@pytest.mark.parametrize("arch", FAST_SAMPLE)
def test_info_on_models_that_once_crashed(arch, capfd):
    code, text = run_info(arch, capfd)
    assert code == 0, text
    assert "MACs" in text


@pytest.mark.slow
@pytest.mark.parametrize("arch", classification_models())
def test_info_over_the_zoo_never_ends_in_a_traceback(arch, capfd, record_property):
    start, row = time.perf_counter(), {"arch": arch}
    try:
        code, text = run_info(arch, capfd)
        first = next((ln for ln in text.splitlines() if ln.strip()), "")
        row.update(exit_code=code, first_line=" ".join(first.split()))
    except AssertionError as exc:
        row.update(failed=" ".join(str(exc).split())[:400])
        raise
    finally:
        row["seconds"] = round(time.perf_counter() - start, 1)
        for key, value in row.items():
            record_property(key, value)
        if os.environ.get("SLIMKIT_ZOO_LOG"):
            with open(os.environ["SLIMKIT_ZOO_LOG"], "a") as log:
                log.write(json.dumps(row) + "\n")

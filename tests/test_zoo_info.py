"""`slimkit info` over every timm and torchvision classification model: each one answers with its
costs or with one line saying what is not supported, never with a traceback (torch's logged ones
included). The whole zoo is slow (hours on 2 cores); a sample of models that once crashed runs by
default.

Each slow case records what it printed (``record_property``), so a run with
``--junitxml=FILE`` keeps the reason every model gives: docs/zoo.md lists the ones that cannot be
pruned from such a run.
"""

from __future__ import annotations

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
    code, text = run_info(arch, capfd)
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    record_property("exit_code", code)
    record_property("first_line", " ".join(first.split()))

"""`slimkit info` over every timm and torchvision classification model: each one answers with its
costs or with one line saying what is not supported, never with a traceback (torch's logged ones
included). The whole zoo is slow (hours on 2 cores); a sample of models that once crashed runs by
default.

Each slow case records what it printed (``record_property``, so ``--junitxml=FILE`` keeps it) and,
with ``SLIMKIT_ZOO_LOG=FILE``, appends it to FILE as one JSON line as soon as it ends (a long run
keeps what it did when stopped, and a rerun with the same FILE skips the models it already holds,
so the sweep resumes across machines): docs/zoo.md lists the models that cannot be pruned from such
a run (the committed log: bench/results/zoo_info.jsonl).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import pytest
import timm
import torch
import torchvision
from torch import nn
from typer.testing import CliRunner

import slimkit
from slimkit import generator
from slimkit.cli import app
from slimkit.flops import count_flops
from slimkit.generator import channel_graph
from slimkit.graph import GraphError, analyze
from slimkit.models.cifar import BUILTIN_MODELS

SIDE = 64  # small enough for the whole zoo; models built for one size are rebuilt at it

# A sample that runs in seconds: a model whose `info` once ended in a traceback (PiT: a class token
# expanded under no_grad tripped the MACs counter's module tracker) and two plain CNNs. The other root
# causes (CoaT's shared modules, reshapes a thinned copy cannot run) are tested on tiny models below.
FAST_SAMPLE = ["timm:pit_ti_224", "torchvision:squeezenet1_0", "slimkit:resnet20"]
FAST_SIDE = 32


def classification_models() -> list[str]:
    return ([f"torchvision:{n}" for n in torchvision.models.list_models(module=torchvision.models)]
            + [f"timm:{n}" for n in timm.list_models()])


def run_info(arch: str, capfd: pytest.CaptureFixture[str], side: int = SIDE) -> tuple[int, str]:
    """Exit code and everything printed (stdout, stderr and torch's log handlers) by ``slimkit info``."""
    result = CliRunner().invoke(app, ["info", arch, "--input-size", str(side)])
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


def test_a_zoo_log_resumes_from_the_models_it_answered(tmp_path):
    log = tmp_path / "zoo.jsonl"
    assert logged_models(str(log)) == set()
    log.write_text('{"arch": "timm:a", "exit_code": 0}\n{"arch": "timm:b", "failed": "Traceback"}\n{"arch": "ti')
    assert logged_models(str(log)) == {"timm:a"}  # failures run again; a cut line is ignored


@pytest.mark.parametrize("arch", FAST_SAMPLE)
def test_info_on_models_that_once_crashed(arch, capfd):
    code, text = run_info(arch, capfd, FAST_SIDE)
    assert code == 0, text
    assert "MACs" in text


def logged_models(path: str | None) -> set[str]:
    """The models a zoo log already holds an answer for (a passing one: failures run again)."""
    if not path or not os.path.exists(path):
        return set()
    done = set()
    with open(path) as log:
        for line in log:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short when a run was killed
                continue
            if "failed" not in row:
                done.add(row["arch"])
    return done


@pytest.mark.slow
@pytest.mark.parametrize("arch", classification_models())
def test_info_over_the_zoo_never_ends_in_a_traceback(arch, capfd, record_property):
    if arch in logged_models(os.environ.get("SLIMKIT_ZOO_LOG")):
        pytest.skip("answered in SLIMKIT_ZOO_LOG already")
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


# ------------------------------------------------------------------ the root causes, on tiny models
class _Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, xs):
        x, cls = xs
        return self.fc(x), self.fc(cls)


class ClassTokenNet(nn.Module):
    """PiT's pattern: a class token expanded from a parameter and handed to a block inside a tuple."""

    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.embed = nn.Linear(4, 8)
        self.blocks = _Blocks()

    def forward(self, x):
        x = self.embed(x.flatten(2).transpose(1, 2))
        x, cls = self.blocks((x, self.cls_token.expand(x.shape[0], -1, -1)))
        return cls[:, 0]


def test_macs_of_a_class_token_handed_to_a_block_are_counted():
    model = ClassTokenNet()
    assert count_flops(model, (4, 2, 2)) == 4 * 4 * 8 + 4 * 8 * 8 + 8 * 8
    assert all(p.requires_grad for p in model.parameters())  # given back as it was


class SharedModuleNet(nn.Module):
    """CoaT's pattern: one module registered under two names (``pos`` and ``block.pos``)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.pos = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.block = nn.Module()
        self.block.pos = self.pos
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.block.pos(self.stem(x)).mean((2, 3)))


def test_a_module_shared_under_two_names_is_tracked_once():
    model = SharedModuleNet().eval()
    graph = analyze(model, (3, 4, 4))
    assert "block.pos.weight" not in graph.tensor_shapes and "pos.weight" in graph.tensor_shapes
    assert graph.count_flops() + 0 == count_flops(model, (3, 4, 4))


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(16, 48)

    def forward(self, x):
        B, N, C = x.shape  # the head width comes from the input, the head count is fixed: CoaT, XCiT
        q, k, v = self.qkv(x).reshape(B, N, 3, 4, C // 4).permute(2, 0, 3, 1, 4)
        return (q.softmax(-1) * v).transpose(1, 2).reshape(B, N, C)


class HeadsNet(nn.Module):
    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.stem1 = nn.Conv2d(3, 16, 1)
        self.stem2 = nn.Conv2d(16, 16, 1)
        self.attn = _Attention()
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.stem2(self.stem1(x).relu()).flatten(2).transpose(1, 2)
        return self.head(self.attn(x).mean(1))


def test_groups_a_thinned_copy_cannot_run_with_are_frozen(monkeypatch):
    monkeypatch.setitem(BUILTIN_MODELS, "heads_probe", HeadsNet)
    graph = channel_graph("slimkit:heads_probe", {}, (3, 4, 4))
    assert "stem1" in graph.groups and "stem2" not in graph.groups
    assert "G cannot resize attn (_Attention)" in graph.frozen["stem2"]
    plan = slimkit.prune("slimkit:heads_probe", "80%", method="uniform", input_size=(3, 4, 4), round_to=1)
    assert plan.widths["stem1"] < 16  # and prune's own check ran the thinned model and counted its MACs


class _ReducedAttention(nn.Module):
    """PVT-v2's spatial reduction: the reduced keys are reshaped to the block's width ``C``, read from the
    input, so a thinned ``sr`` fails in the norm after it, a module with no fault of its own."""

    def __init__(self):
        super().__init__()
        self.sr = nn.Conv2d(16, 16, 2, stride=2)
        self.norm = nn.LayerNorm(16)
        self.kv = nn.Linear(16, 16)

    def forward(self, x):
        B, C, H, W = x.shape
        keys = self.kv(self.norm(self.sr(x).reshape(B, C, -1).transpose(1, 2)))
        return x + keys.mean(1)[:, :, None, None]


class ReducedAttentionNet(nn.Module):
    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 1)
        self.attn = _ReducedAttention()
        self.mlp = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU(), nn.Conv2d(32, 16, 1))
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.attn(self.stem(x))
        return self.head((x + self.mlp(x)).mean((2, 3)))


def test_a_width_read_by_the_enclosing_module_freezes_its_groups(monkeypatch):
    monkeypatch.setitem(BUILTIN_MODELS, "reduced_probe", ReducedAttentionNet)
    # 3x5 keys: the probe's thinned widths reshape without error, so the failure shows in the norm
    graph = channel_graph("slimkit:reduced_probe", {}, (3, 6, 10))
    assert "stem" in graph.frozen and "G cannot resize attn (_ReducedAttention, failed in attn.norm)" in " ".join(
        graph.frozen["stem"].split())
    assert "mlp.0" in graph.groups  # what the failure did not touch still prunes
    plan = slimkit.prune("slimkit:reduced_probe", "80%", method="uniform", input_size=(3, 6, 10), round_to=1)
    assert plan.widths["mlp.0"] < 32


class DeepReducedAttentionNet(ReducedAttentionNet):
    def __init__(self, num_classes: int = 4):
        super().__init__(num_classes)
        self.attn = nn.Sequential(*(_ReducedAttention() for _ in range(40)))  # PVT-v2-B5 has 52 blocks


@pytest.mark.slow  # about 40 rounds of building and running the model: a minute on a loaded 2-core machine
def test_a_deep_model_gets_a_round_for_every_block_that_breaks(monkeypatch):
    monkeypatch.setitem(BUILTIN_MODELS, "deep_reduced_probe", DeepReducedAttentionNet)
    graph = channel_graph("slimkit:deep_reduced_probe", {}, (3, 6, 10))
    assert all(f"attn.{i}.sr" in graph.frozen for i in range(40)) and "mlp.0" in graph.groups


def test_a_model_that_fails_in_its_own_code_is_one_line_naming_the_module(monkeypatch):
    class Broken(nn.Module):
        def __init__(self, num_classes: int = 4):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 1), _Attention())

        def forward(self, x):
            return self.body(x)

    monkeypatch.setitem(BUILTIN_MODELS, "broken_probe", Broken)
    result = CliRunner().invoke(app, ["info", "slimkit:broken_probe", "--input-size", "4"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "module 'body.1' (_Attention)" in " ".join(result.output.split())


class _BlockCheck(nn.Module):
    """HaloAttn's pattern: a size check with no message. (A bare ``assert`` here would get a message
    from pytest's assertion rewriting; outside tests it takes the same path.)"""

    def forward(self, x):
        torch._assert(x.shape[-1] % 7 == 0, "")
        return x


def test_a_check_without_a_message_is_shown_as_the_statement_that_failed(monkeypatch):
    """timm's HaloAttn and BAT said only 'AssertionError:' at a size they cannot take."""
    class Checked(nn.Module):
        def __init__(self, num_classes: int = 4):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 1), _BlockCheck())
            self.head = nn.Linear(8, num_classes)

        def forward(self, x):
            return self.head(self.body(x).mean((2, 3)))

    monkeypatch.setitem(BUILTIN_MODELS, "checked_probe", Checked)
    result = CliRunner().invoke(app, ["info", "slimkit:checked_probe", "--input-size", "16"])
    line = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "(_BlockCheck): AssertionError: torch._assert(x.shape[-1] % 7 == 0, \"\") failed" in line, line
    assert "a larger --input-size" in line, line


def test_torch_logged_tracebacks_do_not_reach_the_terminal(monkeypatch, capfd):
    """A failed trace logs whole tracebacks through torch's loggers (fake-tensor `E...` lines) before it
    raises: the user sees slimkit's one line only."""
    def failing_export(*args, **kwargs):
        logging.getLogger("torch._subclasses.fake_tensor").error("Traceback (most recent call last): fake")
        raise RuntimeError("data-dependent shape")

    handler = logging.StreamHandler(sys.stderr)  # torch's own handler writes to stderr the same way
    logging.getLogger("torch").addHandler(handler)
    monkeypatch.setattr(torch.export, "export", failing_export)
    try:
        with pytest.raises(GraphError, match="data-dependent shape"):
            analyze(nn.Conv2d(3, 4, 1), (3, 4, 4))
    finally:
        logging.getLogger("torch").removeHandler(handler)
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out



def test_a_model_whose_weights_cannot_fit_is_one_line_before_it_is_built(monkeypatch):
    """timm's billion-parameter models on a small machine: refused from their shapes alone, before the
    kernel kills the process (a 1B-parameter model killed the zoo sweep at 17 GB)."""
    weights = generator.weights_bytes("slimkit:resnet20")
    assert weights == 4 * sum(p.numel() for p in generator.build_model("slimkit:resnet20").parameters())
    monkeypatch.setattr(generator, "available_memory_bytes", lambda: weights)  # less than two copies
    monkeypatch.setattr(generator, "_MEMORY_CHECKED", set())  # checked once per model and process
    result = CliRunner().invoke(app, ["info", "slimkit:resnet20", "--input-size", "8"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "use a machine with more memory" in " ".join(result.output.split()), result.output


def test_a_single_layer_too_large_to_allocate_is_counted_not_built(tmp_path, monkeypatch):
    """A user's factory asked for width=100000 builds one 360 GB conv: even moving each parameter to
    the meta device as it is registered allocates it first. The model is counted wholly on meta, so the
    answer is the memory line, not 'can't allocate memory' from inside the factory."""
    (tmp_path / "nets.py").write_text(
        "from torch import nn\n"
        "def build(width=8, num_classes=10):\n"
        "    return nn.Sequential(nn.Conv2d(3, width, 3), nn.Conv2d(width, width, 3), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(width, num_classes))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(generator, "_MEMORY_CHECKED", set())
    assert generator.weights_bytes("python:nets.py:build", {"width": 100_000}) == 4 * (
        100_000 * 3 * 9 + 100_000 + 100_000 ** 2 * 9 + 100_000 + 100_000 * 10 + 10)
    result = CliRunner().invoke(app, ["info", "python:nets.py:build", "--arch-kwargs", '{"width": 100000}'])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    text = " ".join(result.output.split())
    assert "weights take 335.3 GiB" in text and "--arch-kwargs" in text, text



def test_a_memory_refusal_names_the_share_it_compared_against(monkeypatch):
    """'needs about 13.7 GiB, more than the 15.9 GiB free here' read as nonsense: slimkit compares
    against 80% of what is free, and the line now says so."""
    monkeypatch.setattr(generator, "available_memory_bytes", lambda: 16 * 2**30)
    monkeypatch.setattr(generator, "weights_bytes", lambda arch, kwargs=None: int(6.9 * 2**30))
    with pytest.raises(slimkit.PlanError) as info:
        generator.check_weights_memory("timm:vit_gigantic_patch14_224")
    assert "needs about 13.8 GiB, more than the 12.8 GiB slimkit uses here (80% of the 16.0 GiB free)" in \
        str(info.value), str(info.value)

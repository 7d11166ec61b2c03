"""Channels split into fixed pieces: each piece becomes a group (or pieces are tied), G rewrites
the split sizes stored on modules, and what cannot be rewritten is frozen with the op and why."""

import pytest
import torch
from torch import nn

from slimkit.budget import min_widths
from slimkit.generator import resize_model
from slimkit.graph import analyze


class MixedKernels(nn.Module):
    """timm MixedConv2d-style: a stored list of split sizes, one conv per piece."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 1)
        self.splits = [8, 16]
        self.convs = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(16, 16, 5, padding=2, groups=16)])
        self.width = 12  # Res2Net-style: an int split size, pieces of equal width
        self.mix = nn.Conv2d(24, 24, 1)
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([c(p) for c, p in zip(self.convs, torch.split(x, self.splits, 1))], 1)
        a, b = torch.split(self.mix(x), self.width, 1)
        y = torch.cat([a + b, b], 1)
        lo, hi = y.chunk(2, dim=1)  # a chunk count follows any width: nothing stored
        return self.head(torch.cat([hi, lo], 1).mean((2, 3)))


class LocalSplit(nn.Module):
    """Split sizes computed inside forward from a constant: nothing to rewrite, so it freezes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 1)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = [6, 10]
        p, q = torch.split(self.stem(x), sizes, 1)
        return self.head(torch.cat([q, p], 1).mean((2, 3)))


def test_stored_split_sizes_become_groups_and_g_rewrites_them():
    model = MixedKernels()
    graph = analyze(model, (3, 8, 8))
    assert graph.frozen == {"head": "network output"}
    assert {s.attr for s in graph.stored_sizes} == {"splits", "width"}
    assert "stem[0:8]" in graph.groups and "stem[8:24]" in graph.groups  # one group per piece
    widths = {name: max(1, g.width // 2 - 1) for name, g in graph.groups.items()}
    thin = resize_model(MixedKernels(), graph, widths)
    assert thin.splits == [widths["stem[0:8]"], widths["stem[8:24]"]]
    assert thin.width == thin.mix.out_channels // 2  # equal pieces stay equal
    out = thin(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 5)
    assert graph.count_flops(widths) < graph.count_flops()


def test_unrewritable_split_freezes_and_names_the_op():
    graph = analyze(LocalSplit(), (3, 8, 8))
    assert not graph.groups
    reason = graph.frozen["stem"]
    assert "split_with_sizes at" in reason and "sizes = " not in reason
    assert "not a stored attribute" in reason and "torch.split(self.stem(x), sizes, 1)" in reason


def test_mixnet_splits_are_prunable_at_tiny_input():
    """timm's mixnet_s: mixed-kernel convs used to freeze; now only the logits are frozen and the
    thinnest model is a small fraction of the full one."""
    timm = pytest.importorskip("timm")
    model = timm.create_model("mixnet_s", num_classes=10)
    graph = analyze(model, (3, 32, 32))
    assert list(graph.frozen) == ["classifier"]
    assert len(graph.stored_sizes) >= 20
    assert graph.count_flops(min_widths(graph, 8)) < 0.2 * graph.count_flops()
    widths = {n: w for n, w in min_widths(graph, 8).items()}
    thin = resize_model(timm.create_model("mixnet_s", num_classes=10), graph, widths)
    assert thin.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_info_groups_lists_the_split_sizes_g_rewrites():
    from typer.testing import CliRunner

    from slimkit.cli import app

    r = CliRunner().invoke(app, ["info", "timm:cspresnet50", "--input-size", "32", "--groups"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "G rewrites stages.0.expand_chs = 256" in r.output and "x.split(self.expand_chs // 2" in r.output
    assert "1 frozen" in r.output and "network output" in r.output

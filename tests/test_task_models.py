"""torchvision's detection and segmentation models by name: resolved, built without downloads, traced
through their dense core, pruned with the task's outputs frozen, rebuilt by G and run."""

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import slimkit
from slimkit import registry
from slimkit.errors import SlimkitError
from slimkit.flops import count_flops
from slimkit.generator import channel_graph
from slimkit.models.tasks import DenseDetectionCore


def test_task_models_resolve_with_their_deployment_input():
    assert registry.resolve("ssdlite320_mobilenet_v3_large").canonical == "torchvision:ssdlite320_mobilenet_v3_large"
    assert registry.torchvision_task("lraspp_mobilenet_v3_large") == "segmentation"
    assert registry.torchvision_task("fcos_resnet50_fpn") == "detection"
    assert registry.torchvision_task("resnet50") == "classification"
    assert registry.default_input_size("lraspp_mobilenet_v3_large") == (3, 520, 520)
    assert registry.default_input_size("ssdlite320_mobilenet_v3_large") == (3, 320, 320)
    assert registry.default_input_size("resnet50") == (3, 224, 224)


def test_a_detector_learning_gates_on_classification_data_is_refused_in_one_line():
    with pytest.raises(SlimkitError, match="is a detection model: it learns gates on --data shapes"):
        slimkit.prune("ssdlite320_mobilenet_v3_large", "50%", gates=slimkit.GateOptions(data="cifar10"))
    # the classifiers' default data named outright too: it learned on shapes without a word
    with pytest.raises(SlimkitError, match="not fashion-mnist"):
        slimkit.prune("ssdlite320_mobilenet_v3_large", "50%", input_size=(3, 64, 64), num_classes=4, round_to=8,
                      gates=slimkit.GateOptions(data="fashion-mnist", steps=1, batch_size=2), latency=None)


def test_frozen_batchnorm_is_resized_like_batchnorm():
    def build():
        return nn.Sequential(nn.Conv2d(3, 32, 3, bias=False), FrozenBatchNorm2d(32), nn.ReLU(),
                             nn.Conv2d(32, 32, 3, bias=False), FrozenBatchNorm2d(32), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    plan = slimkit.prune(build, "50%", method="uniform", input_size=(3, 16, 16), round_to=1)
    assert set(plan.widths) == {"0", "3"} and all(w < 32 for w in plan.widths.values())
    thin = slimkit.generate(plan)
    for i in (1, 4):
        bn = thin[i]
        w = plan.widths["0" if i == 1 else "3"]
        assert all(getattr(bn, b).shape == (w,) for b in ("weight", "bias", "running_mean", "running_var"))
        assert torch.all(bn.weight == 1) and torch.all(bn.running_var == 1)
    assert thin(torch.rand(2, 3, 16, 16)).shape == (2, 10)
    assert count_flops(thin, (3, 16, 16)) == plan.flops


@pytest.mark.slow
@pytest.mark.parametrize("name, side", [("ssdlite320_mobilenet_v3_large", 96), ("lraspp_mobilenet_v3_large", 64)])
def test_a_task_model_prunes_regenerates_and_runs(name, side):
    plan = slimkit.prune(name, "50%", method="uniform", input_size=(3, side, side))
    assert abs(plan.flops / plan.search["full_flops"] - 0.5) <= 0.01
    graph = channel_graph(plan.arch, plan.arch_kwargs, tuple(plan.input_size))
    thin = slimkit.generate(plan).eval()
    with torch.no_grad():
        if registry.torchvision_task(name) == "detection":
            # the class and box outputs are frozen: the task fixes them
            assert any(k.startswith("head.classification_head") for k in graph.frozen)
            assert any(k.startswith("head.regression_head") for k in graph.frozen)
            assert count_flops(DenseDetectionCore(thin), (3, side, side)) == plan.flops
            out = thin([torch.rand(3, side, side)])
            assert set(out[0]) == {"boxes", "scores", "labels"}
        else:
            assert count_flops(thin, (3, side, side)) == plan.flops
            assert thin(torch.rand(1, 3, side, side))["out"].shape == (1, 21, side, side)


def test_counting_a_detectors_core_leaves_the_detector_in_its_mode():
    detector = registry.create_model("ssdlite320_mobilenet_v3_large").eval()
    count_flops(registry.traced_part(detector), (3, 64, 64))
    assert not any(m.training for m in detector.modules())


class _ScaledL2Norm(nn.Module):
    """SSD300's conv4_3 path: conv, then F.normalize over channels times a learned per-channel scale."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3)
        self.scale_weight = nn.Parameter(torch.full((32,), 20.0))
        self.head = nn.Conv2d(32, 8, 1)

    def forward(self, x):
        x = self.conv(x)
        return self.head(self.scale_weight.view(1, -1, 1, 1) * nn.functional.normalize(x))


def test_a_norm_over_channels_keeps_them_prunable():
    # the norm reduces the channels away and divides back by broadcasting: any width works
    plan = slimkit.prune(_ScaledL2Norm, "50%", method="uniform", input_size=(3, 12, 12), round_to=1)
    graph = channel_graph(plan.arch, plan.arch_kwargs, (3, 12, 12))
    assert "conv" in graph.groups and "conv" not in graph.frozen
    thin = slimkit.generate(plan)
    w = plan.widths["conv"]
    assert w < 32 and thin.scale_weight.shape == (w,)
    assert thin(torch.rand(1, 3, 12, 12)).shape == (1, 8, 10, 10)

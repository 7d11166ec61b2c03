"""onnxruntime profiles put into categories: depthwise / pointwise / other conv, layout reorders,
quantize/dequantize; fp32 MACs counted from the profiled shapes; int8 kernels matched back by name."""

import pytest
import torch
from torch import nn

from slimkit.exporters.int8 import QuantizeSettings, quantize_for_timing
from slimkit.exporters.onnx import export
from slimkit.ort_profile import classify_node, compare_profiles, profile, source_conv_shapes, summarize_profile


class _DwPw(nn.Module):
    """stem 3x3 conv, depthwise 3x3, pointwise 1x1, pooled linear head: one node of each kind."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.pw = nn.Conv2d(width, 2 * width, 1)
        self.head = nn.Linear(2 * width, 10)

    def forward(self, x):
        x = torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.stem(x))))))
        return self.head(x.mean((2, 3)))


def _f(shape):
    return {"float": list(shape)}


def test_classify_node_from_profiled_shapes():
    conv = lambda w, x, y: classify_node("Conv", "n_kernel_time", [_f(x), _f(w)], [_f(y)], {})  # noqa: E731
    assert conv([24, 1, 3, 3], [1, 24, 112, 112], [1, 24, 112, 112]) == ("depthwise conv", 24 * 112 * 112 * 9)
    assert conv([48, 24, 1, 1], [1, 24, 112, 112], [1, 48, 112, 112]) == ("pointwise conv", 48 * 112 * 112 * 24)
    assert conv([24, 3, 3, 3], [1, 3, 224, 224], [1, 24, 112, 112])[0] == "other conv"
    assert conv([4, 1, 3, 3], [1, 1, 8, 8], [1, 4, 8, 8])[0] == "other conv"  # one input channel: a dense conv
    assert classify_node("ReorderInput", "r", [], [], {})[0] == "layout reorder"
    assert classify_node("DequantizeLinear", "d", [], [], {})[0] == "quantize/dequantize"
    # int8 kernels hide their weights: found by the source node's name
    convs = {"node_Conv_7": ([32, 1, 3, 3], 32)}
    assert classify_node("QLinearConv", "node_Conv_7_token_3_kernel_time", [], [], convs)[0] == "depthwise conv"
    assert classify_node("QLinearConv", "unknown_kernel_time", [], [], convs)[0] == "other conv"


def test_summary_takes_each_nodes_fastest_run_after_warmup():
    ev = lambda name, dur: {"cat": "Node", "name": f"{name}_kernel_time", "dur": dur,  # noqa: E731
                            "args": {"op_name": "ReorderOutput"}}
    events = [ev("a", 1000), ev("a", 10), ev("a", 12), ev("a", 500), ev("b", 5), ev("b", 5), ev("b", 5), ev("b", 5),
              {"cat": "Session", "name": "model_run", "dur": 99999}]
    s = summarize_profile(events, {}, runs=3, warmup=1)
    assert s["categories"]["layout reorder"]["us"] == 10 + 5 and s["total_us"] == 15  # fastest run, warm-up dropped
    assert s["slowest"][0]["node"] == "a"


def test_profile_of_a_real_file_fp32_and_int8(tmp_path):
    model = _DwPw().eval()
    fp32 = tmp_path / "m.onnx"
    export(model, (3, 16, 16), fp32, exporter="torchscript")
    int8 = quantize_for_timing(fp32, (3, 16, 16), tmp_path / "m.int8.onnx", settings=QuantizeSettings(activation_type="int8"))
    assert {w[1] for w, _ in source_conv_shapes(int8).values()} == {3, 1, 16}  # stem, depthwise, pointwise
    profs = profile({"fp32": fp32, "int8": int8}, (1, 3, 16, 16), threads=1, runs=3)
    f, q = profs["fp32"]["categories"], profs["int8"]["categories"]
    for cats in (f, q):
        assert cats["depthwise conv"]["nodes"] == 1 and cats["pointwise conv"]["nodes"] == 1
        assert cats["other conv"]["nodes"] == 1 and cats["depthwise conv"]["us"] > 0
    assert f["depthwise conv"]["macs"] == 16 * 16 * 16 * 9 and f["pointwise conv"]["macs"] == 32 * 16 * 16 * 16
    assert q["quantize/dequantize"]["nodes"] >= 1
    rows = {r["category"]: r for r in compare_profiles(profs["int8"], profs["fp32"], profs["fp32"], profs["fp32"])}
    assert rows["pointwise conv"]["mac_ratio"] == 1.0 and rows["pointwise conv"]["time_ratio"] > 0


def test_profile_in_served_mode_profiles_every_file_as_measure_times_it(tmp_path):
    fp32 = tmp_path / "m.onnx"
    export(_DwPw().eval(), (3, 16, 16), fp32, exporter="torchscript")
    profs = profile({"full": fp32, "same": fp32}, (1, 3, 16, 16), threads=1, runs=3, mode="served")
    for name in ("full", "same"):
        cats = profs[name]["categories"]
        assert cats["pointwise conv"]["nodes"] == 1 and cats["pointwise conv"]["us"] > 0
    with pytest.raises(ValueError, match="timing mode"):
        profile({"full": fp32}, (1, 3, 16, 16), threads=1, runs=3, mode="spinning")

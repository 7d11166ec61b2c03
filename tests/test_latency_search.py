"""Latency budgets: the secant search on a known latency curve, then for real on onnxruntime."""

import json

import pytest
from typer.testing import CliRunner

from slimkit.budget import Budget, parse_budget, search_uniform
from slimkit.cli import app
from slimkit.errors import BudgetError
from slimkit.exporters.int8 import QuantizeSettings
from slimkit.generator import channel_graph
from slimkit.latency_search import LatencyMeter, Measurement, search_latency
from slimkit.plan import ChannelPlan

runner = CliRunner()


class CurveMeter(LatencyMeter):
    """A meter whose 'measurements' follow a fixed latency curve: tests the search, not the machine."""

    def __init__(self, graph, curve, round_to=1):
        self.graph, self.curve = graph, curve
        self.template = ChannelPlan(arch="slimkit:resnet20", input_size=[3, 32, 32], groups={}, round_to=round_to)
        self.backend, self.threads, self.batch, self.runs, self.device_text = "fake", 1, 1, 40, "curve"
        self.precision, self.mode = "fp32", "served"
        self._cache = {}
        self.full_flops = graph.count_flops()

    def measure(self, widths, runs=None):
        key = tuple(sorted(widths.items()))
        r = self.curve(self.graph.count_flops(widths) / self.full_flops)
        self._cache[key] = Measurement(r, (r * 0.99, r * 1.01), r * 10, 10.0, runs or 40, {})
        return self._cache[key]


@pytest.fixture(scope="module")
def graph():
    return channel_graph("resnet20", {"num_classes": 10}, (3, 32, 32))


def _plan_at(graph):
    full = graph.count_flops()
    return lambda f: search_uniform(graph, Budget("flops", "x", round(f * full)), round_to=1, tolerance=0.05).widths


@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
def test_search_finds_the_budget_on_a_nonlinear_curve(graph, target):
    meter = CurveMeter(graph, lambda f: 0.15 + 0.85 * f ** 1.5)  # fixed overhead + superlinear
    res = search_latency(meter, Budget("latency", f"{target:.0%}", None, target), _plan_at(graph))
    assert abs(res.measurement.ratio - target) <= 0.05 * target
    assert res.measured_plans <= 8  # a handful of builds, not a 40-step bisection


def test_budget_in_milliseconds_uses_the_measured_full_model(graph):
    meter = CurveMeter(graph, lambda f: 0.1 + 0.9 * f)  # full model: 10 ms
    res = search_latency(meter, parse_budget("4ms", "latency"), _plan_at(graph))
    assert res.target_ratio == pytest.approx(0.4)
    assert abs(res.measurement.ratio * 10 - 4) <= 0.2


def test_unreachable_budgets_name_the_achievable_range(graph):
    meter = CurveMeter(graph, lambda f: 0.2 + 0.8 * f)
    with pytest.raises(BudgetError, match=r"below the smallest model.*achievable here: 2\.\d+-10\.000 ms"):
        search_latency(meter, parse_budget("1ms", "latency"), _plan_at(graph))
    with pytest.raises(BudgetError, match="at or above the full model"):
        search_latency(meter, parse_budget("12ms", "latency"), _plan_at(graph))


def test_cli_latency_budget_on_onnxruntime(tmp_path):
    """For real: resnet20 on ORT CPU at 60% of the full model's latency (loose tolerance: CI is noisy;
    --round-to 1 because multiples of 8 leave resnet20's 16/32/64-wide groups only a few widths)."""
    out = tmp_path / "lat.json"
    r = runner.invoke(app, ["prune", "resnet20", "--latency", "60%", "--method", "uniform", "--num-classes", "10",
                            "--round-to", "1", "--threads", "1", "--tolerance", "0.15", "-o", str(out), "--no-plot"])
    assert r.exit_code == 0, r.output
    plan = json.loads(out.read_text())
    lat = plan["latency"]
    assert plan["budget"]["kind"] == "latency" and plan["budget"]["fraction"] == 0.6
    assert lat["measured"] and lat["backend"] == "ort-cpu" and lat["threads"] == 1 and lat["batch"] == 1
    assert abs(lat["ratio_to_full"] - 0.6) <= 0.15 * 0.6
    assert plan["search"]["latency_search"]["measured_plans"] >= 2 and plan["flops"] < plan["search"]["full_flops"]
    assert "latency" in r.output and "x the full" in r.output


def test_cli_int8_latency_budget_times_quantized_candidates(tmp_path):
    """--precision int8: every candidate and the full model are timed as onnxruntime-quantized files
    (QuantizeLinear in the graph), and the plan records the precision and the settings."""
    import onnx

    out = tmp_path / "lat8.json"
    # 85%: int8's fixed per-op overhead keeps the thinnest ResNet-20 at 0.55-0.76x the full model's
    # time on a 2-core CPU, so a 60% budget was sometimes unbuildable (a timing flake, not a bug)
    r = runner.invoke(app, ["prune", "resnet20", "--latency", "85%", "--precision", "int8", "--method", "uniform",
                            "--num-classes", "10", "--round-to", "1", "--threads", "1", "--tolerance", "0.2",
                            "-o", str(out), "--no-plot"])
    assert r.exit_code == 0, r.output
    lat = json.loads(out.read_text())["latency"]
    q = lat["quantization"]  # the configuration ranked fastest on this machine, and the ranking's summary
    ran = QuantizeSettings(quant_format=q["format"], activation_type=q["activation_type"], weight_type=q["weight_type"],
                           per_channel=q["per_channel"], reduce_range=q["reduce_range"])
    assert lat["precision"] == "int8" and q["chosen"].startswith(ran.label + " (")
    assert abs(lat["ratio_to_full"] - 0.85) <= 0.2 * 0.85
    assert "(int8)" in r.output
    graph = channel_graph("resnet20", {"num_classes": 10}, (3, 32, 32))
    template = ChannelPlan.from_widths("slimkit:resnet20", (3, 32, 32), {n: g.width for n, g in graph.groups.items()},
                                       arch_kwargs={"num_classes": 10})
    for batch in (1, 16):  # calibration feeds whole batches of a fixed-batch file: 16 > the 8 images it needs
        meter = LatencyMeter(template, graph, precision="int8", threads=1, batch=batch)
        try:
            ops = {n.op_type for n in onnx.load(str(meter.full.onnx_path)).graph.node}
            assert meter.full.onnx_path.name.endswith(".int8.onnx") and "QuantizeLinear" in ops
        finally:
            meter.close()


@pytest.mark.parametrize("args,needle", [
    (["--latency", "50%", "--precision", "fp16"], "unknown --precision 'fp16'"),
    (["--flops", "50%", "--precision", "int8", "--round-to", "8"], "drop --precision"),
    (["--latency", "50%", "--precision", "int8", "--backend", "torch"], "use --backend ort-cpu"),
    (["--latency", "150M"], "cannot read latency budget"),
    (["--flops", "8ms"], "not a FLOPs budget"),
    (["--latency", "50%", "--flops", "50%"], "exactly one budget"),
    (["--latency", "0.001ms", "--method", "uniform"], "achievable here"),
])
def test_cli_latency_errors(tmp_path, args, needle):
    r = runner.invoke(app, ["prune", "resnet20", *args, "-o", str(tmp_path / "p.json"), "--threads", "1"])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error:") or needle in r.output
    assert needle in r.output.replace("\n", " ") and "Traceback" not in r.output
    assert not (tmp_path / "p.json").exists()


def test_a_budget_inside_a_latency_step_takes_the_largest_plan_under_it(graph):
    """Kernels switch at some widths, so latency can jump past the budget between neighbouring plans
    (seen for MobileNet-V1 at 64 px on ORT: 0.47x -> 0.59x around a 0.50x budget). A budget is a
    ceiling: the largest plan measured under it is used, with a warning, not an error."""
    meter = CurveMeter(graph, lambda f: 0.3 if f < 0.55 else 0.8)
    said = []
    res = search_latency(meter, Budget("latency", "50%", None, 0.5), _plan_at(graph), log=said.append)
    assert res.selection == "largest under budget" and res.measurement.ratio == pytest.approx(0.3)
    assert graph.count_flops(res.widths) / meter.full_flops < 0.55
    assert any("steps over the budget" in s for s in said)


class DriftingMeter(CurveMeter):
    """The machine slows down after the first run: the full model reads 10 ms, then 20 ms."""

    def measure(self, widths, runs=None):
        full_ms = 10.0 if not self._cache else 20.0
        r = self.curve(self.graph.count_flops(widths) / self.full_flops)
        m = Measurement(r, (r * 0.99, r * 1.01), r * full_ms, full_ms, runs or 40, {"p90_ms": 0.0, "std_ms": 0.0})
        self._cache[tuple(sorted(widths.items()))] = m
        return m


def test_the_plans_latency_record_pairs_milliseconds_from_one_run(graph):
    """A plan's median_ms and full_median_ms came from two runs (the plan's last one, the full model's
    first): after drift they read 9.9 against 69 ms at a 0.50 ratio. Both now come from the plan's run;
    the budget in ms stays the one the first run fixed."""
    from slimkit.prune import _search_latency

    meter = DriftingMeter(graph, lambda f: 0.1 + 0.9 * f)
    _, _, latency = _search_latency(meter, graph, parse_budget("4ms", "latency"), None, 1, 1.0, 0.05, lambda m: None)
    assert latency["full_median_ms"] == 20.0
    assert latency["median_ms"] == pytest.approx(latency["ratio_to_full"] * 20.0, rel=1e-3)
    assert latency["budget_ms"] == pytest.approx(4.0)

"""``--round-to auto``: the measured choice of channel multiple, its cache, the documented fallback,
the ragged-widths warning, and prune's latency comparison with the uniform plan."""

import importlib
import json
import math

import pytest
from torch import nn
from typer.testing import CliRunner

import slimkit
from slimkit import latency, rounding
from slimkit.budget import Budget, search_cost_aware
from slimkit.cli import app
from slimkit.errors import SlimkitError
from slimkit.generator import channel_graph
from slimkit.layer_latency import layer_latency_per_mac
from slimkit.prune import LatencyOptions
from slimkit.recipe import parse_recipe

runner = CliRunner()


def test_choose_multiple_takes_the_finest_multiple_the_runtime_computes_at():
    def sweep(**eff):
        return {int(k[1:]): {"mac_ratio": 0.9, "time_ratio": 1.0, "efficiency": v} for k, v in eff.items()}
    # AVX-512-like: widths at odd multiples of 8 cost what the next multiple of 16 costs
    assert rounding.choose_multiple(sweep(m4=0.0, m8=0.05, m16=0.9, m32=1.0)) == 16
    # AVX2-like: 8 is a real granularity
    assert rounding.choose_multiple(sweep(m4=0.1, m8=0.8, m16=0.9, m32=1.1)) == 8
    # nothing efficient: the coarsest measured
    assert rounding.choose_multiple(sweep(m4=0.1, m8=0.2)) == 8
    with pytest.raises(SlimkitError):
        rounding.choose_multiple({})


def test_sweep_finds_the_block_size_of_a_fake_runtime():
    """A runtime whose kernels work in blocks of 16 channels: latency follows the MACs of the widths
    padded up to 16. Odd multiples of 8 then cost what the next multiple of 16 costs (efficiency 0),
    odd multiples of 16 save time in proportion to MACs (efficiency 1): the sweep must pick 16."""
    graph = channel_graph("resnet20", {"num_classes": 10}, (3, 32, 32))

    def padded_macs(widths):
        return graph.count_flops({n: min(graph.groups[n].width, math.ceil(w / 16) * 16) for n, w in widths.items()})

    sweep = rounding.sweep_multiples(graph, Budget("flops", "50%", graph.count_flops() // 2),
                                     lambda a, b: padded_macs(a) / padded_macs(b), candidates=(4, 8, 16))
    assert set(sweep) == {4, 8, 16}
    assert sweep[16]["efficiency"] == pytest.approx(1.0) and sweep[16]["mac_ratio"] < 1
    assert sweep[8]["efficiency"] == pytest.approx(0.0) and sweep[4]["efficiency"] == pytest.approx(0.0)
    assert rounding.choose_multiple(sweep) == 16


def test_a_coarser_multiple_wins_only_when_its_plan_runs_faster_per_mac_beyond_noise():
    def row(per_mac, high):
        return {"mac_ratio": 1.0, "time_ratio": per_mac, "per_mac": per_mac, "per_mac_high": high}
    assert rounding.choose_coarser(16, {}) == 16  # nothing coarser timed
    assert rounding.choose_coarser(16, {32: row(0.97, 0.99), 64: row(0.95, 0.98)}) == 64  # the fastest per MAC
    assert rounding.choose_coarser(16, {32: row(0.95, 0.98), 64: row(0.95, 0.97)}) == 32  # a tie: the finer
    assert rounding.choose_coarser(16, {32: row(0.985, 0.99)}) == 16  # faster, but by less than MIN_GAIN (2%)
    assert rounding.choose_coarser(16, {32: row(0.95, 1.01)}) == 16  # its interval reaches 1: noise
    assert rounding.choose_coarser(8, {16: row(1.04, 1.06)}) == 8  # slower


def test_coarser_multiples_are_timed_at_the_budget_against_the_granularity():
    """A fake runtime that computes at 16 channels but runs widths that are multiples of 64 8% faster per
    MAC (a kernel that likes wide blocks): the plan at 64 wins, the one at 32 (widths not all multiples of
    64) does not, and every plan compared lands at the budget."""
    graph = channel_graph("mobilenet_v1", {"num_classes": 10}, (3, 64, 64))
    budget = Budget("flops", "50%", graph.count_flops() // 2)
    full = graph.full_widths()

    def cost(widths):
        pruned = [w for n, w in widths.items() if w != full[n]]
        return graph.count_flops(widths) * (0.92 if all(w % 64 == 0 for w in pruned) else 1.0)

    seen = []

    def compare(widths, reference):
        seen.append((widths, reference))
        t = cost(widths) / cost(reference)
        return t, (t * 0.99, t * 1.01)

    coarser = rounding.time_coarser_multiples(graph, budget, 16, compare)
    assert set(coarser) == {32, 64}
    assert all(abs(graph.count_flops(w) - budget.value) / budget.value <= 0.01 for pair in seen for w in pair)
    assert coarser[64]["per_mac"] == pytest.approx(0.92) and coarser[32]["per_mac"] == pytest.approx(1.0)
    assert rounding.choose_coarser(16, coarser) == 64


def test_sweep_widths_are_odd_multiples_so_each_multiple_is_really_tested():
    graph = channel_graph("mobilenet_v1", {"num_classes": 10}, (3, 64, 64))
    full = graph.full_widths()
    half = {n: w // 2 for n, w in full.items()}  # 16, 32, 64, ...: multiples of 16 whatever m is
    for m in (8, 16):
        odd = rounding.odd_multiples(graph, half, m)
        moved = [n for n in odd if odd[n] != half[n]]
        assert moved and all(odd[n] % m == 0 and (odd[n] // m) % 2 == 1 for n in moved)
        assert all(odd[n] < full[n] for n in moved)


def test_round_to_accepts_auto_and_integers_only():
    assert rounding.parse_round_to("auto") == "auto" and rounding.parse_round_to("16") == 16
    for bad in ("fast", "8.5", True):
        with pytest.raises(SlimkitError, match="--round-to"):
            rounding.parse_round_to(bad)
    r = runner.invoke(app, ["prune", "resnet20", "--flops", "50%", "--method", "uniform", "--round-to", "x"])
    assert r.exit_code == 2 and r.output.startswith("error:") and "Traceback" not in r.output


def test_without_timing_auto_uses_the_documented_multiple():
    plan = slimkit.prune("resnet20", "50%", method="uniform", num_classes=10)
    assert plan.round_to == 8  # conftest pins this CPU's documented block to 8
    assert plan.search["rounding"]["how"] == "table" and "latency_check" not in plan.search
    # a GPU backend that cannot be timed here takes NVIDIA's documented multiple
    m, why = rounding.documented_multiple("ort-cuda", "int8")
    assert m == 16 and "int8" in why


def test_auto_measures_once_then_uses_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SLIMKIT_NO_TIMING", "0")
    monkeypatch.setenv("SLIMKIT_CACHE_DIR", str(tmp_path))
    logs = []
    opts = LatencyOptions(threads=1, check=False)
    plan = slimkit.prune("resnet20", "50%", method="uniform", num_classes=10, latency=opts, log=logs.append)
    rec = plan.search["rounding"]
    assert rec["how"] == "measured" and plan.round_to == rec["round_to"] in rounding.MULTIPLES
    assert set(rec["sweep"]) <= {str(m) for m in rounding.CANDIDATES} and len(rec["sweep"]) >= 2
    assert set(rec.get("coarser", {})) <= {str(m) for m in rounding.MULTIPLES if m > min(map(int, rec["sweep"]))}
    assert all({"mac_ratio", "time_ratio", "efficiency"} <= set(r) for r in rec["sweep"].values())
    assert all(w % plan.round_to == 0 or w == g["full"] for g in plan.groups.values() for w in [g["width"]])
    assert any("round-to" in line for line in logs)
    cache = json.loads((tmp_path / "round_to.json").read_text())
    assert len(cache["entries"]) == 1
    again = slimkit.prune("resnet20", "50%", method="uniform", num_classes=10, latency=opts)
    assert again.search["rounding"]["how"] == "cached" and again.round_to == plan.round_to



def test_a_users_factory_whose_code_changed_is_measured_again(monkeypatch, tmp_path):
    """The cache was keyed by the factory's name and arguments only: after nets.py's build_net was edited
    to build another network, `prune ./nets.py:build_net` reused the multiple measured on the old one."""
    monkeypatch.setenv("SLIMKIT_NO_TIMING", "0")
    monkeypatch.setenv("SLIMKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    from slimkit import generator
    from slimkit.models import user

    opts = LatencyOptions(threads=1, check=False)
    hows = []
    for width in (16, 24, 24):
        monkeypatch.setattr(user, "_FILE_MODULES", {})  # as a new `slimkit prune` process reads the file anew
        monkeypatch.setattr(generator, "_GRAPHS", {})
        (tmp_path / "nets.py").write_text(
            "from torch import nn\n"
            "def build_net(num_classes=10):\n"
            f"    return nn.Sequential(nn.Conv2d(3, {width}, 3, padding=1), nn.BatchNorm2d({width}), nn.ReLU(),\n"
            f"        nn.Conv2d({width}, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),\n"
            "        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))\n")
        plan = slimkit.prune("nets.py:build_net", "50%", method="uniform", input_size=(3, 16, 16), latency=opts,
                             tolerance=0.5)
        hows.append(plan.search["rounding"]["how"])
    assert hows == ["measured", "measured", "cached"], hows


def test_a_budget_with_no_width_to_time_takes_the_documented_multiple(monkeypatch, tmp_path):
    """At 100% nothing is pruned, so no multiple can be timed: the documented one is used and said,
    not 'no channel multiple could be measured' (exit 2 on `prune --flops 100%`), and nothing is cached."""
    monkeypatch.setenv("SLIMKIT_NO_TIMING", "0")
    monkeypatch.setenv("SLIMKIT_CACHE_DIR", str(tmp_path))
    plan = slimkit.prune("resnet20", "100%", method="uniform", num_classes=10,
                         latency=LatencyOptions(threads=1, check=False))
    rec = plan.search["rounding"]
    assert rec["how"] == "table" and plan.round_to == 8 and "no multiple could be timed at 100%" in rec["why"]
    assert not (tmp_path / rounding.CACHE_FILE).exists()


def test_a_budget_above_the_full_model_fails_before_any_multiple_is_timed(monkeypatch, tmp_path):
    """`prune --flops 150%` timed every channel multiple and cached a choice, then said the budget was above the
    largest model."""
    prune_module = importlib.import_module("slimkit.prune")  # the module: slimkit.prune is also the function
    monkeypatch.setenv("SLIMKIT_NO_TIMING", "0")
    monkeypatch.setenv("SLIMKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(prune_module, "auto_round_to", lambda *a, **k: pytest.fail("round-to was timed"))
    for budget in ("150%", "1G"):
        with pytest.raises(SlimkitError, match="above the largest model"):
            slimkit.prune("resnet20", budget, method="uniform", latency=LatencyOptions(threads=1, check=False))
    assert not (tmp_path / rounding.CACHE_FILE).exists()


@pytest.mark.parametrize("own", ['{"format": "my-tool/2", "entries": {}}', "my notes\n", ""])
def test_a_users_file_named_like_the_cache_is_never_replaced(monkeypatch, tmp_path, own):
    """SLIMKIT_CACHE_DIR may point at a folder of the user's: a round_to.json slimkit did not write stays
    byte-identical (the choice is measured, used, and not cached), and a note says why."""
    monkeypatch.setenv("SLIMKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SLIMKIT_NO_TIMING", "0")
    monkeypatch.setattr(rounding, "sweep_multiples", lambda *a, **k: {16: {"mac_ratio": 0.5, "time_ratio": 0.5,
                                                                           "efficiency": 1.0}})
    (tmp_path / rounding.CACHE_FILE).write_text(own)
    logs = []
    plan = slimkit.prune("resnet20", "50%", method="uniform", num_classes=10,
                         latency=LatencyOptions(threads=1, check=False), log=logs.append)
    assert plan.round_to == 16 and (tmp_path / rounding.CACHE_FILE).read_text() == own
    assert any("is not slimkit's cache" in line for line in logs)


@pytest.mark.parametrize("edit", [{"round_to": 0}, {"round_to": -8}, {"round_to": True}, {"round_to": 10**9},
                                  {"round_to": "8"}, {"sweep": {"x": {}}}, {"sweep": [1]}, {"threads": -1}])
def test_a_hand_edited_round_to_cache_is_measured_again_not_trusted(monkeypatch, tmp_path, edit):
    monkeypatch.setenv("SLIMKIT_CACHE_DIR", str(tmp_path))
    key = "k"
    entry = {"round_to": 8, "why": "", "threads": 1, "sweep": {"8": {"mac_ratio": 0.5, "time_ratio": 0.5,
                                                                    "efficiency": 1.0}}}
    assert rounding._cached_choice(entry) == entry
    assert rounding._cached_choice({**entry, **edit}) is None
    monkeypatch.setattr(rounding, "_cache_key", lambda *a, **k: key)
    monkeypatch.setattr(rounding, "sweep_multiples", lambda *a, **k: {16: {"mac_ratio": 0.5, "time_ratio": 0.5,
                                                                           "efficiency": 1.0}})
    (tmp_path / rounding.CACHE_FILE).write_text(json.dumps({"format": rounding.CACHE_FORMAT,
                                                             "entries": {key: {**entry, **edit}}}))
    monkeypatch.setenv("SLIMKIT_NO_TIMING", "0")
    plan = slimkit.prune("resnet20", "50%", method="uniform", num_classes=10,
                         latency=LatencyOptions(threads=1, check=False))
    assert plan.search["rounding"]["how"] == "measured" and plan.round_to == 16


def test_ragged_plan_warns_with_its_measured_cost(monkeypatch, tmp_path):
    monkeypatch.setenv("SLIMKIT_NO_TIMING", "0")
    logs = []
    plan = slimkit.prune("resnet20", "50%", method="uniform", num_classes=10, round_to=1,
                         latency=LatencyOptions(threads=1), log=logs.append)
    (warning,) = plan.search["warnings"]
    assert "--round-to auto" in warning and "x the full model's latency on ort-cpu" in warning
    check = plan.search["latency_check"]
    assert check["mode"] == "interleaved" and check["input_size"] == [3, 32, 32] and check["plan_ratio_to_full"] > 0
    assert any(line.startswith("warning:") for line in logs)
    # rounded to the runtime's block: no warning
    plan = slimkit.prune("resnet20", "50%", method="uniform", num_classes=10, round_to=8,
                         latency=LatencyOptions(check=False))
    assert "warnings" not in plan.search


def test_recipe_takes_auto_and_timing():
    r = parse_recipe({"name": "t", "arch": "resnet20", "prune": {"method": "uniform", "flops": "50%", "round_to": "auto",
                                                   "timing": "interleaved"}}, "r.yaml")
    assert r.prune.round_to == "auto" and r.prune.timing == "interleaved"
    for bad in ({"round_to": "fast"}, {"timing": "fast"}):
        with pytest.raises(SlimkitError):
            parse_recipe({"name": "t", "arch": "resnet20", "prune": {"method": "uniform", "flops": "50%", **bad}}, "r.yaml")


# ---------------------------------------------------------------------------- latency-aware selection
def test_latency_weights_move_channels_out_of_expensive_layers():
    """Equal gates everywhere: MAC-ranked selection and latency-ranked selection differ only by cost.
    Make the first stage's convs 20x as expensive per MAC: the latency-aware plan must keep fewer
    of the first stage's channels, and land on the same MAC budget."""
    graph = channel_graph("resnet20", {"num_classes": 10}, (3, 32, 32))
    gates = {n: [0.5] * g.width for n, g in graph.groups.items()}
    budget = Budget("flops", "50%", graph.count_flops() // 2)
    by_macs = search_cost_aware(graph, gates, budget, round_to=8)
    weights = {fqn: (20.0 if fqn.startswith(("conv1", "layer1")) else 1.0) for fqn, _ in graph.mac_terms}
    by_latency = search_cost_aware(graph, gates, budget, round_to=8, rank_weights=weights)
    assert by_latency.selection == "latency-aware" and by_macs.selection == "cost-aware"
    stage1 = [n for n in graph.groups if any(c.startswith(("conv1", "layer1")) for c in graph.groups[n].producers)]
    assert stage1
    assert sum(by_latency.widths[n] for n in stage1) < sum(by_macs.widths[n] for n in stage1)
    for res in (by_macs, by_latency):
        assert abs(res.flops - budget.value) / budget.value <= 0.01


def test_layer_table_times_every_counted_layer(monkeypatch):
    monkeypatch.setenv("SLIMKIT_NO_TIMING", "0")
    plan = slimkit.full_plan("resnet20", num_classes=10)
    graph = channel_graph("resnet20", {"num_classes": 10}, (3, 32, 32))
    table = layer_latency_per_mac(plan, graph, threads=1, runs=8)
    layers = table.pop("_layers")
    counted = {fqn for fqn, _ in graph.mac_terms}
    assert set(table) == counted  # every conv and the classifier
    assert 3 <= layers < len(counted)  # equal configurations are timed once
    assert all(v > 0 for v in table.values())
    assert sum(table.values()) / len(table) == pytest.approx(1.0)


def test_auto_on_a_model_too_narrow_for_any_multiple_says_so_and_what_to_pass(monkeypatch, tmp_path):
    """A 16-channel user model at 50%: no multiple of 4..32 lands the uniform plan within 5%, so nothing
    is timed; the documented multiple is used, and the search then says what to pass (it said 'no channel
    multiple could be measured', with no fix)."""
    monkeypatch.setenv("SLIMKIT_NO_TIMING", "0")
    monkeypatch.setenv("SLIMKIT_CACHE_DIR", str(tmp_path))
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    with pytest.raises(SlimkitError, match=r"channel rounding is too coarse here, pass --round-to 1"):
        slimkit.prune(net, "50%", input_size=(3, 32, 32), method="uniform",
                      latency=LatencyOptions(threads=1, check=False))


@pytest.mark.parametrize("value, timing", [("", True), ("0", True), ("false", True), ("No", True), ("1", False),
                                           ("true", False), ("yes", False)])
def test_slimkit_no_timing_reads_as_a_switch(monkeypatch, value, timing):
    """SLIMKIT_NO_TIMING=false turned timing *off* (any value but '' and '0' did)."""
    monkeypatch.setenv("SLIMKIT_NO_TIMING", value)
    assert latency.timing_enabled() is timing


def test_a_slimkit_no_timing_that_is_no_switch_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("SLIMKIT_NO_TIMING", "sometimes")
    r = runner.invoke(app, ["prune", "resnet20", "--flops", "50%", "--method", "uniform", "--out",
                            str(tmp_path / "x.json")])
    assert r.exit_code == 2 and "SLIMKIT_NO_TIMING='sometimes' is not 1 or 0" in r.output and "Traceback" not in r.output

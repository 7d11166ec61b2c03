"""Published structures by name (Li et al. 2017's ResNet-56/110-A/B, as Rethinking reruns them)."""

import pytest
import torch
from typer.testing import CliRunner

from slimkit.checkpoint import weights_fingerprint
from slimkit.cli import app
from slimkit.errors import SlimkitError
from slimkit.generator import build_model, l1_scores, channel_graph
from slimkit.plan import load_plan
from slimkit.prune import GateOptions, prune
from slimkit.structures import STRUCTURES

STREAMS = ("conv1", "layer2.0.conv2", "layer3.0.conv2")


def test_resnet56_a_has_the_papers_widths_and_skips_its_sensitive_layers():
    plan = prune("resnet56", structure="resnet56-a", num_classes=10)
    # 10% of each stage's block-internal channels removed (16 -> 14, 32 -> 28, 64 -> 57, the official
    # code's floor), except layers 16, 20, 38 and 54: blocks 7 of stage 1, 0 of stage 2, 0 and 8 of stage 3
    skipped = {"layer1.7.conv1", "layer2.0.conv1", "layer3.0.conv1", "layer3.8.conv1"}
    for stage, (full, kept) in enumerate(((16, 14), (32, 28), (64, 57)), start=1):
        for block in range(9):
            name = f"layer{stage}.{block}.conv1"
            assert plan.groups[name] == {"full": full, "width": full if name in skipped else kept}, name
    assert all(plan.groups[n]["width"] == plan.groups[n]["full"] for n in STREAMS)
    assert len(plan.groups) == 27 + len(STREAMS)
    # Li et al. 2017, Table 1: ResNet-56-pruned-A removes 10.4% of the FLOPs (1.25E8 -> 1.12E8) and 9.4%
    # of the parameters; slimkit counts 10.38% and 9.31% (its shortcuts are 1x1 convs, the paper's zero padding)
    assert plan.search["structure"]["name"] == "resnet56-a"
    assert abs((1 - plan.flops / plan.search["full_flops"]) - 0.104) < 0.002
    assert abs((1 - plan.params / plan.search["full_params"]) - 0.094) < 0.002
    assert plan.method == "structure" and plan.criterion is None


@pytest.mark.parametrize("name", ["resnet56-b", "resnet110-a", "resnet110-b"])
def test_the_other_structures_land_on_the_papers_flops_reduction(name):
    # Li et al. 2017, Table 1: ResNet-56-B -27.6%, ResNet-110-A -15.9%, ResNet-110-B -38.6% FLOPs
    structure = STRUCTURES[name]
    plan = prune(structure.arch, structure=name, num_classes=10, verify=False)
    assert abs((1 - plan.flops / plan.search["full_flops"]) - structure.reported_flops_reduction) < 0.002
    assert all(plan.groups[n]["width"] == plan.groups[n]["full"] for n in structure.skipped_groups())


def test_from_weights_the_structure_keeps_the_largest_filters(tmp_path):
    parent = build_model("slimkit:resnet56", {"num_classes": 10})
    with torch.no_grad():  # distinct filter norms, so the kept set is decided
        for name, p in parent.named_parameters():
            if name.endswith("conv1.weight") and p.dim() == 4:
                p.mul_(torch.linspace(0.5, 2.0, p.shape[0]).flip(0).view(-1, 1, 1, 1) ** 3)
    weights = tmp_path / "parent.pth"
    torch.save(parent.state_dict(), weights)
    plan = prune("resnet56", structure="resnet56-a", gates=GateOptions(weights=str(weights)), criterion="l1")
    assert plan.criterion == {"kind": "l1", "weights": str(weights), "fingerprint": weights_fingerprint(parent.state_dict())}
    scores = l1_scores(channel_graph(plan.arch, plan.arch_kwargs, tuple(plan.input_size)), parent.state_dict())
    for name in ("layer1.0.conv1", "layer2.3.conv1", "layer3.5.conv1"):
        width = plan.groups[name]["width"]
        assert plan.groups[name]["keep"] == sorted(scores[name].argsort(descending=True)[:width].tolist())
    assert "keep" not in plan.groups["layer3.8.conv1"]  # skipped: kept whole
    assert plan.widths == prune("resnet56", structure="resnet56-a", num_classes=10, verify=False).widths
    with pytest.raises(SlimkitError, match="use --criterion l1"):
        prune("resnet56", structure="resnet56-a", gates=GateOptions(weights=str(weights)), criterion="gates")


def test_structure_errors_are_one_line(tmp_path):
    runner = CliRunner()
    out = str(tmp_path / "p.json")
    for args, words in (
            (["resnet56", "--structure", "resnet56-c"], "unknown structure 'resnet56-c': choose one of resnet56-a"),
            (["resnet20", "--structure", "resnet56-a"], "defined for slimkit:resnet56, not slimkit:resnet20"),
            (["resnet110", "--structure", "resnet56-b"], "use resnet110-a / resnet110-b"),
            (["resnet56", "--structure", "resnet56-a", "--flops", "50%"], "give exactly one budget"),
            (["resnet56", "--structure", "resnet56-a", "--method", "scratch"], "drop --method")):
        r = runner.invoke(app, ["prune", *args, "--out", out, "--no-plot"])
        assert r.exit_code != 0 and words in r.output, (args, r.output)
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    with pytest.raises(SlimkitError, match="not both"):
        prune("resnet56", "50%", structure="resnet56-a")


def test_cli_writes_the_structure_plan(tmp_path):
    out = tmp_path / "b.json"
    r = CliRunner().invoke(app, ["prune", "resnet56", "--structure", "resnet56-b", "--num-classes", "10",
                                 "--out", str(out), "--no-plot"])
    assert r.exit_code == 0, r.output
    assert "structure resnet56-b: MACs -27.5%" in r.output
    plan = load_plan(out)
    assert plan.groups["layer1.0.conv1"]["width"] == 6 and plan.groups["layer2.1.conv1"]["width"] == 22
    assert plan.search["structure"]["skip_layers"] == [16, 18, 20, 34, 38, 54]

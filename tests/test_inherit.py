"""Plans cut from trained weights: kept channels, G inheriting them, and fine-tuning (Rethinking)."""

import json
from dataclasses import replace

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import slimkit
from slimkit.budget import Budget, search_uniform
from slimkit.checkpoint import load_checkpoint, weights_fingerprint
from slimkit.cli import app
from slimkit.cli.prune import gate_summary
from slimkit.errors import PlanError, SlimkitError
from slimkit.generator import build_model, channel_graph, choose_channels, generate, kept_index, with_num_classes
from slimkit.plan import PLAN_FORMAT, PLAN_FORMAT_KEEP, ChannelPlan, load_plan
from slimkit.prune import GateOptions, prune
from slimkit.search_space import residual_stream_groups
from slimkit.train import TrainConfig, train

SIZE = (3, 32, 32)


def finetune(source, out, parent, said: list[str] | None = None, **options) -> list[str]:
    """``source`` fine-tuned from ``parent`` for one step on synthetic data (10 classes): the lines it logged (into
    ``said`` when given: kept when it raises)."""
    said = [] if said is None else said
    cfg = {"epochs": 1, "max_steps_per_epoch": 1, "batch_size": 16, **options}
    train(source, out, TrainConfig(data="synthetic", schedule="finetune", init="inherit", init_from=str(parent), **cfg),
          log=said.append)
    return said


def trained_like(arch: str, arch_kwargs: dict | None = None) -> tuple[ChannelPlan, nn.Module]:
    """A full plan and a parent whose norms are not at their init (BatchNorm scales, shifts and running
    stats, LayerNorm scales and shifts, ConvNeXt's layer scales all differ per channel), so a channel
    copied to the wrong place shows in the outputs."""
    plan = slimkit.full_plan(arch, num_classes=10, input_size=SIZE, arch_kwargs=arch_kwargs)
    parent = build_model(plan.arch, plan.arch_kwargs)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in parent.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) and getattr(m, "weight", None) is not None:
                n = m.weight.shape[0]
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            if isinstance(m, nn.BatchNorm2d) and m.track_running_stats:
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        for name, p in parent.named_parameters():
            if name.endswith(".gamma"):  # timm's layer scale starts at 1e-6: blocks would barely count
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return plan, parent.eval()


def zeroed(parent: nn.Module, plan: ChannelPlan) -> nn.Module:
    """The parent with every dropped channel zeroed in every tensor the channel graph ties to it."""
    graph = channel_graph(plan.arch, plan.arch_kwargs, tuple(plan.input_size))
    everything = {n: list(range(g["full"])) for n, g in plan.groups.items()}
    state = {k: v.clone() for k, v in parent.state_dict().items()}
    for fqn, dims in graph.param_dims.items():
        for dim in dims:
            kept = kept_index(fqn, dim, graph, plan.keep)
            mask = torch.ones(len(kept_index(fqn, dim, graph, everything)), dtype=torch.bool)
            mask[kept] = False
            state[fqn].index_fill_(dim, mask.nonzero().flatten(), 0.0)
    model = build_model(plan.arch, plan.arch_kwargs)
    model.load_state_dict(state)
    return model.eval()


VIT = ("timm:vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8})  # a ViT at a test-sized input


@pytest.mark.parametrize("arch,arch_kwargs", [("resnet20", None), ("mobilenet_v2", None),
                                              ("timm:efficientnet_b0", None), ("timm:convnext_atto", None), VIT])
def test_a_plan_keeping_every_channel_reproduces_the_parent(arch, arch_kwargs):
    plan, parent = trained_like(arch, arch_kwargs)
    keep_all = choose_channels(plan, parent.state_dict())
    assert keep_all.format == PLAN_FORMAT_KEEP and keep_all.criterion["kind"] == "l1"
    child = generate(keep_all, weights=parent.state_dict()).eval()
    assert child is not parent
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        assert (child(x) - parent(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("arch,arch_kwargs", [("timm:convnext_atto", None), VIT])
def test_zeroing_equivalence_inside_blocks_of_layernorm_models(arch, arch_kwargs):
    """Where a LayerNorm normalizes the residual stream, dropping a stream channel changes every other
    channel's statistics, so the equivalence holds only with the streams kept: then the MLP hidden
    channels (ConvNeXt, ViT) and whole attention heads (ViT: a zeroed head attends uniformly to zero
    values) that G drops are exactly the parent's with those channels silenced."""
    plan, parent = trained_like(arch, arch_kwargs)
    graph = channel_graph(plan.arch, plan.arch_kwargs, SIZE)
    pinned = {n: graph.groups[n].width for n in residual_stream_groups(graph)}
    res = search_uniform(graph, Budget("flops", "80%", plan.flops * 8 // 10), round_to=1, tolerance=0.1,
                         pinned=pinned)
    # uniform scaling keeps ViT-Tiny's three 64-wide heads; drop one head per block by hand
    widths = {n: w * 2 // 3 if n.endswith("attn.qkv") else w for n, w in res.widths.items()}
    thin = choose_channels(plan.with_widths(widths, flops=graph.count_flops(widths),
                                            params=graph.count_params(widths)), parent.state_dict())
    assert sum(g["width"] < g["full"] for g in thin.groups.values()) >= 4
    child = generate(thin, weights=parent.state_dict()).eval()
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        want, got = zeroed(parent, thin)(x), child(x)
        assert (got - want).abs().max().item() <= 1e-5
        assert (got - parent(x)).abs().max().item() > 1e-3  # the pruning did change the function


@pytest.mark.parametrize("arch", ["resnet20", "mobilenet_v2",
                                  pytest.param("timm:efficientnet_b0", marks=pytest.mark.slow)])
def test_a_pruned_plan_equals_the_parent_with_its_dropped_channels_zeroed(arch):
    """Every group narrowed (residual streams too): what G copies is exactly what the parent computes
    with the other channels silenced, so no channel lands in the wrong place along any tied dim."""
    plan, parent = trained_like(arch)
    graph = channel_graph(plan.arch, plan.arch_kwargs, SIZE)
    res = search_uniform(graph, Budget("flops", "50%", plan.flops // 2), round_to=1, tolerance=0.05)
    thin = choose_channels(plan.with_widths(res.widths, flops=res.flops, params=res.params), parent.state_dict())
    assert any(g["width"] < g["full"] for n, g in thin.groups.items() if n in residual_stream_groups(graph))
    child = generate(thin, weights=parent.state_dict()).eval()
    assert slimkit.count_flops(child, SIZE) == thin.flops
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        want, got = zeroed(parent, thin)(x), child(x)
        assert (got - want).abs().max().item() <= 1e-5
        assert (got - parent(x)).abs().max().item() > 1e-3  # the pruning did change the function


def test_l1_keeps_the_filters_with_the_largest_norm():
    plan, parent = trained_like("resnet20")
    with torch.no_grad():
        parent.layer1[0].conv1.weight.mul_(0.01)
        parent.layer1[0].conv1.weight[[3, 5, 11, 12]] *= 1000.0  # four clearly largest filters
    narrow = plan.with_widths({**plan.widths, "layer1.0.conv1": 4})
    kept = choose_channels(narrow, parent.state_dict())
    assert kept.groups["layer1.0.conv1"]["keep"] == [3, 5, 11, 12]
    assert "keep" not in kept.groups["conv1"]  # full-width groups store nothing


def test_plan_formats_old_plans_load_and_kept_channels_are_checked(tmp_path):
    plan = slimkit.full_plan("resnet20", num_classes=10)
    data = json.loads(plan.to_json())
    assert data["format"] == PLAN_FORMAT and "criterion" not in data  # widths-only plans read as before
    assert ChannelPlan.from_dict(data).keep == {}
    narrow = plan.with_widths({**plan.widths, "layer1.0.conv1": 2})
    kept = narrow.with_keep({"layer1.0.conv1": [7, 1]}, {"kind": "l1", "weights": "parent.pt"})
    path = tmp_path / "p.json"
    path.write_text(kept.to_json())
    back = load_plan(path)
    assert back.format == PLAN_FORMAT_KEEP and back.keep["layer1.0.conv1"] == [1, 7]
    assert back.keep["conv1"] == list(range(16))
    for bad, needle in ((lambda d: d["groups"]["layer1.0.conv1"].update(keep=[1]), "ascending distinct"),
                        (lambda d: d["groups"]["layer1.0.conv1"].update(keep=[7, 1]), "ascending distinct"),
                        (lambda d: d["groups"]["layer1.0.conv1"].update(keep=[1, 16]), "ascending distinct"),
                        (lambda d: d.update(criterion=None), "needs 'criterion'"),
                        (lambda d: d.update(format=PLAN_FORMAT), "group"),
                        (lambda d: d["groups"]["layer1.0.conv1"].pop("keep"), "does not say which channels"),
                        (lambda d: d["criterion"].update(fingerprint="abc"), "criterion.fingerprint"),
                        # a misspelt fingerprint passed as a plan that records no parent, skipping its check
                        (lambda d: d["criterion"].update(fingerprnt="sha256:0123456789abcdef"), "unknown fields")):
        d = json.loads(kept.to_json())
        bad(d)
        with pytest.raises(PlanError, match=needle):
            ChannelPlan.from_dict(d)
    # new widths drop the kept indices: they belonged to the old widths
    assert narrow.with_widths(plan.widths).format == PLAN_FORMAT


def test_every_narrowed_group_of_a_plan_with_kept_channels_says_which():
    """One narrowed group's 'keep' deleted from a plan whose others keep theirs: G read the missing list
    as 'all channels' and stopped on an 'internal error: please report this' shape mismatch."""
    plan, parent = trained_like("resnet20")
    kept = choose_channels(plan.with_widths({**plan.widths, "layer1.0.conv1": 8, "layer1.1.conv1": 8}),
                           parent.state_dict())
    d = json.loads(kept.to_json())
    del d["groups"]["layer1.1.conv1"]["keep"]
    with pytest.raises(PlanError, match=r"group 'layer1.1.conv1' is narrowed \(8 of 16 channels\) but does not say"):
        generate(d, weights=parent.state_dict())


def test_kept_channels_and_widths_come_in_whole_attention_heads():
    """A ViT's attention group narrows in whole heads (64 channels). Kept indices that split a head
    (heads' channels mixed) gave a model that ran on meaningless weights, and a width between heads
    one that failed in its forward; both are refused by the check every plan meets its graph with."""
    plan, parent = trained_like(*VIT)
    group = "blocks.0.attn.qkv"
    kept = choose_channels(plan.with_widths({**plan.widths, group: 128}), parent.state_dict())
    assert kept.keep[group] in (list(range(0, 128)), list(range(64, 192)),
                                list(range(0, 64)) + list(range(128, 192)))
    generate(kept, weights=parent.state_dict())  # whole heads: fine
    split = json.loads(kept.to_json())
    split["groups"][group]["keep"] = list(range(0, 64)) + list(range(65, 129))
    with pytest.raises(PlanError, match=r"group 'blocks.0.attn.qkv' keeps channels that split its blocks of 64 "
                                        r"\(an attention head.*2 whole blocks.*e.g. 0..63, 64..127"):
        generate(split, weights=parent.state_dict())
    with pytest.raises(PlanError, match="split its blocks of 64"):  # the scratch path reads the same plan
        generate(split)
    between = json.loads(plan.with_widths({**plan.widths, group: 100}).to_json())
    with pytest.raises(PlanError, match="100 channels wide, but it narrows in blocks of 64 .an attention head"):
        generate(between)


def test_a_full_parent_trained_with_other_arguments_is_named_as_such(tmp_path):
    """The full model trained for 10 classes, given to a 5-class prune, was called not the full model
    ('train the full model with `slimkit train resnet20`'): it is the full model, with other arguments."""
    from slimkit.artifacts import write_checkpoint
    from slimkit.checkpoint import full_model_weights

    plan = slimkit.full_plan("resnet20", num_classes=10)
    path = tmp_path / "checkpoint.pt"
    write_checkpoint(path, model=build_model(plan.arch, plan.arch_kwargs).state_dict(), plan=plan, config={}, epoch=1,
                     metrics=[])
    with pytest.raises(SlimkitError) as info:
        full_model_weights(path, "resnet20", {"num_classes": 5})
    assert "holds the full slimkit:resnet20 trained with other arguments (num_classes 10, not 5)" in str(info.value)
    assert "train the full model" not in str(info.value)
    assert full_model_weights(path, "resnet20", {"num_classes": 10}).keys() == plan_state_keys(plan)


def test_a_parent_trained_with_the_default_classes_given_explicitly_is_the_same_full_model(tmp_path):
    """`slimkit train resnet20` records num_classes 10; `slimkit prune resnet20 --flops 50%` (uniform, no
    data) records none, and resnet20's default is 10: inheriting was refused as 'trained with other
    arguments (num_classes 10, not default)'."""
    from slimkit.artifacts import write_checkpoint
    from slimkit.checkpoint import full_model_weights

    plan = slimkit.full_plan("resnet20", num_classes=10)
    path = tmp_path / "checkpoint.pt"
    write_checkpoint(path, model=build_model(plan.arch, plan.arch_kwargs).state_dict(), plan=plan, config={}, epoch=1,
                     metrics=[])
    assert full_model_weights(path, "resnet20", {}).keys() == plan_state_keys(plan)
    assert full_model_weights(path, "resnet20", {"in_chans": 3}).keys() == plan_state_keys(plan)
    with pytest.raises(SlimkitError, match="num_classes 10, not 100"):
        full_model_weights(path, "resnet20", {"num_classes": 100})


def test_a_plan_with_a_default_head_that_fits_the_data_trains_and_inherits(tmp_path):
    """The demo's `prune resnet20 --flops 50%` then `train` was refused ('the plan keeps slimkit:resnet20's
    default classifier; prune again with --num-classes 10') although that head has the data's 10 classes."""
    cfg = TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=1, batch_size=16)
    thin = prune("resnet20", "50%", method="uniform", round_to=8)
    assert thin.num_classes is None
    train(thin, tmp_path / "scratch", cfg)
    train("resnet20", tmp_path / "full", cfg)
    ft = replace(cfg, schedule="finetune", init="inherit", init_from=str(tmp_path / "full" / "checkpoint.pt"))
    train(thin, tmp_path / "ft", ft)


def test_fine_tuning_onto_other_classes_inherits_every_weight_but_the_classifier(tmp_path):
    """An ImageNet checkpoint fine-tuned on the user's 10 classes was refused ('slimkit does not replace a trained
    classifier'), the commonest fine-tuning there is: now the classifier gets the data's rows, as timm's
    create_model(pretrained=True, num_classes=10) gives it, and every other weight is the parent's."""
    wide = prune("timm:resnet18", "50%", method="uniform", round_to=8, input_size=SIZE)  # its default 1000 classes
    imagenet = tmp_path / "resnet18-imagenet.pt"  # a parent with timm's own 1000-class head
    torch.save(build_model("timm:resnet18", {}).state_dict(), imagenet)
    ft = TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=1, batch_size=16, schedule="finetune",
                     init="inherit", init_from=str(imagenet), lr=1e-9)  # a step that leaves the weights as loaded
    said = finetune(wide, tmp_path / "wide", imagenet, lr=1e-9)
    assert any(m.startswith(f"classes: {imagenet} was trained for 1000 classes and synthetic has 10: every weight "
                            "but the classifier's is inherited") for m in said), said
    run_plan = load_plan(tmp_path / "wide" / "plan.json")
    assert run_plan.num_classes == 10 and run_plan.has_keep and run_plan.criterion["kind"] == "l1"
    trained = load_checkpoint(tmp_path / "wide" / "checkpoint.pt")["model"]
    parent_cut = generate(choose_channels(wide, imagenet, "l1"), weights=imagenet).state_dict()
    assert trained["fc.weight"].shape[0] == 10 and parent_cut["fc.weight"].shape[0] == 1000
    inherited = [k for k in trained if not k.startswith("fc.") and "running_" not in k  # BN statistics train on
                 and trained[k].is_floating_point()]
    assert inherited and all(torch.allclose(trained[k], parent_cut[k], atol=1e-5) for k in inherited)
    assert not torch.allclose(trained["fc.weight"], parent_cut["fc.weight"][:10], atol=1e-3)  # new rows, not the first 10
    train(wide, tmp_path / "wide", ft, resume=True, extend_to=2)  # the user's plan resumes the run it sized
    with pytest.raises(SlimkitError, match="not this plan"):  # a plan for yet other classes does not
        train(with_num_classes(wide, 100), tmp_path / "wide", ft, resume=True, extend_to=3)
    # a plan cut from the parent (its 1000 classes recorded), and the full architecture by name, the same way
    cut = choose_channels(prune("timm:resnet18", "50%", method="uniform", round_to=8, input_size=SIZE,
                                num_classes=1000), imagenet, "l1")
    train(cut, tmp_path / "cut", ft)
    assert load_plan(tmp_path / "cut" / "plan.json").keep == cut.keep
    said.clear()
    train("timm:resnet18", tmp_path / "full", ft, log=said.append)
    assert load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]["fc.weight"].shape[0] == 10
    assert f"init: every weight of {imagenet} but the classifier's (the plan keeps every channel)" in said, said


def test_a_backbone_saved_without_its_classifier_fine_tunes_with_a_new_one(tmp_path):
    """timm's num_classes=0 backbone (every weight but the classifier's, what fine-tuning onto new classes
    needs) was said to be 'trained for 1000 classes', then refused: 'missing fc.weight, fc.bias'. Pruning with
    it as --weights said 'create_model: num_classes must be in [1, 65536], got 0'."""
    wide = prune("timm:resnet18", "50%", method="uniform", round_to=8, input_size=SIZE)
    full = build_model("timm:resnet18", {}).state_dict()
    backbone = tmp_path / "resnet18-backbone.pt"
    torch.save({k: v for k, v in full.items() if not k.startswith("fc.")}, backbone)
    said = finetune(wide, tmp_path / "ft", backbone, lr=1e-9)  # a step that leaves the weights as loaded
    assert any(m.startswith(f"classes: {backbone} holds no classifier (a backbone) and synthetic has 10: every "
                            "weight but the classifier's is inherited") for m in said), said
    trained = load_checkpoint(tmp_path / "ft" / "checkpoint.pt")["model"]
    parent_cut = generate(choose_channels(wide, full, "l1"), weights=full).state_dict()  # the same, headed
    inherited = [k for k in trained if not k.startswith("fc.") and "running_" not in k
                 and trained[k].is_floating_point()]
    assert trained["fc.weight"].shape[0] == 10
    assert inherited and all(torch.allclose(trained[k], parent_cut[k], atol=1e-5) for k in inherited)
    with pytest.raises(SlimkitError, match=r"without its classifier \(a backbone.*prune without --weights"):
        prune("timm:resnet18", "50%", method="uniform", round_to=8, input_size=SIZE,
              gates=GateOptions(weights=str(backbone)), criterion="l1")


def test_a_plan_that_keeps_every_channel_inherits_from_any_parent(tmp_path):
    """A fine-tuned full model's run plan (`slimkit train ARCH --init inherit` records the parent's fingerprint)
    given as the plan of the next fine-tuning, from that run's checkpoint, was refused: 'the plan's channels were
    chosen on imagenet.pt, but runs/ft/checkpoint.pt holds other weights'. It chose no channels."""
    plan, parent = trained_like("resnet20")
    kept = choose_channels(plan, parent.state_dict())
    assert kept.has_keep and kept.criterion["fingerprint"] == weights_fingerprint(parent.state_dict())
    other = {k: v.clone() for k, v in parent.state_dict().items()}
    other["layer3.2.conv2.weight"][0, 0, 0, 0] += 1.0
    assert torch.equal(generate(kept, weights=other).state_dict()["layer3.2.conv2.weight"],
                       other["layer3.2.conv2.weight"])


def plan_state_keys(plan: ChannelPlan):
    return build_model(plan.arch, plan.arch_kwargs).state_dict().keys()


def test_the_model_given_with_the_weights_is_the_one_they_are_loaded_into():
    """generate(plan, weights=..., model=...) ignored the model: a model object's plan in another process
    was refused with 'pass the model (slimkit.generate(plan, model=...))', which the caller had done."""
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                             nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(32, 10))
    parent = net()
    plan = slimkit.prune(parent, "50%", input_size=(3, 16, 16), method="uniform", tolerance=0.2)
    kept = choose_channels(plan, parent.state_dict())
    elsewhere = {**kept.to_dict(), "arch": "object:Sequential#999"}  # as another process reads the plan
    with pytest.raises(slimkit.RegistryError, match="another Python process"):
        generate(elsewhere, weights=parent.state_dict())
    child = generate(elsewhere, weights=parent.state_dict(), model=net()).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(child(x), generate(kept, weights=parent.state_dict()).eval()(x))


def test_inheriting_needs_kept_channels_and_the_right_parent():
    plan, parent = trained_like("resnet20")
    narrow = plan.with_widths({**plan.widths, "layer1.0.conv1": 8})
    with pytest.raises(PlanError, match="records widths only"):
        generate(narrow, weights=parent.state_dict())
    other = build_model("mobilenet_v2", {"num_classes": 10}).state_dict()
    with pytest.raises(PlanError, match="does not hold weights of the full"):
        choose_channels(narrow, other)


def test_inheriting_from_another_parent_than_the_plan_was_cut_from_is_refused(tmp_path):
    """Channels ranked on one trained model mean nothing in another of the same architecture: the plan
    records the fingerprint of the weights it was cut from, and G (so `slimkit train --init inherit` and a
    recipe's fine-tuning stage) refuses other weights; the same weights saved another way still fit."""
    plan, parent = trained_like("resnet20")
    narrow = plan.with_widths({**plan.widths, "layer1.0.conv1": 8})
    torch.save(parent.state_dict(), tmp_path / "a.pt")
    kept = choose_channels(narrow, str(tmp_path / "a.pt"))
    assert kept.criterion["fingerprint"] == weights_fingerprint(parent.state_dict())
    torch.save({"state_dict": {"module." + k: v for k, v in parent.state_dict().items()}, "epoch": 3},
               tmp_path / "same.pth")
    generate(kept, weights=str(tmp_path / "same.pth"))
    other = {k: v.clone() for k, v in parent.state_dict().items()}
    other["layer3.2.conv2.weight"][0, 0, 0, 0] += 1.0
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(PlanError, match="channels were chosen on .*a.pt .*other.pt holds other weights"):
        generate(kept, weights=str(tmp_path / "other.pt"))
    with pytest.raises(PlanError, match="channels were chosen on"):
        generate(kept, weights=other)
    torch.save(other, tmp_path / "a.pt")  # the parent trained again into the same file
    with pytest.raises(PlanError, match="a.pt has changed since the plan's channels were chosen on it"):
        generate(kept, weights=str(tmp_path / "a.pt"))
    ft = TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=1, batch_size=16, schedule="finetune",
                     init="inherit", init_from=str(tmp_path / "other.pt"))
    with pytest.raises(PlanError, match="holds other weights"):
        train(kept, tmp_path / "ft", ft)
    assert not (tmp_path / "ft").exists()


def test_uniform_search_keeps_pinned_groups():
    graph = channel_graph("slimkit:resnet20", {"num_classes": 10}, SIZE)
    streams = residual_stream_groups(graph)
    pinned = {n: graph.groups[n].width for n in streams}
    res = search_uniform(graph, Budget("flops", "50%", graph.count_flops() // 2), round_to=1, pinned=pinned)
    assert all(res.widths[n] == w for n, w in pinned.items())
    assert abs(res.flops / (graph.count_flops() / 2) - 1) <= 0.01


def test_finetune_inherits_keeps_the_lr_constant_and_resumes(tmp_path):
    cfg = TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=2, batch_size=16)
    train("resnet20", tmp_path / "full", cfg)
    parent_ckpt = str(tmp_path / "full" / "checkpoint.pt")
    plan = prune("resnet20", "50%", method="uniform", round_to=1, criterion="l1",
                 gates=GateOptions(weights=parent_ckpt, search_space="paper"))
    assert plan.criterion == {"kind": "l1", "weights": parent_ckpt,
                              "fingerprint": weights_fingerprint(load_checkpoint(parent_ckpt)["model"])}
    streams = plan.search["pinned"]
    assert streams and all(plan.groups[n]["width"] == plan.groups[n]["full"] for n in streams)
    ft = TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=2, batch_size=16, schedule="finetune",
                     init="inherit", init_from=parent_ckpt)
    result = train(plan, tmp_path / "ft", ft)
    said = []
    train(plan, tmp_path / "ft", ft, resume=True, extend_to=2, log=said.append)
    # a constant LR has no cosine schedule to stretch (the message said it had)
    assert "extending to 2 epochs at the constant LR of 0.001" in said and not any("cosine" in m for m in said)
    history = json.loads((tmp_path / "ft" / "metrics.json").read_text())["history"]
    assert [h["lr"] for h in history] == [0.001, 0.001] and result.epochs == 1
    assert load_plan(tmp_path / "ft" / "plan.json").keep == plan.keep
    narrowed = next(n for n, g in plan.groups.items() if g["width"] < g["full"])
    other = plan.with_keep({**plan.keep, narrowed: list(range(plan.groups[narrowed]["width"]))}, plan.criterion)
    assert other.keep != plan.keep
    with pytest.raises(SlimkitError, match="not this plan .it keeps other channels of the parent"):
        train(other, tmp_path / "ft", ft, resume=True, extend_to=3)  # the same widths, another cut
    with pytest.raises(SlimkitError, match="add --init inherit"):
        train(plan, tmp_path / "x", TrainConfig(data="synthetic", schedule="finetune"))
    with pytest.raises(SlimkitError, match="add --from"):
        train(plan, tmp_path / "x", TrainConfig(data="synthetic", init="inherit"))


def test_inherit_picks_l1_channels_for_a_widths_only_plan(tmp_path):
    cfg = TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=1, batch_size=16)
    train("resnet20", tmp_path / "full", cfg)
    thin = prune("resnet20", "50%", method="uniform", round_to=1, num_classes=10)
    ft = TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=1, batch_size=16, schedule="finetune",
                     init="inherit", init_from=str(tmp_path / "full" / "checkpoint.pt"))
    train(thin, tmp_path / "ft", ft)
    assert load_plan(tmp_path / "ft" / "plan.json").criterion["kind"] == "l1"


def test_cli_prune_by_l1_then_finetune(tmp_path):
    runner = CliRunner()
    full, plan, ft = tmp_path / "full", tmp_path / "p.json", tmp_path / "ft"
    common = ["--data", "synthetic", "--max-steps-per-epoch", "1", "--batch-size", "16"]
    assert runner.invoke(app, ["train", "resnet20", "--epochs", "1", "--out", str(full), *common]).exit_code == 0
    r = runner.invoke(app, ["prune", "resnet20", "--weights", str(full / "checkpoint.pt"), "--criterion", "l1",
                            "--flops", "50%", "--out", str(plan), "--no-plot"])
    assert r.exit_code == 0, r.output
    assert load_plan(plan).method == "uniform" and load_plan(plan).has_keep
    r = runner.invoke(app, ["train", str(plan), "--init", "inherit", "--from", str(full / "checkpoint.pt"),
                            "--schedule", "finetune", "--epochs", "1", "--out", str(ft), *common])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["prune", "resnet20", "--criterion", "l1", "--flops", "50%", "--out", str(plan)])
    assert r.exit_code != 0 and "--weights CKPT" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["prune", "resnet20", "--weights", str(ft / "checkpoint.pt"), "--criterion", "l1",
                            "--flops", "50%", "--out", str(tmp_path / "q.json")])
    assert r.exit_code != 0 and "not the full" in r.output


def test_the_gate_line_says_which_weights_the_gates_were_learned_on():
    """`prune --weights CKPT` (gates learned on trained weights) printed 'on random frozen weights'."""
    search = {"chosen_step": 3, "steps": 5, "val_accuracy": 0.5, "gates": {"mean": 0.5}, "threshold": 0.3,
              "seconds": 1}
    plan = slimkit.full_plan("resnet20", num_classes=10)
    assert "on random frozen weights" in gate_summary(replace(plan, search={**search, "weights": "random"}))
    line = gate_summary(replace(plan, search={**search, "weights": "trained (runs/full/checkpoint.pt)"}))
    assert "on the frozen trained (runs/full/checkpoint.pt) weights" in line and "random" not in line


def test_a_plan_json_with_other_kept_channels_is_not_replaced(tmp_path):
    """A plan.json of the same widths but other kept channels (another parent's cut) in the folder a
    fine-tuning trains into counted as 'this very plan' and was replaced."""
    plan, parent = trained_like("resnet20")
    narrow = plan.with_widths({**plan.widths, "layer1.0.conv1": 8})
    torch.save(parent.state_dict(), tmp_path / "parent.pt")
    kept = choose_channels(narrow, str(tmp_path / "parent.pt"))
    other = kept.with_keep({"layer1.0.conv1": [i for i in range(16) if i not in kept.keep["layer1.0.conv1"]]},
                           kept.criterion)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "plan.json").write_text(other.to_json())
    ft = TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=1, batch_size=16, schedule="finetune",
                     init="inherit", init_from=str(tmp_path / "parent.pt"))
    with pytest.raises(SlimkitError, match="plan.json exists"):
        train(kept, tmp_path / "run", ft)
    assert (tmp_path / "run" / "plan.json").read_text() == other.to_json()


def test_the_parent_cannot_be_the_checkpoint_the_run_writes(tmp_path):
    """--from OUT/checkpoint.pt (a parent saved where the run writes its own): 'already holds a run: pass
    --resume', and --resume then said it was not a slimkit checkpoint; the file is the run's input."""
    plan, parent = trained_like("resnet20")
    (tmp_path / "run").mkdir()
    torch.save(parent.state_dict(), tmp_path / "run" / "checkpoint.pt")
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    ft = TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=1, batch_size=16, schedule="finetune",
                     init="inherit", init_from=str(tmp_path / "run" / ".." / "run" / "checkpoint.pt"))
    with pytest.raises(SlimkitError, match="is where this run writes its checkpoint: .* choose another --out"):
        train(plan, tmp_path / "run", ft, force=True)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_a_plan_builds_the_same_network_only_with_the_same_arch_size_widths_and_kept_channels():
    full = {"a": 8, "b": 16}
    plan = ChannelPlan.from_widths("resnet20", [3, 32, 32], full, {"a": 4, "b": 16})
    cut = plan.with_keep({"a": [0, 1, 2, 3]}, {"kind": "l1", "weights": "p.pt", "fingerprint": "sha256:" + "0" * 16})
    assert plan.builds_same_network_as(replace(plan, method="scratch", seed=3))  # how it was found does not count
    assert plan.builds_same_network_as(cut)  # a widths-only plan may meet the cut it gained in training
    assert cut.builds_same_network_as(cut)
    assert not cut.builds_same_network_as(plan)  # a cut needs those very channels
    assert not cut.builds_same_network_as(cut.with_keep({"a": [4, 5, 6, 7]}, cut.criterion))
    assert not plan.builds_same_network_as(replace(plan, input_size=[3, 64, 64]))
    assert not plan.builds_same_network_as(replace(plan, arch_kwargs={"num_classes": 5}))
    assert not plan.builds_same_network_as(plan.with_widths({"a": 8, "b": 8}))


def test_a_plan_cut_from_a_parent_with_other_classes_fine_tunes_on_the_datas(tmp_path):
    """It was refused: 'prune again with this data (or --num-classes)', then 'slimkit does not replace a trained
    classifier'."""
    parent = tmp_path / "parent.pt"
    torch.save(build_model("resnet20", {"num_classes": 5}).state_dict(), parent)
    plan = choose_channels(prune("resnet20", "50%", method="uniform", round_to=1, num_classes=5), parent, "l1")
    ft = TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=1, batch_size=16, schedule="finetune",
                     init="inherit", init_from=str(parent))
    said = []
    train(plan, tmp_path / "ft", ft, log=said.append)  # resnet20 takes num_classes: its head is sized for the data
    assert any("was trained for 5 classes and synthetic has 10" in m for m in said), said


def test_fine_tuning_the_full_model_does_not_claim_channels_were_chosen(tmp_path):
    """`slimkit train resnet20 --init inherit --from CKPT` said 'the plan records widths only; keeping each
    group's channels with the largest filter L1 norm': nothing is narrowed, every weight is the parent's."""
    parent = tmp_path / "parent.pt"
    torch.save(build_model("resnet20", {"num_classes": 10}).state_dict(), parent)
    said = finetune("resnet20", tmp_path / "ft", parent)
    assert f"init: every weight of {parent} (the plan keeps every channel)" in said, said
    assert not any("widths only" in m or "kept channels' weights" in m for m in said), said


def test_a_latency_budget_keeps_the_trained_models_channels_too(tmp_path):
    """`prune --weights CKPT --criterion l1|gates --latency 60%` (issue 28's CLI) was refused: 'takes a FLOPs
    or parameter budget'. The measured-latency search gives the widths, the criterion the channels."""
    parent_plan, parent = trained_like("resnet20")
    weights = tmp_path / "parent.pt"
    torch.save(parent.state_dict(), weights)
    common = ["--latency", "60%", "--input-size", "32", "--round-to", "1", "--threads", "1", "--tolerance", "0.15",
              "--no-plot", "--weights", str(weights)]
    for criterion, extra in (("l1", []), ("gates", ["--data", "synthetic", "--steps", "2"])):
        out = tmp_path / f"{criterion}.json"
        r = CliRunner().invoke(app, ["prune", "resnet20", "--criterion", criterion, "-o", str(out), *common, *extra])
        assert r.exit_code == 0, r.output
        plan = load_plan(out)
        assert plan.budget["kind"] == "latency" and plan.has_keep and plan.criterion["kind"] == criterion
        assert plan.flops < parent_plan.flops
        assert generate(plan, weights=weights)(torch.randn(1, *SIZE)).shape == (1, 10)
    from slimkit.recipe import parse_recipe, read_yaml
    recipe = parse_recipe(read_yaml("name: r\narch: resnet20\nnum_classes: 10\nprune: {latency: 60%, method: uniform, "
                                    f"weights: {weights}, criterion: l1}}\n"))
    assert recipe.prune.criterion == "l1" and recipe.prune.budget_key == "latency"


def test_a_pruned_runs_checkpoint_given_as_the_parent_says_how_to_use_it(tmp_path):
    """generate(plan, weights=<the fine-tuned run's checkpoint>) (loading the trained thin model) was told
    only to train a full model; the message now also names the way to load or export that model."""
    from slimkit.checkpoint import CheckpointError, write_checkpoint
    thin = prune("resnet20", "50%", method="uniform", round_to=1, num_classes=10)
    thin = choose_channels(thin, build_model(thin.arch, thin.arch_kwargs).state_dict(), "l1")
    path = write_checkpoint(tmp_path / "checkpoint.pt", model=generate(thin).state_dict(), plan=thin, config={},
                            epoch=1, metrics=[])
    with pytest.raises(CheckpointError) as info:
        generate(thin, weights=path)
    text = str(info.value)
    assert "(a pruned plan), not the full" in text and "slimkit.artifacts.model_from_checkpoint" in text, text


def test_a_widened_plan_is_refused_before_the_data_is_loaded(tmp_path, monkeypatch):
    """`train --init inherit` of an --expand plan loaded the whole dataset, then said no trained model holds its
    channels."""
    import slimkit.train as train_module

    parent = tmp_path / "parent.pt"
    torch.save(build_model("resnet20", {"num_classes": 10}).state_dict(), parent)
    wide = prune("resnet20", "50%", method="uniform", round_to=8, expand=1.25, num_classes=10)
    monkeypatch.setattr(train_module, "load_data", lambda *a, **k: pytest.fail("the data was loaded"))
    ft = TrainConfig(data="synthetic", epochs=1, schedule="finetune", init="inherit", init_from=str(parent))
    with pytest.raises(PlanError, match="widened plan"):
        train(wide, tmp_path / "ft", ft)
    assert not (tmp_path / "ft").exists()


@pytest.mark.parametrize("arch", ["torchvision:squeezenet1_1", "torchvision:googlenet", "timm:deit_tiny_distilled_patch16_224"])
def test_a_new_classifier_is_whatever_the_classes_shape(arch):
    """The classifier was the last linear (or timm's get_classifier()): a conv head (SqueezeNet) and a distilled
    model's (head, head_dist) pair crashed with a KeyError, GoogLeNet's auxiliary classifiers were refused as
    'differing outside the classifier'. Every weight the classes shape is new; every other is the parent's."""
    from slimkit.generator import full_plan
    from slimkit.train import _with_new_classifier

    size = (3, 224, 224) if "deit" in arch else (3, 64, 64)
    parent = generate(full_plan(arch, num_classes=100, input_size=size), seed=1)
    fresh = generate(full_plan(arch, num_classes=10, input_size=size), seed=2)
    new = _with_new_classifier(fresh, parent).state_dict()
    old = parent.state_dict()
    replaced = {k for k in new if new[k].shape != old[k].shape}
    assert replaced and all(new[k].shape[0] == 10 for k in replaced if new[k].dim() > 0 and old[k].shape[0] == 100)
    assert all(torch.equal(new[k], old[k]) for k in new if k not in replaced)


def test_a_size_alone_with_a_parent_of_other_input_channels_takes_the_parents_channels(tmp_path):
    """`slimkit prune timm:resnet18 --weights GRAY --criterion l1 --input-size 64` (a 1-channel parent) read the
    size as 3x64x64, took the parent's in_chans 1 for the model, and failed tracing it: 'expected input[1, 3,
    64, 64] to have 1 channels ... --in-chans changes the model's', an option the user never gave."""
    gray = tmp_path / "gray.pt"
    torch.save(build_model("resnet20", {"in_chans": 1}).state_dict(), gray)
    result = CliRunner().invoke(app, ["prune", "resnet20", "--weights", str(gray), "--criterion", "l1", "--flops",
                                      "50%", "--input-size", "32", "--round-to", "1",
                                      "--out", str(tmp_path / "gray.json")])
    assert result.exit_code == 0, result.output
    plan = load_plan(tmp_path / "gray.json")
    assert tuple(plan.input_size) == (1, 32, 32) and plan.arch_kwargs.get("in_chans") == 1
    generate(plan, weights=str(gray))  # the parent's weights load into it


def test_a_classifier_whose_output_layer_slimkit_cannot_find_is_refused_for_that_reason(tmp_path):
    """SqueezeNet (its classifier a 1x1 conv, no get_classifier()) fine-tuned on other classes was refused
    because '--init inherit gives the classifier new rows only to a model built with a num_classes argument':
    torchvision's squeezenet1_1 takes one."""
    parent = tmp_path / "squeezenet.pt"
    torch.save(build_model("torchvision:squeezenet1_1", {}).state_dict(), parent)
    plan = slimkit.full_plan("torchvision:squeezenet1_1", input_size=(3, 64, 64))
    ft = TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=1, batch_size=8, schedule="finetune",
                     init="inherit", init_from=str(parent))
    with pytest.raises(PlanError) as info:
        train(plan, tmp_path / "ft", ft)
    text = str(info.value)
    assert "torchvision:squeezenet1_1's is neither" in text and "num_classes argument" not in text, text
    assert not (tmp_path / "ft").exists()


@pytest.mark.parametrize("arch,task", [("torchvision:lraspp_mobilenet_v3_large", "segmentation"),
                                       ("torchvision:ssdlite320_mobilenet_v3_large", "detection")])
def test_a_task_model_fine_tuned_on_other_classes_is_refused_for_that_reason(tmp_path, arch, task):
    """A COCO-style detector (91 classes) or a 21-class segmenter fine-tuned on shapes' 4 was refused because
    '--init inherit gives the classifier new rows only to a model built with a num_classes argument': both take
    one. New class rows are given to classifiers only."""
    parent = tmp_path / "parent.pt"
    torch.save(build_model(arch, {"num_classes": 21}).state_dict(), parent)
    plan = slimkit.full_plan(arch, num_classes=21, input_size=(3, 64, 64))
    ft = TrainConfig(data="shapes", epochs=1, max_steps_per_epoch=1, batch_size=2, schedule="finetune",
                     init="inherit", init_from=str(parent))
    with pytest.raises(PlanError) as info:
        train(plan, tmp_path / "ft", ft)
    text = str(info.value)
    assert f"{arch} is a {task} model" in text and "num_classes argument" not in text, text
    assert not (tmp_path / "ft").exists()


def test_a_plan_cut_from_a_parent_with_other_classes_trains_from_scratch_on_the_datas(tmp_path):
    """Scratch-E/B of a plan cut from an ImageNet parent, on the user's data (the recipe's compare: [scratch-e]
    beside the fine-tuning): 'the plan is for 1000 classes but synthetic has 10: prune again with this data (or
    --num-classes)', and pruning with --num-classes 10 then refuses the 1000-class parent. The plan's classes
    are the parent's, not a choice; from scratch the head is random either way."""
    parent = tmp_path / "parent.pt"
    torch.save(build_model("resnet20", {"num_classes": 5}).state_dict(), parent)
    plan = choose_channels(prune("resnet20", "50%", method="uniform", round_to=1, num_classes=5), parent, "l1")
    cfg = TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=1, batch_size=16, schedule="scratch-e")
    said = []
    train(plan, tmp_path / "se", cfg, log=said.append)
    assert any(m.startswith("classes: the plan holds its parent's 5 classes; training from scratch sizes it for "
                            "synthetic's 10") for m in said), said
    assert load_plan(tmp_path / "se" / "plan.json").num_classes == 10
    train(plan, tmp_path / "se", cfg, resume=True, extend_to=2)
    chosen = prune("resnet20", "50%", method="uniform", round_to=1, num_classes=5)  # 5 classes asked for: refused
    with pytest.raises(PlanError, match="the plan is for 5 classes but synthetic has 10: prune again"):
        train(chosen, tmp_path / "chosen", cfg)


def test_a_run_fine_tuned_from_a_slimkit_checkpoint_or_a_backbone_is_recognised_by_its_parent(tmp_path):
    """A recipe's next run refused its own fine-tuned folder: a slimkit checkpoint parent with other classes was read
    with the run's classes ('trained with other arguments (num_classes 5, not 10)'), and a backbone run had recorded
    the fingerprint of the random stand-in head it was given, not of the file."""
    from slimkit.checkpoint import write_checkpoint
    from slimkit.generator import full_plan
    from slimkit.pipeline import _check_trained_parent

    write_checkpoint(tmp_path / "parent.pt", model=build_model("resnet20", {"num_classes": 5}).state_dict(),
                     plan=full_plan("resnet20", num_classes=5, input_size=SIZE), config={}, epoch=1, metrics=[])
    torch.save({k: v for k, v in build_model("resnet20", {}).state_dict().items() if not k.startswith("fc.")},
               tmp_path / "backbone.pt")
    plan = prune("resnet20", "50%", method="uniform", round_to=1)
    for parent in ("parent.pt", "backbone.pt"):
        ft = TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=1, batch_size=16, schedule="finetune",
                         init="inherit", init_from=str(tmp_path / parent))
        train(plan, tmp_path / parent.replace(".pt", ""), ft)
        _check_trained_parent(tmp_path / parent.replace(".pt", ""), ft)  # raised for both


def test_a_chained_fine_tuning_resumes_with_the_plan_it_was_given(tmp_path):
    """Run 1 fine-tunes the full ImageNet model (its default head) onto 3 classes; run 2 fine-tunes run 1's plan.json
    from run 1 onto 10:
    --resume of run 2 with that plan.json was refused ('not this plan'): the run recorded the classes of run 1's
    original plan, not of the plan it was given."""
    from PIL import Image

    for split in ("train", "val"):
        for c in range(3):
            (tmp_path / "three" / split / f"c{c}").mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (80 * c, 10 * i, 0)).save(tmp_path / "three" / split / f"c{c}" / f"{i}.png")
    imagenet = tmp_path / "in1k.pt"
    torch.save(build_model("timm:resnet18", {}).state_dict(), imagenet)
    base = dict(epochs=1, max_steps_per_epoch=1, batch_size=2, schedule="finetune", init="inherit")
    from slimkit.generator import full_plan

    default_head = full_plan("timm:resnet18", input_size=SIZE)  # a plan that keeps the 1000-class head
    assert default_head.num_classes is None
    train(default_head, tmp_path / "run1", TrainConfig(data=f"imagefolder:{tmp_path / 'three'}",
                                                       init_from=str(imagenet), **base))
    given = load_plan(tmp_path / "run1" / "plan.json")
    assert given.num_classes == 3
    second = TrainConfig(data="synthetic", init_from=str(tmp_path / "run1" / "checkpoint.pt"), **base)
    train(given, tmp_path / "run2", second)
    train(given, tmp_path / "run2", second, resume=True, extend_to=2)


def test_a_backbone_whose_head_is_a_sequential_fine_tunes_with_a_new_one(tmp_path):
    """torchvision's MobileNet-V3 saved with classifier = nn.Identity() lacks a whole Sequential head (two linears),
    and the stand-in filled only the last one: 'missing classifier.0.weight, classifier.0.bias'."""
    import torchvision

    backbone = torchvision.models.mobilenet_v3_small()
    backbone.classifier = nn.Identity()
    torch.save(backbone.state_dict(), tmp_path / "mbv3s.pt")
    ft = TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=1, batch_size=4, schedule="finetune",
                     init="inherit", init_from=str(tmp_path / "mbv3s.pt"))
    said = []
    train(prune("torchvision:mobilenet_v3_small", "50%", method="uniform", round_to=8, input_size=(3, 64, 64)),
          tmp_path / "ft", ft, log=said.append)
    assert any("holds no classifier (a backbone)" in m for m in said), said
    trained = load_checkpoint(tmp_path / "ft" / "checkpoint.pt")["model"]
    assert trained["classifier.3.weight"].shape[0] == 10


def test_a_distilled_transformer_fine_tunes_onto_new_classes(tmp_path):
    """timm's distilled DeiT returns (head, head_dist) from get_classifier(): its parent's classes could not be read,
    and a 1000-class state dict fine-tuned on 10 classes was refused with a shape mismatch of head.weight."""
    parent = tmp_path / "deit.pt"
    torch.save(build_model("timm:deit_tiny_distilled_patch16_224", {}).state_dict(), parent)
    ft = TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=1, batch_size=2, schedule="finetune",
                     init="inherit", init_from=str(parent))
    said = []
    train("timm:deit_tiny_distilled_patch16_224", tmp_path / "ft", ft, log=said.append)
    assert any("was trained for 1000 classes" in m for m in said), said
    trained = load_checkpoint(tmp_path / "ft" / "checkpoint.pt")["model"]
    assert trained["head.weight"].shape[0] == 10 and trained["head_dist.weight"].shape[0] == 10


def test_a_plan_cut_from_a_whole_model_refuses_a_backbone_parent_up_front(tmp_path):
    """It was refused after the log said weights were inherited, advising `slimkit prune --weights the weights given`."""
    parent, backbone = tmp_path / "whole.pt", tmp_path / "backbone.pt"
    state = build_model("resnet20", {}).state_dict()
    torch.save(state, parent)
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, backbone)
    cut = choose_channels(prune("resnet20", "50%", method="uniform", round_to=1), parent, "l1")
    ft = TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=1, batch_size=16, schedule="finetune",
                     init="inherit", init_from=str(backbone))
    with pytest.raises(PlanError, match=r"holds no classifier, but the plan's channels were chosen on .*whole\.pt"):
        train(cut, tmp_path / "ft", ft)


def test_a_refused_parent_is_not_first_said_to_be_inherited(tmp_path):
    """The 'classes: ... every weight but the classifier's is inherited' line came before the weights were read,
    so a parent of another architecture was first said to be inherited, then refused."""
    other = tmp_path / "resnet34.pt"
    torch.save(build_model("timm:resnet34", {}).state_dict(), other)
    said = []
    with pytest.raises(SlimkitError, match="does not hold weights of the full timm:resnet18"):
        finetune(prune("timm:resnet18", "50%", method="uniform", round_to=8, input_size=SIZE), tmp_path / "ft", other,
                 said)
    assert said and not any(m.startswith("classes:") for m in said), said


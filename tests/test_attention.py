"""Attention heads and the embedding width as channel groups (slimkit.attention)."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

from slimkit.attention import input_size_kwargs
from slimkit.budget import uniform_widths
from slimkit.flops import count_flops, count_params
from slimkit.gates import attach_gates
from slimkit.generator import resize_model
from slimkit.graph import analyze

SIZE = (3, 32, 32)


def tiny_vit(**kw) -> torch.nn.Module:
    """timm's ViT-Tiny with two blocks at 32 px: 4 patches + the class token, 3 heads of 64."""
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=10, **kw).eval()


def graph_of(model: torch.nn.Module, size=SIZE):
    graph = analyze(model, size)
    graph.other_macs = count_flops(model, size) - graph.count_flops()
    return graph


def test_heads_embedding_and_mlp_are_groups():
    graph = graph_of(tiny_vit())
    assert graph.head_dims == {"blocks.0.attn.qkv": 64, "blocks.1.attn.qkv": 64}
    assert graph.groups["blocks.0.attn.qkv"].width == 192 and graph.groups["blocks.0.attn.qkv"].divisor == 64
    assert graph.groups["blocks.0.mlp.fc1"].width == 768
    # the embedding width is one group: patch embedding, class token, positional embedding, norms, head input
    embed = graph.groups["patch_embed.proj"]
    assert embed.width == 192
    for fqn, dim in [("cls_token", 2), ("pos_embed", 2), ("norm.weight", 0), ("head.weight", 1),
                     ("blocks.1.mlp.fc2.weight", 0), ("blocks.0.attn.qkv.weight", 1)]:
        assert graph.param_dims[fqn][dim] == [("patch_embed.proj", 1)], fqn
    # q, k and v are three copies of the head space; the projection reads one
    # q, k, v rows are three copies of the channel list one after another (not each channel three times)
    assert graph.param_dims["blocks.0.attn.qkv.weight"][0] == [("blocks.0.attn.qkv", 1)] * 3
    assert graph.param_dims["blocks.0.attn.proj.weight"][1] == [("blocks.0.attn.qkv", 1)]
    assert graph.frozen == {"head": "network output"}
    assert graph.other_macs == 0  # every counted MAC is explained by a conv/linear or attention term


def test_cpu_attention_is_counted_like_the_explicit_matmuls():
    model = tiny_vit()
    fused = count_flops(model, SIZE)
    for block in model.blocks:
        block.attn.fused_attn = False  # q @ k^T and attn @ v as plain matmuls
    assert count_flops(model, SIZE) == fused
    # 2 blocks x 3 heads x 5x5 tokens x (64 + 64)
    assert analyze(model, SIZE).attention_macs() == 2 * 3 * 25 * 128


@pytest.mark.parametrize("fused", [True, False])
def test_generated_widths_run_and_count_exactly(fused):
    model = tiny_vit()
    for block in model.blocks:
        block.attn.fused_attn = fused
    graph = graph_of(model)
    widths = {"patch_embed.proj": 96, "blocks.0.attn.qkv": 64, "blocks.1.attn.qkv": 128,
              "blocks.0.mlp.fc1": 200, "blocks.1.mlp.fc1": 40}
    resize_model(model, graph, widths)
    assert model.blocks[0].attn.num_heads == 1 and model.blocks[0].attn.attn_dim == 64
    assert model.blocks[1].attn.num_heads == 2 and model.blocks[1].attn.qkv.out_features == 384
    assert model.pos_embed.shape == (1, 5, 96) and model.cls_token.shape == (1, 1, 96)
    out = model(torch.randn(2, *SIZE))
    assert out.shape == (2, 10)
    assert count_flops(model, SIZE) == graph.count_flops(widths)
    assert count_params(model) == graph.count_params(widths)
    # attention MACs follow the heads: 1 + 2 heads of 3 + 3 at full width
    assert graph.attention_macs(widths) * 2 == graph.attention_macs()


def test_uniform_plan_keeps_whole_heads():
    graph = graph_of(tiny_vit())
    for factor in (0.2, 0.5, 0.8):
        widths = uniform_widths(graph, factor)
        assert all(widths[n] % 64 == 0 and widths[n] >= 64 for n in graph.head_dims)


def test_head_gates_silence_whole_heads():
    model = tiny_vit()
    graph = graph_of(model)
    supernet = attach_gates(model, graph, graph.full_widths())
    assert supernet.gate("blocks.0.attn.qkv").shape == (3,)  # one gate per head
    assert supernet.gate("blocks.0.mlp.fc1").shape == (768,)
    seen = {}
    model.blocks[0].attn.proj.register_forward_hook(lambda m, i, o: seen.setdefault("in", i[0].detach()))
    with torch.no_grad():
        supernet.gate("blocks.0.attn.qkv")[1] = 0.0
    x = torch.randn(4, *SIZE)
    loss = model(x).logsumexp(-1).mean() + supernet.penalty_mean()
    loss.backward()
    assert torch.all(seen["in"][..., 64:128] == 0) and seen["in"][..., :64].abs().sum() > 0
    assert supernet.gate("blocks.0.attn.qkv").grad is not None
    assert supernet.gate("blocks.0.mlp.fc1").grad.abs().sum() > 0
    # a head gate weighs as its 64 channels in the mean the sparsity loss steers
    channels = 192 + 2 * 192 + 2 * 768
    assert supernet.gate_mean() == pytest.approx((channels - 64) / channels)
    supernet.remove()


def test_pruned_vit_exports_with_parity(tmp_path):
    from slimkit.exporters.onnx import export

    model = tiny_vit()
    graph = graph_of(model)
    resize_model(model, graph, uniform_widths(graph, 0.5))
    result = export(model, SIZE, tmp_path / "vit.onnx", atol=1e-4, check_parity=True)
    assert result.details["parity_max_abs_diff"] <= 1e-4


def test_torchvision_multihead_attention_ties_heads_to_the_embedding():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                                                 hidden_dim=64, mlp_dim=128, num_classes=10).eval()
    graph = graph_of(model)
    # nn.MultiheadAttention derives head_dim from its input width: no head group of its own,
    # the embedding group moves in whole heads of 32 channels
    assert graph.head_dims == {}
    assert graph.groups["conv_proj"].divisor == 32
    widths = dict(graph.full_widths(), conv_proj=32)
    resize_model(model, graph, widths)
    attn = model.encoder.layers[0].self_attention
    assert (attn.embed_dim, attn.num_heads, attn.head_dim, model.hidden_dim) == (32, 1, 32, 32)
    assert model(torch.randn(2, *SIZE)).shape == (2, 10)
    assert count_flops(model, SIZE) == graph.count_flops(widths)


def test_input_size_kwargs():
    assert input_size_kwargs(tiny_vit(), (3, 64, 64)) == {"img_size": 64}
    assert input_size_kwargs(tiny_vit(), (3, 32, 32)) == {}
    tv = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2,
                                              hidden_dim=64, mlp_dim=128)
    assert input_size_kwargs(tv, (3, 64, 64)) == {"image_size": 64}
    assert input_size_kwargs(torchvision.models.resnet18(), (3, 64, 64)) == {}
    # timm's LevitDistilled takes `*args, **kwargs` and hands img_size to Levit: still rebuilt
    levit = timm.create_model("levit_128s")
    assert input_size_kwargs(levit, (3, 64, 64)) == {"img_size": 64}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["timm:deit_small_patch16_224", "timm:swin_tiny_patch4_window7_224",
                                  "torchvision:swin_t"])
def test_transformer_zoo_prunes_heads_and_mlps(arch, tmp_path):
    from slimkit import generate
    from slimkit.exporters.onnx import export
    from slimkit.generator import channel_graph
    from slimkit.prune import prune

    size = (3, 64, 64)
    plan = prune(arch, "50%", method="uniform", input_size=size)  # verify=True: G counts the plan's MACs
    graph = channel_graph(plan.arch, plan.arch_kwargs, size)
    assert abs(plan.flops - plan.budget["value"]) / plan.budget["value"] <= 0.01
    assert any(plan.groups[n]["width"] < plan.groups[n]["full"] for n in plan.groups if ".mlp." in n)
    heads = list(graph.head_dims) or [n for n, g in graph.groups.items() if g.divisor > 8]
    assert heads and any(plan.groups[n]["width"] < plan.groups[n]["full"] for n in heads)
    model = generate(plan)
    result = export(model, size, tmp_path / "m.onnx", atol=1e-4, check_parity=True)
    assert result.details["parity_max_abs_diff"] <= 1e-4

"""Where slimkit computes: channels-last placement and out-of-place activations change no values."""

import pytest
import torch
from torch import nn

from slimkit.runtime import out_of_place_activations, place_batch, place_model, resolve_device
from slimkit.errors import SlimkitError
from slimkit.gates import attach_gates
from slimkit.generator import build_model, channel_graph


def test_place_batch_makes_image_batches_channels_last_only():
    cpu = torch.device("cpu")
    x = torch.randn(2, 3, 8, 8)
    assert place_batch(x, cpu).is_contiguous(memory_format=torch.channels_last)
    assert place_batch(x, cpu, channels_last=False).is_contiguous()
    tokens = torch.randn(2, 5, 7)  # not an image batch: left as it is
    assert place_batch(tokens, cpu) is tokens


def _mobilenet(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mobilenet_v1")  # ReLU6: an activation that clones its input when in place


def test_out_of_place_activations_give_bit_identical_gradients():
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 1000, (4,))
    grads = []
    for switch in (False, True):
        model = _mobilenet()
        if switch:
            assert out_of_place_activations(model)
        nn.functional.cross_entropy(model(x), y).backward()
        grads.append(model.conv_stem.weight.grad)
    assert torch.equal(grads[0], grads[1])


def test_channels_last_changes_strides_not_values():
    cpu = torch.device("cpu")
    x = torch.randn(4, 3, 32, 32)
    plain = _mobilenet()(x)
    model = place_model(_mobilenet(), cpu)
    assert model.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    # Same maths in another summation order: equal up to float rounding.
    torch.testing.assert_close(model(place_batch(x, cpu)), plain, rtol=0, atol=1e-3 * plain.abs().max().item())


def test_only_activations_that_clone_are_switched():
    model = nn.Sequential(nn.ReLU(inplace=True), nn.ReLU6(inplace=True), nn.Hardswish(inplace=True),
                          nn.SiLU(inplace=True), nn.Dropout(inplace=True))
    changed = out_of_place_activations(model)
    assert changed == [model[1], model[2], model[3]]
    assert model[0].inplace and model[4].inplace and not model[1].inplace


def test_gated_supernet_restores_inplace_on_remove():
    graph = channel_graph("mobilenet_v1", {}, (3, 32, 32))
    model = build_model("mobilenet_v1")
    before = [m.inplace for m in model.modules() if isinstance(m, nn.ReLU6)]
    supernet = attach_gates(model, graph, graph.full_widths())
    assert not any(m.inplace for m in model.modules() if isinstance(m, nn.ReLU6))
    supernet.remove()
    assert [m.inplace for m in model.modules() if isinstance(m, nn.ReLU6)] == before


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(SlimkitError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"

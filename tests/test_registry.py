import pytest

from slimkit import RegistryError, create_model
from slimkit.registry import default_input_size, list_archs, resolve


@pytest.mark.parametrize("name,canonical", [
    ("mobilenet_v1", "timm:mobilenetv1_100"), ("mobilenet_v2", "torchvision:mobilenet_v2"),
    ("resnet50", "torchvision:resnet50"), ("timm:resnet50", "timm:resnet50"),
    ("resnet56", "slimkit:resnet56"), ("vgg16_cifar", "slimkit:vgg16_cifar"),
    ("torchvision:vgg16_bn", "torchvision:vgg16_bn"), ("efficientnet_b0", "torchvision:efficientnet_b0"),
])
def test_resolve(name, canonical):
    assert resolve(name).canonical == canonical


def test_unknown_name_suggests_close_matches():
    with pytest.raises(RegistryError, match="did you mean.*mobilenet_v1"):
        resolve("mobilenet_v11")
    with pytest.raises(RegistryError, match="unknown model source"):
        resolve("keras:resnet50")


def test_num_classes_and_in_chans():
    m = create_model("timm:resnet18", num_classes=10, in_chans=1)
    assert m.fc.out_features == 10 and m.conv1.in_channels == 1
    m = create_model("resnet56", num_classes=100)
    assert m.fc.out_features == 100
    with pytest.raises(RegistryError, match="3-channel"):
        create_model("torchvision:resnet18", in_chans=1)


def test_default_input_sizes():
    assert default_input_size("mobilenet_v1") == (3, 224, 224)
    assert default_input_size("torchvision:inception_v3") == (3, 299, 299)
    assert default_input_size("resnet56", create_model("resnet56")) == (3, 32, 32)
    assert default_input_size("timm:resnet18", in_chans=1) == (1, 224, 224)


def test_list_archs_filters():
    rows = dict(list_archs("mobilenet*"))
    assert "mobilenet_v1" in rows and "torchvision:mobilenet_v2" in rows
    assert all("mobilenet" in n for n in rows)

"""Gate learning and training with a task loss: the shapes dataset, segmentation's loss and mIoU, and
``prune(loss_fn=, data=)`` on a user's own loader, with one-line errors for what does not fit."""

import json

import pytest
import torch
from torch import nn

import slimkit
from slimkit import data as data_module
from slimkit.data import load_data, make_loader
from slimkit.errors import SlimkitError
from slimkit.prune import GateOptions, LatencyOptions
from slimkit.shapes import NUM_CLASSES, draw_sample
from slimkit.task_losses import confusion_matrix, segmentation_loss, segmentation_scores
from slimkit.train import TrainConfig, train


# ------------------------------------------------------------------------------ the shapes dataset
def test_shapes_are_the_same_for_a_seed_and_differ_across_seeds():
    a, b = draw_sample(3, 7, (40, 48)), draw_sample(3, 7, (40, 48))
    assert a.image.shape == (3, 40, 48) and a.image.dtype == torch.uint8 and a.mask.shape == (40, 48)
    for x, y in ((a.image, b.image), (a.mask, b.mask), (a.boxes, b.boxes), (a.labels, b.labels)):
        assert torch.equal(x, y)
    assert not torch.equal(a.image, draw_sample(4, 7, (40, 48)).image)
    assert not torch.equal(a.image, draw_sample(3, 8, (40, 48)).image)


def test_shape_masks_and_boxes_agree():
    classes_seen = set()
    for index in range(40):
        s = draw_sample(0, index, (48, 48))
        assert len(s.boxes) == len(s.labels) >= 1
        covered = torch.zeros(NUM_CLASSES, 48, 48, dtype=torch.bool)
        for (x0, y0, x1, y1), label in zip(s.boxes.long().tolist(), s.labels.tolist()):
            assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48
            inside = s.mask[y0:y1, x0:x1] == label
            assert inside.any()  # a box holds pixels of its class...
            covered[label, y0:y1, x0:x1] = True
            classes_seen.add(label)
        for label in range(1, NUM_CLASSES):  # ...and every pixel of a class lies in a box of that class
            assert torch.all(covered[label][s.mask == label])
    assert classes_seen == {1, 2, 3}


def test_shapes_data_loads_in_disjoint_splits_and_batches_images_with_masks():
    bundle = load_data("shapes", data_dir=None, input_size=(3, 32, 32), val_size=8, seed=1)
    assert bundle.num_classes == NUM_CLASSES and len(bundle.val) == 8
    assert not torch.equal(bundle.train.sample(0).image, bundle.test.sample(0).image)
    assert not torch.equal(bundle.test.sample(0).image, bundle.val.sample(0).image)
    x, masks = next(iter(make_loader(bundle.val, 4, shuffle=False)))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and masks.shape == (4, 32, 32)
    assert masks.dtype == torch.int64 and int(masks.max()) < NUM_CLASSES
    with pytest.raises(SlimkitError, match="3-channel"):
        load_data("shapes", data_dir=None, input_size=(1, 32, 32))


# ------------------------------------------------------------------------------ loss and metrics
def test_miou_and_pixel_accuracy_on_a_hand_made_example():
    target = torch.tensor([[0, 0, 255], [1, 1, 1]])  # 255: ignored
    pred = torch.tensor([[0, 1, 2], [1, 1, 1]])
    confusion = confusion_matrix(pred, target, 3)
    assert confusion.tolist() == [[1, 1, 0], [0, 3, 0], [0, 0, 0]]
    scores = segmentation_scores(confusion)
    # class 0: 1 hit / union 2; class 1: 3 / 4; class 2 occurs nowhere: not counted
    assert scores["iou"] == [pytest.approx(0.5), pytest.approx(0.75), None]
    assert scores["miou"] == pytest.approx(0.625)
    assert scores["pixel_accuracy"] == pytest.approx(4 / 5)


def test_segmentation_loss_adds_half_the_aux_loss():
    class TwoHeads(nn.Module):
        def __init__(self, aux: bool):
            super().__init__()
            self.aux = aux
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            out = self.conv(x)
            return {"out": out, "aux": 2 * out} if self.aux else {"out": out}

    torch.manual_seed(0)
    x, masks = torch.randn(2, 3, 8, 8), torch.randint(0, 4, (2, 8, 8))
    plain = TwoHeads(False)
    with_aux = TwoHeads(True)
    with_aux.load_state_dict(plain.state_dict())
    out = plain(x)["out"]
    expected = nn.functional.cross_entropy(out, masks) + 0.5 * nn.functional.cross_entropy(2 * out, masks)
    assert segmentation_loss(plain, (x, masks)).item() == pytest.approx(nn.functional.cross_entropy(out, masks).item())
    assert segmentation_loss(with_aux, (x, masks)).item() == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------------------------------ prune(loss_fn=, data=)
def _build_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))


def _batches(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 12, 12, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


FAST = dict(input_size=(3, 12, 12), round_to=1, latency=LatencyOptions(check=False))


def test_gates_learn_on_a_users_loader_with_their_loss():
    calls = []

    def loss_fn(model, batch):
        x, y = batch
        calls.append(len(y))
        return nn.functional.cross_entropy(model(x), y) + 0.0 * model(x).pow(2).mean()

    plan = slimkit.prune(_build_net, "50%", loss_fn=loss_fn, data=_batches(), val_data=_batches(2, seed=1),
                         gates=GateOptions(steps=12, device="cpu"), **FAST)
    s = plan.search
    assert plan.method == "scratch" and s["data"] == "your loader" and s["steps"] == 12
    assert s["val_score_name"] == "-loss" and s["val_score"] < 0
    assert len(calls) >= 12  # every step's loss is the user's
    assert s["gates"]["mean"] < 1.0  # the gates moved
    assert abs(plan.flops / s["full_flops"] - 0.5) <= 0.01


def test_a_users_loader_without_loss_fn_learns_with_cross_entropy():
    plan = slimkit.prune(_build_net, "50%", data=_batches(), gates=GateOptions(steps=6, device="cpu"), **FAST)
    assert "val_accuracy" in plan.search and plan.search["data"] == "your loader"


@pytest.mark.parametrize("loss_fn, data, message", [
    (lambda model, batch: model(batch[0]).sum(1), None, "must return a scalar tensor, got one of shape \\[8\\]"),
    (lambda model, batch: 1.0, None, "must return a scalar tensor .*got float"),
    (lambda model, batch: model(batch[0]).sum().detach(), None, "does not depend on the model"),
    (None, [{"image": torch.zeros(2, 3, 12, 12)}], "data yields a dict; without loss_fn slimkit needs"),
    (None, [(torch.zeros(2, 3, 12, 12), torch.zeros(2))], "N integer labels"),
    (None, torch.utils.data.TensorDataset(torch.zeros(2, 3, 12, 12)), "must be a loader of batches"),
    (None, iter(_batches()), "one-shot iterator"),
    (None, [], "yields no batch"),
])
def test_a_bad_loss_or_loader_is_one_clear_line(loss_fn, data, message):
    with pytest.raises(SlimkitError, match=message) as err:
        slimkit.prune(_build_net, "50%", loss_fn=loss_fn, data=_batches() if data is None else data,
                      gates=GateOptions(steps=2, device="cpu"), **FAST)
    assert "\n" not in str(err.value)


def test_loss_fn_without_data_or_with_uniform_is_refused():
    with pytest.raises(SlimkitError, match="pass data=loader"):
        slimkit.prune(_build_net, "50%", loss_fn=lambda m, b: m(b).sum(), **FAST)
    with pytest.raises(SlimkitError, match="method='scratch'"):
        slimkit.prune(_build_net, "50%", method="uniform", data=_batches(), **FAST)


def test_a_segmentation_model_refuses_classification_data_in_one_line():
    with pytest.raises(SlimkitError, match="segmentation model: it learns gates on --data shapes"):
        slimkit.prune("lraspp_mobilenet_v3_large", "50%", gates=GateOptions(data="cifar10"))


# ------------------------------------------------------------------------------ end to end (slow: LR-ASPP)
@pytest.mark.slow
def test_lraspp_learns_gates_on_shapes_and_trains_an_epoch_reporting_miou(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "SHAPES_SPLITS", {"train": 16, "val": 8, "test": 8})
    plan = slimkit.prune("lraspp_mobilenet_v3_large", "50%",
                         gates=GateOptions(steps=3, batch_size=4, device="cpu"), **{**FAST, "input_size": (3, 32, 32)})
    s = plan.search
    assert plan.method == "scratch" and plan.num_classes == NUM_CLASSES and s["data"] == "shapes"
    assert s["val_score_name"] == "mIoU" and 0.0 <= s["val_score"] <= 1.0
    train(plan, tmp_path / "run", TrainConfig(epochs=1, batch_size=4, max_steps_per_epoch=2, workers=0))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    final = metrics["final"]
    assert 0.0 <= final["test_miou"] <= 1.0 and 0.0 <= final["test_pixel_accuracy"] <= 1.0
    assert len(final["test_iou"]) == NUM_CLASSES
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"] == "shapes"


def test_shapes_detection_batches_carry_each_images_boxes_and_labels():
    bundle = load_data("shapes", data_dir=None, input_size=(3, 40, 40), val_size=0, seed=2)
    images, targets = bundle.test.detection_batch(torch.tensor([0, 1]))
    for i, (image, target) in enumerate(zip(images, targets)):
        sample = bundle.test.sample(i)
        assert image.shape == (3, 40, 40) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert torch.equal(target["boxes"], sample.boxes) and torch.equal(target["labels"], sample.labels)


@pytest.mark.slow
def test_ssdlite_learns_gates_on_shapes_boxes_with_its_own_losses(monkeypatch):
    monkeypatch.setattr(data_module, "SHAPES_SPLITS", {"train": 8, "val": 2, "test": 2})
    plan = slimkit.prune("ssdlite320_mobilenet_v3_large", "50%", round_to=8, latency=LatencyOptions(check=False),
                         gates=GateOptions(steps=3, batch_size=2, device="cpu"))
    s = plan.search
    assert plan.method == "scratch" and plan.num_classes == NUM_CLASSES and s["data"] == "shapes"
    assert s["val_score_name"] == "-loss" and s["val_score"] < 0 and s["gates"]["mean"] < 1.0
    assert abs(plan.flops / s["full_flops"] - 0.5) <= 0.01

"""Training torchvision detectors with `slimkit train`: their own losses on the shapes boxes, COCO mAP
from pycocotools, resumable like any run, and one-line refusals of data without boxes."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import slimkit
from slimkit import data as data_module
from slimkit.cli import app
from slimkit.errors import SlimkitError
from slimkit.models.tasks import set_detector_input_size
from slimkit.pipeline import run_recipe, summary_markdown
from slimkit.prune import LatencyOptions
from slimkit.recipe import RecipeError, load_recipe
from slimkit.shapes import draw_sample
from slimkit.task_losses import detection_scores
from slimkit.train import TrainConfig, headline_metric, train

runner = CliRunner()
SIDE = 64  # the detector's input: small enough for a CPU test, large enough for SSDlite's six levels


@pytest.fixture(scope="module")
def ssd_plan(tmp_path_factory):
    """SSDlite at half its MACs, 64 px, a 4-class head (the shapes classes and background)."""
    plan = slimkit.prune("ssdlite320_mobilenet_v3_large", "50%", method="uniform", input_size=(3, SIDE, SIDE),
                         num_classes=4, round_to=8, latency=LatencyOptions(check=False))
    path = tmp_path_factory.mktemp("plan") / "ssd.json"
    slimkit.save_plan(plan, path)
    return path


@pytest.fixture
def few_shapes(monkeypatch):
    monkeypatch.setattr(data_module, "SHAPES_SPLITS", {"train": 8, "val": 0, "test": 4})


# ------------------------------------------------------------------------------ mAP
def _target(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}


def test_map_is_one_for_exact_boxes_and_falls_for_misplaced_or_missing_ones():
    targets = [_target([[2, 2, 20, 20], [30, 30, 60, 50]], [1, 3]), _target([[10, 5, 40, 25]], [2])]

    def found(boxes, labels):
        return {**_target(boxes, labels), "scores": torch.linspace(0.9, 0.5, len(labels))}

    exact = [found([[2, 2, 20, 20], [30, 30, 60, 50]], [1, 3]), found([[10, 5, 40, 25]], [2])]
    assert detection_scores(targets, exact, num_classes=4) == {"map": pytest.approx(1.0), "map50": pytest.approx(1.0)}
    # the ellipse found at IoU 0.6 (above .5, below .65): full AP at .5, none from .65 up
    shifted = [exact[0], found([[10, 5, 40, 25 + 13.3]], [2])]
    scores = detection_scores(targets, shifted, num_classes=4)
    assert scores["map50"] == pytest.approx(1.0) and 0.5 < scores["map"] < 0.9
    wrong_class = [exact[0], found([[10, 5, 40, 25]], [1])]
    assert detection_scores(targets, wrong_class, num_classes=4)["map50"] == pytest.approx(2 / 3)
    nothing = [found([], []), found([], [])]
    assert detection_scores(targets, nothing, num_classes=4) == {"map": 0.0, "map50": 0.0}
    with pytest.raises(SlimkitError, match="hold no boxes"):
        detection_scores([_target([], [])], [found([], [])], num_classes=4)


def test_a_detector_resizes_its_input_to_the_plan_size(ssd_plan):
    detector = slimkit.generate(slimkit.load_plan(ssd_plan)).eval()
    assert detector.transform([torch.rand(3, 50, 70)])[0].tensors.shape[-2:] == (320, 320)  # its builder's size
    set_detector_input_size(detector, (SIDE, SIDE))
    images, _ = detector.transform([torch.rand(3, 50, 70)])
    assert images.tensors.shape[-2:] == (SIDE, SIDE)
    with torch.no_grad():
        out = detector([torch.rand(3, 50, 70)])[0]  # boxes come back in the given image's coordinates
    assert out["boxes"].shape[1] == 4 and float(out["boxes"][:, 2].max()) <= 70 + 1e-3


# ------------------------------------------------------------------------------ training
def test_ssdlite_trains_an_epoch_reporting_coco_map_and_resumes(ssd_plan, few_shapes, tmp_path):
    out = tmp_path / "run"
    result = train(ssd_plan, out, TrainConfig(epochs=1, batch_size=4, workers=0))
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert set(final) >= {"test_map", "test_map50", "train_loss"} and "test_top1" not in final
    assert 0.0 <= final["test_map"] <= final["test_map50"] <= 1.0 and final["train_loss"] > 0
    assert result.metrics[-1] == final and (out / "curves.png").stat().st_size > 0
    assert json.loads((out / "config.json").read_text())["data"] == "shapes"
    train(ssd_plan, out, TrainConfig(epochs=1, batch_size=4, workers=0), resume=True, extend_to=2)
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [m["epoch"] for m in history] == [1, 2] and history[0] == final
    assert headline_metric("ssdlite320_mobilenet_v3_large") == ("test_map", "test mAP@[.5:.95]")


def test_the_cli_trains_a_detector_plan_in_micro_batches_and_prints_its_map(ssd_plan, few_shapes, tmp_path):
    r = runner.invoke(app, ["train", str(ssd_plan), "--epochs", "1", "--batch-size", "4", "--accum-steps", "2",
                            "--workers", "0", "--out", str(tmp_path / "run")])  # 2 micro-batches of 2 images
    assert r.exit_code == 0, r.output
    assert "final: test mAP@[.5:.95] " in r.output and "mAP@.5" in r.output


@pytest.mark.parametrize("data, says", [
    ("fashion-mnist", "a detection model trains on boxes: --data shapes or coco:PATH"),
    ("cifar10", "a detection model trains on boxes: --data shapes or coco:PATH"),
])
def test_a_detector_on_data_without_boxes_is_one_line(ssd_plan, tmp_path, data, says):
    r = runner.invoke(app, ["train", str(ssd_plan), "--data", data, "--epochs", "1", "--out", str(tmp_path / "run")])
    assert r.exit_code != 0 and says in r.output and "Traceback" not in r.output
    assert not (tmp_path / "run").exists()


def test_a_classifier_on_shapes_is_one_line(tmp_path):
    with pytest.raises(SlimkitError, match="holds masks or boxes"):
        train("resnet20", tmp_path / "run", TrainConfig(data="shapes", epochs=1, workers=0))


# ------------------------------------------------------------------------------ recipes (slimkit run)
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "shapes_ssdlite_50.yaml"


@pytest.mark.parametrize("sets, says", [
    (["data.name=fashion-mnist"], "a detection model trains on boxes: data.name shapes or coco:PATH"),
    (["export.int8=true"], "is a detection model and has none: set export.int8: false"),
    # an int8-timed latency budget plans for a file export.int8 refuses: said at once, not "set export.int8: true"
    (["prune.flops=null", "prune.latency=50%", "prune.precision=int8"],
     "prune.precision int8 times candidates as int8 files: int8 files are checked by top-1 against fp32"),
])
def test_a_detection_recipe_needs_data_with_boxes_and_no_int8_check(sets, says):
    with pytest.raises(RecipeError, match=re.escape(says)):
        load_recipe(RECIPE, sets)


def test_a_detection_summary_compares_models_by_map():
    summary = {"recipe": "r", "arch": "torchvision:ssdlite320_mobilenet_v3_large", "method": "uniform", "budget": None,
               "latency": None,
               "metric": {"key": "test_map", "name": "test mAP@[.5:.95]"},
               "models": [{"name": "pruned", "macs": 10, "params": 5, "test_map": 0.1234, "epochs": 1}]}
    table = summary_markdown(summary)
    assert "| test mAP@[.5:.95] |" in table and "12.34%" in table and "top-1" not in table


@pytest.mark.slow
def test_the_detection_recipe_runs_end_to_end_and_summarizes_map(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "SHAPES_SPLITS", {"train": 8, "val": 0, "test": 4})
    recipe = load_recipe(RECIPE, ["input_size=64", "train.epochs=1", "train.batch_size=4", "bench.runs=5",
                                  "bench.threads=1"])
    summary = run_recipe(recipe, tmp_path / "run")
    assert summary["metric"] == {"key": "test_map", "name": "test mAP@[.5:.95]"}
    pruned = next(m for m in summary["models"] if m["name"] == "pruned")
    assert 0.0 <= pruned["test_map"] <= 1.0 and pruned["latency_median_ms"] > 0
    assert "test mAP@[.5:.95]" in (tmp_path / "run" / "summary.md").read_text()


# ------------------------------------------------------------------------------ a COCO-format folder
def _coco_folder(root: Path, images: int = 3) -> Path:
    """A tiny COCO layout: annotations/instances_{train,val}2017.json, images in train2017/, val2017/."""
    (root / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (root / split).mkdir()
        listed, boxes = [], []
        for i in range(images):
            sample = draw_sample(7 if split == "train2017" else 8, i, (48, 56))
            Image.fromarray(sample.image.permute(1, 2, 0).numpy()).save(root / split / f"{i:04d}.png")
            listed.append({"id": i + 1, "file_name": f"{i:04d}.png", "height": 48, "width": 56})
            for (x0, y0, x1, y1), label in zip(sample.boxes.tolist(), sample.labels.tolist()):
                boxes.append({"id": len(boxes) + 1, "image_id": i + 1, "category_id": label, "iscrowd": 0,
                              "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)})
        categories = [{"id": c, "name": n} for c, n in enumerate(("rectangle", "ellipse", "triangle"), start=1)]
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": listed, "annotations": boxes, "categories": categories}))
    return root


def test_a_coco_folder_loads_as_detection_batches(tmp_path):
    root = _coco_folder(tmp_path / "coco")
    bundle = data_module.load_data(f"coco:{root}", data_dir=None, input_size=(3, SIDE, SIDE), val_size=0)
    assert bundle.num_classes == 4 and len(bundle.train) == 3 and len(bundle.test) == 3
    images, targets = next(iter(data_module.make_loader(bundle.test, 2, shuffle=False, detection=True)))
    assert len(images) == len(targets) == 2 and images[0].shape == (3, 48, 56) and float(images[0].max()) <= 1.0
    expected = draw_sample(8, 0, (48, 56))
    assert torch.equal(targets[0]["boxes"], expected.boxes) and torch.equal(targets[0]["labels"], expected.labels)


def test_a_detector_trains_on_a_coco_folder(ssd_plan, tmp_path):
    root = _coco_folder(tmp_path / "coco", images=4)
    r = runner.invoke(app, ["train", str(ssd_plan), "--data", f"coco:{root}", "--epochs", "1", "--batch-size", "2",
                            "--workers", "0", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]
    assert 0.0 <= final["test_map"] <= 1.0 and final["images_per_second"] > 0


DAMAGES = {
    "no folder": (None, "is not a folder: expected PATH/annotations/instances_train2017.json"),
    "no val annotations": (lambda root: (root / "annotations" / "instances_val2017.json").unlink(),
                           "instances_val2017.json not found"),
    "no train images": (lambda root: shutil.rmtree(root / "train2017"), "train2017 not found: the images of"),
    "damaged annotations": (lambda root: (root / "annotations" / "instances_train2017.json").write_text("{"),
                            "cannot read"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_broken_coco_folder_is_one_line(ssd_plan, tmp_path, damage):
    harm, says = DAMAGES[damage]
    root = tmp_path / "coco"
    if harm is not None:
        harm(_coco_folder(root, images=1))
    r = runner.invoke(app, ["train", str(ssd_plan), "--data", f"coco:{root}", "--epochs", "1", "--out",
                            str(tmp_path / "run")])
    assert r.exit_code != 0 and says in r.output.replace("\n", " ") and "Traceback" not in r.output
    assert not (tmp_path / "run").exists()


def _edit_train_annotations(root: Path, edit) -> None:
    path = root / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


BAD_ANNOTATIONS = {  # each trained without a word or ended in an IndexError/ValueError traceback
    "category 0 declared": (lambda d: d["categories"].append({"id": 0, "name": "bg"}), "declares a category id 0"),
    "undeclared category": (lambda d: d["annotations"][0].update(category_id=7), "has category 7, not one the file"),
    "negative category": (lambda d: d["annotations"][0].update(category_id=-1), "has category -1"),
    "NaN box": (lambda d: d["annotations"][0].update(bbox=[float("nan"), 1, 5, 5]), "four finite numbers"),
    "three numbers": (lambda d: d["annotations"][0].update(bbox=[1, 1, 5]), "four finite numbers"),
    "text box": (lambda d: d["annotations"][0].update(bbox="1,1,5,5"), "four finite numbers"),
    "unlisted image": (lambda d: d["annotations"][0].update(image_id=99), "image 99, which the file does not list"),
    "repeated id": (lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]), "two annotations with id"),
    "box off the image": (lambda d: d["annotations"][0].update(bbox=[500, 500, 20, 20]), "lies outside the 56x48"),
}


@pytest.mark.parametrize("bad", BAD_ANNOTATIONS)
def test_coco_annotations_that_would_train_on_wrong_boxes_are_one_line(tmp_path, bad):
    edit, says = BAD_ANNOTATIONS[bad]
    root = _coco_folder(tmp_path / "coco", images=2)
    _edit_train_annotations(root, edit)
    with pytest.raises(data_module.DataError, match=says):
        bundle = data_module.load_data(f"coco:{root}", data_dir=None, input_size=(3, SIDE, SIDE), val_size=0)
        for i in range(len(bundle.train)):  # boxes meet their image's real size when it is read
            bundle.train[i]


def test_coco_boxes_reaching_past_the_edge_are_clipped_to_the_image(tmp_path):
    root = _coco_folder(tmp_path / "coco", images=1)
    _edit_train_annotations(root, lambda d: d["annotations"][0].update(bbox=[-2, 40, 30, 20]))
    bundle = data_module.load_data(f"coco:{root}", data_dir=None, input_size=(3, SIDE, SIDE), val_size=0)
    assert bundle.train[0][1]["boxes"][0].tolist() == [0.0, 40.0, 28.0, 48.0]

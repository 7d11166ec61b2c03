"""PASCAL VOC-format folders (`--data voc:PATH`): read by torchvision's VOCSegmentation / VOCDetection,
masks for segmentation models (255 ignored), boxes for detectors, and a one-line refusal naming what
is missing from a broken folder."""

import json
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
from slimkit.prune import LatencyOptions
from slimkit.recipe import load_recipe, num_classes_of
from slimkit.shapes import draw_sample
from slimkit.train import TrainConfig, train, train_one_epoch

runner = CliRunner()
SIDE = 64  # the models' input here: small enough for a CPU test
HEIGHT, WIDTH = 40, 48  # the fake VOC images' own size (VOC's are ~500x375), not the model's
# The drawn shapes' classes (1 rectangle, 2 ellipse, 3 triangle) stand for these VOC classes.
AS_VOC = {1: "aeroplane", 2: "bicycle", 3: "bird"}


def _palette() -> list[int]:
    """VOC's colour map (the bit-interleaved one its devkit uses): index k's colour, 256 entries."""
    colours = []
    for k in range(256):
        r = g = b = 0
        c = k
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours += [r, g, b]
    return colours


def _annotation(name: str, sample) -> str:
    objects = "".join(
        f"<object><name>{AS_VOC[label]}</name><difficult>{int(i == 1)}</difficult><bndbox><xmin>{x0 + 1:g}</xmin>"
        f"<ymin>{y0 + 1:g}</ymin><xmax>{x1:g}</xmax><ymax>{y1:g}</ymax></bndbox></object>"
        for i, ((x0, y0, x1, y1), label) in enumerate(zip(sample.boxes.tolist(), sample.labels.tolist())))
    return (f"<annotation><folder>VOC2012</folder><filename>{name}.jpg</filename><size><width>{WIDTH}</width>"
            f"<height>{HEIGHT}</height><depth>3</depth></size>{objects}</annotation>")


def voc_folder(root: Path, images: int = 3) -> Path:
    """A tiny VOCdevkit/VOC2012 tree: JPEGs, palette PNG masks (first row void), XML boxes and split lists."""
    folder = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True)
    for split, seed in (("train", 7), ("val", 8)):
        names = [f"2012_{seed}{i:05d}" for i in range(images)]
        for i, name in enumerate(names):
            sample = draw_sample(seed, i, (HEIGHT, WIDTH))
            Image.fromarray(sample.image.permute(1, 2, 0).numpy()).save(folder / "JPEGImages" / f"{name}.jpg",
                                                                      quality=95)
            mask = sample.mask.to(torch.uint8)
            mask[0] = 255
            png = Image.fromarray(mask.numpy(), mode="P")
            png.putpalette(_palette())
            png.save(folder / "SegmentationClass" / f"{name}.png")
            (folder / "Annotations" / f"{name}.xml").write_text(_annotation(name, sample))
        for lists in ("Segmentation", "Main"):
            (folder / "ImageSets" / lists / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return root


@pytest.fixture
def voc(tmp_path):
    return voc_folder(tmp_path / "voc")


# ------------------------------------------------------------------------------ reading
def test_a_voc_folder_gives_masks_at_the_model_size_with_void_kept(voc):
    bundle = data_module.load_data(f"voc:{voc}", data_dir=None, input_size=(3, SIDE, SIDE), val_size=0)
    assert bundle.num_classes == 21 and len(bundle.train) == 3 and len(bundle.test) == 3 and bundle.val is None
    assert "VOC2012 masks" in bundle.description
    images, masks = next(iter(data_module.make_loader(bundle.test, 2, shuffle=False)))
    assert images.shape == (2, 3, SIDE, SIDE) and images.dtype == torch.float32
    assert masks.shape == (2, SIDE, SIDE) and masks.dtype == torch.int64
    assert bool((masks[:, 0] == 255).all())  # the void row survives the resize (nearest, not blended)
    expected = draw_sample(8, 0, (HEIGHT, WIDTH)).mask
    labelled = masks[0][masks[0] != 255]
    assert set(labelled.unique().tolist()) == set(expected[1:].unique().tolist())  # class ids, no blends


def test_a_voc_folder_gives_a_detector_its_boxes_and_voc_labels(voc):
    bundle = data_module.load_data(f"voc:{voc / 'VOCdevkit' / 'VOC2012'}", data_dir=None, input_size=(3, SIDE, SIDE),
                                   val_size=0, detection=True)  # the VOC2012 folder itself works too
    assert bundle.num_classes == 21 and "VOC2012 boxes" in bundle.description
    images, targets = next(iter(data_module.make_loader(bundle.test, 2, shuffle=False, detection=True)))
    assert images[0].shape == (3, HEIGHT, WIDTH) and float(images[0].max()) <= 1.0
    expected = draw_sample(8, 0, (HEIGHT, WIDTH))
    assert torch.equal(targets[0]["boxes"], expected.boxes)  # VOC's 1-based pixels back to pixel edges
    names = [data_module.VOC_CLASSES[k] for k in targets[0]["labels"].tolist()]
    assert names == [AS_VOC[k] for k in expected.labels.tolist()]
    assert targets[0]["iscrowd"].tolist() == [int(i == 1) for i in range(len(names))]  # difficult: ignored in scoring
    _, train_targets = next(iter(data_module.make_loader(bundle.train, 3, shuffle=False, detection=True)))
    for i, target in enumerate(train_targets):  # difficult objects are left out of training targets
        kept = [AS_VOC[k] for j, k in enumerate(draw_sample(7, i, (HEIGHT, WIDTH)).labels.tolist()) if j != 1]
        assert [data_module.VOC_CLASSES[k] for k in target["labels"].tolist()] == kept


# ------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    """LR-ASPP and SSDlite at half their MACs, 64 px, heads of VOC's 21 classes (uniform widths: seconds)."""
    folder = tmp_path_factory.mktemp("plans")
    paths = {}
    for task, arch in (("segmentation", "lraspp_mobilenet_v3_large"), ("detection", "ssdlite320_mobilenet_v3_large")):
        plan = slimkit.prune(arch, "50%", method="uniform", input_size=(3, SIDE, SIDE), num_classes=21, round_to=8,
                             latency=LatencyOptions(check=False))
        paths[task] = folder / f"{task}.json"
        slimkit.save_plan(plan, paths[task])
    return paths


def test_the_cli_trains_a_segmenter_on_a_voc_folder_and_prints_its_miou(plans, voc, tmp_path):
    r = runner.invoke(app, ["train", str(plans["segmentation"]), "--data", f"voc:{voc}", "--epochs", "1",
                            "--batch-size", "2", "--max-steps-per-epoch", "1", "--workers", "0",
                            "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert "VOC2012 masks" in r.output and "final: test mIoU " in r.output
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]
    assert 0.0 <= final["test_miou"] <= 1.0 and len(final["test_iou"]) == 21
    assert 0.0 <= final["train_pixel_accuracy"] <= 1.0 and final["train_loss"] > 0


@pytest.mark.slow  # ~10-20 s: SSDlite and COCOeval; the boxes it reads are checked above, the loop by coco's tests
def test_a_detector_trains_on_a_voc_folder_and_is_scored_by_map(plans, voc, tmp_path):
    train(plans["detection"], tmp_path / "run", TrainConfig(data=f"voc:{voc}", epochs=1, batch_size=2, workers=0,
                                                            max_steps_per_epoch=1))
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]
    assert 0.0 <= final["test_map"] <= final["test_map50"] <= 1.0 and final["train_loss"] > 0


def test_a_classifier_on_a_voc_folder_is_one_line(voc, tmp_path):
    with pytest.raises(SlimkitError, match="holds masks or boxes"):
        train("resnet20", tmp_path / "run", TrainConfig(data=f"voc:{voc}", epochs=1, workers=0))


def test_void_pixels_are_no_training_samples():
    """A model right on every labelled pixel has a training pixel accuracy of 1, whatever the void ones."""
    model = torch.nn.Conv2d(3, 2, 1)
    with torch.no_grad():  # class 0 everywhere
        model.weight.zero_()
        model.bias.copy_(torch.tensor([1.0, 0.0]))
    masks = torch.zeros(2, 8, 8, dtype=torch.int64)
    masks[:, :2] = 255  # a quarter of the pixels: void
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    cfg = TrainConfig(amp=False, channels_last=False, workers=0)
    loss, accuracy, images, _ = train_one_epoch(model, [(torch.rand(2, 3, 8, 8), masks)], opt, sched, cfg,
                                                torch.device("cpu"), segmentation=True)
    assert accuracy == 1.0 and images == 2 and loss == pytest.approx(float(torch.nn.functional.cross_entropy(
        torch.tensor([[1.0, 0.0]]), torch.tensor([0]))))


# ------------------------------------------------------------------------------ broken folders
def _rgb_mask(folder: Path) -> None:
    mask = next((folder / "SegmentationClass").glob("2012_7*.png"))
    Image.open(mask).convert("RGB").save(mask)


def _unknown_class(folder: Path) -> None:
    xml = next((folder / "Annotations").glob("2012_7*.xml"))
    xml.write_text(xml.read_text().replace("<name>", "<name>x", 1))


VOC2012 = Path("VOCdevkit") / "VOC2012"
DAMAGES = {  # (what breaks the folder, a detector's run?, what the one line says)
    "no folder": (None, False, "is not a folder: expected PATH/VOCdevkit/VOC2012/"),
    "no VOC2012": (lambda root: shutil.rmtree(root / "VOCdevkit"), False, "no VOC2007-VOC2012 folder in"),
    "no images": (lambda root: shutil.rmtree(root / VOC2012 / "JPEGImages"), False, "JPEGImages not found"),
    "no masks": (lambda root: shutil.rmtree(root / VOC2012 / "SegmentationClass"), False,
                 "SegmentationClass not found"),
    "no split list": (lambda root: (root / VOC2012 / "ImageSets" / "Segmentation" / "val.txt").unlink(), False,
                      "ImageSets/Segmentation/val.txt not found"),
    "a listed mask missing": (lambda root: next((root / VOC2012 / "SegmentationClass").glob("*.png")).unlink(), False,
                              ".png not found ("),
    "an RGB mask": (lambda root: _rgb_mask(root / VOC2012), False, "is a RGB image; masks are palette"),
    "no annotations": (lambda root: shutil.rmtree(root / VOC2012 / "Annotations"), True, "Annotations not found"),
    "an unknown class": (lambda root: _unknown_class(root / VOC2012), True, "not one of VOC's 20 classes"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_broken_voc_folder_is_one_line(plans, tmp_path, damage):
    harm, detector, says = DAMAGES[damage]
    root = tmp_path / "voc"
    if harm is not None:
        harm(voc_folder(root, images=1))
    r = runner.invoke(app, ["train", str(plans["detection" if detector else "segmentation"]), "--data", f"voc:{root}",
                            "--epochs", "1", "--batch-size", "1", "--workers", "0", "--out", str(tmp_path / "run")])
    assert r.exit_code != 0 and says in " ".join(r.output.split()) and "Traceback" not in r.output, r.output
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# ------------------------------------------------------------------------------ recipes
TEMPLATE = Path(__file__).resolve().parents[1] / "recipes" / "voc_lraspp_template.yaml"


def test_the_voc_template_names_voc_data_and_its_21_classes(voc):
    recipe = load_recipe(TEMPLATE, [f"data.name=voc:{voc}"])
    assert num_classes_of(recipe) == 21 and recipe.data.name == f"voc:{voc}"
    assert data_module.data_missing(recipe.data.name) is None
    shutil.rmtree(voc / VOC2012 / "SegmentationClass")  # what `slimkit run --dry-run` reports
    assert "SegmentationClass not found" in data_module.data_missing(recipe.data.name)
    assert data_module.data_missing(recipe.data.name, detection=True) is None  # a detector reads the boxes


def _first_train(folder: Path, kind: str, suffix: str) -> Path:
    return sorted((folder / kind).glob(f"2012_7*{suffix}"))[0]


def _set_first_box(folder: Path, xmin: str, ymin: str, xmax: str, ymax: str) -> None:
    xml = _first_train(folder, "Annotations", ".xml")
    text = xml.read_text()
    start, end = text.index("<xmin>"), text.index("</ymax>") + len("</ymax>")
    xml.write_text(text[:start] + f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>"
                   + text[end:])


def _small_mask(folder: Path) -> None:
    mask = _first_train(folder, "SegmentationClass", ".png")
    Image.open(mask).resize((10, 10), Image.NEAREST).save(mask)


LABELS_THAT_LIE = {  # (harm, a detector's data?, what the one line says): each was read without a word
    "a NaN box": (lambda f: _set_first_box(f, "nan", "1", "5", "5"), True, "not all finite"),
    "a box off the image": (lambda f: _set_first_box(f, "900", "900", "950", "950"), True, "lies outside the 48x40"),
    "a mask of another size": (_small_mask, False, "is 10x10 but its image"),
}


@pytest.mark.parametrize("harm", LABELS_THAT_LIE)
def test_labels_that_do_not_fit_their_image_are_one_line(tmp_path, harm):
    damage, detection, says = LABELS_THAT_LIE[harm]
    root = voc_folder(tmp_path / "voc", images=1)
    damage(root / VOC2012)
    bundle = data_module.load_data(f"voc:{root}", data_dir=None, input_size=(3, SIDE, SIDE), val_size=0,
                                   detection=detection)
    with pytest.raises(data_module.DataError, match=says):
        bundle.train[0]


def test_voc_boxes_reaching_past_the_edge_are_clipped_to_the_image(tmp_path):
    root = voc_folder(tmp_path / "voc", images=1)
    _set_first_box(root / VOC2012, "-3", "10", "60", "20")  # 1-based pixels: x from -4, to 60 on a 48-wide image
    bundle = data_module.load_data(f"voc:{root}", data_dir=None, input_size=(3, SIDE, SIDE), val_size=0,
                                   detection=True)
    assert bundle.train[0][1]["boxes"][0].tolist() == [0.0, 9.0, 48.0, 20.0]

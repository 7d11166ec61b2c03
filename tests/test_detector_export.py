"""A detector exported whole (`slimkit export --postprocess`): transform, box decoding and NMS in the
ONNX graph, checked by matching detections with PyTorch's, timed beside its dense core."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

import slimkit
from slimkit import registry
from slimkit.artifacts import calibrate_bn
from slimkit.cli import app
from slimkit.exporters import ExportError
from slimkit.exporters.onnx import _compare_detections, _outside_neighbours, detection_parity, export, fixed_image, read_metadata
from slimkit.models.tasks import WholeDetector
from slimkit.prune import LatencyOptions

runner = CliRunner()

# A torchvision SSD small enough for the default suite: 64 px, 4 classes, one feature level. Softmax
# scores of random weights sit near 1/4, far above the 0.01 threshold, so the cap of 50 detections
# is reached and the check compares a full, tie-prone list.
NETS = '''
import torch
from torch import nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD


def tiny_ssd(score_thresh=0.01, detections_per_img=50):
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
    return SSD(backbone, DefaultBoxGenerator([[2, 3]]), (64, 64), num_classes=4, score_thresh=score_thresh,
               detections_per_img=detections_per_img)
'''
SIZE = (3, 64, 64)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    path = tmp_path_factory.mktemp("nets") / "nets.py"
    path.write_text(NETS)
    return f"python:{path}:tiny_ssd"


def _whole(nets, **kwargs):
    detector = registry.create_model(nets, **kwargs)
    calibrate_bn(detector, SIZE, batches=1, batch_size=2)
    return WholeDetector(detector.eval())


def test_a_whole_detector_exports_with_its_nms_and_matches_pytorch(nets, tmp_path):
    whole = _whole(nets)
    res = export(whole, SIZE, tmp_path / "det.onnx", detections=True)
    found = res.details["detection_parity"]
    assert res.details["exporter"] == "torchscript" and res.details["outputs"] == ["boxes", "scores", "labels"]
    assert found["detections"] == 50 and found["matched"] + found["ties_at_cut_off"] == 50
    assert found["max_diff"]["boxes"] <= found["tolerance"]["boxes"] and "check_copy" not in found
    # the file itself: one image in, NMS inside, the detector's own count out
    session = ort.InferenceSession(str(tmp_path / "det.onnx"), providers=["CPUExecutionProvider"])
    boxes, scores, labels = session.run(None, {session.get_inputs()[0].name: fixed_image(SIZE).numpy()})
    with torch.no_grad():
        ref = whole(fixed_image(SIZE))
    assert boxes.shape == (50, 4) and len(scores) == len(labels) == len(ref[1]) == 50
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "labels"]


def test_the_detection_check_catches_a_wrong_graph_and_a_changed_threshold(nets, tmp_path):
    whole = _whole(nets)
    export(whole, SIZE, tmp_path / "det.onnx", detections=True)
    proto = onnx.load(str(tmp_path / "det.onnx"))
    image = fixed_image(SIZE)
    detection_parity(whole, proto.SerializeToString(), image)  # the right graph passes
    weights = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))  # the largest conv: a wrong weight
    array = onnx.numpy_helper.to_array(weights) * 1.05
    weights.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float32), weights.name))
    with pytest.raises(ExportError, match="disagree|finds"):
        detection_parity(whole, proto.SerializeToString(), image)
    # PyTorch keeping only its best 25 by threshold while the file keeps 50: another count
    with torch.no_grad():
        middle = float(whole(image)[1][25])
    with pytest.raises(ExportError, match="onnxruntime finds 50 detections on the fixed image, PyTorch 25"):
        detection_parity(whole.with_score_threshold(middle), (tmp_path / "det.onnx").read_bytes(), image)


def _detections(scores, labels=None):
    n = len(scores)
    boxes = np.stack([np.arange(n) * 2.0, np.zeros(n), np.arange(n) * 2.0 + 10, np.full(n, 10.0)], 1)
    return {"boxes": boxes.astype(np.float32), "scores": np.asarray(scores, np.float32),
            "labels": np.asarray(labels if labels is not None else [1] * n)}


TOL = {"boxes": 0.01, "scores": 1e-4}


def test_only_near_ties_at_the_lowest_score_may_go_unmatched():
    ref = _detections([0.9, 0.8, 0.5, 0.30001])
    swapped_at_cut_off = _detections([0.9, 0.8, 0.5, 0.30002])
    swapped_at_cut_off["boxes"][3] += 5.0  # the runtime kept the other of two near-equal last candidates
    found = _compare_detections(ref, swapped_at_cut_off, TOL)
    assert found["problem"] is None and found["ties"] == 1 and found["matched"] == 3
    swapped_high = _detections([0.9, 0.8, 0.5, 0.30001])
    swapped_high["boxes"][1] += 5.0  # a confident detection elsewhere: a wrong graph, not a tie
    assert "no match" in _compare_detections(ref, swapped_high, TOL)["problem"]
    relabelled = _detections([0.9, 0.8, 0.5, 0.30001], labels=[1, 2, 1, 1])
    assert "no match" in _compare_detections(ref, relabelled, TOL)["problem"]
    reordered = {k: v[::-1].copy() for k, v in ref.items()}  # another order of the same detections
    assert _compare_detections(ref, reordered, TOL)["problem"] is None


def test_masks_shifted_by_a_pixel_agree_and_a_wrong_mask_does_not():
    mask = np.zeros((1, 1, 24, 24), np.float32)
    mask[..., 5:15, 6:18] = np.linspace(0.2, 0.9, 12, dtype=np.float32)  # a pasted mask with a gradient
    shifted = np.roll(mask, 1, axis=-1)  # a box corner across a pixel edge: pasted one pixel over
    assert _outside_neighbours(mask, shifted) == 0.0 and _outside_neighbours(shifted, mask) == 0.0
    assert np.abs(mask - shifted).max() > 0.2  # what a pixel-by-pixel comparison would have failed on
    wrong = mask * 0.9  # a mask head off by 10%
    assert _outside_neighbours(wrong, mask) > 0.01


def test_a_file_with_few_detections_is_checked_on_a_copy_that_keeps_every_score(nets, tmp_path):
    whole = _whole(nets, score_thresh=0.99)  # random softmax scores never reach 0.99: nothing to compare
    found = export(whole, SIZE, tmp_path / "det.onnx", detections=True).details["detection_parity"]
    assert found["detections"] == 0
    assert found["check_copy"]["detections"] == 50 and found["check_copy"]["matched"] >= 45


def test_cli_export_postprocess_writes_the_detector_and_names_postprocessing_in_the_report(nets, tmp_path):
    out = tmp_path / "det.onnx"
    r = runner.invoke(app, ["export", nets, "--postprocess", "--input-size", "64", "--out", str(out), "--runs", "5"],
                      env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "50 detections on both" in r.output and "Postprocessing (transform, box decoding, NMS)" in r.output
    assert "boxes, scores, labels" in read_metadata(out)["slimkit.detector"]
    report = json.loads((tmp_path / "det.latency.json").read_text())
    assert [m["name"] for m in report["models"]] == ["det.core", "det"]
    post = report["postprocessing"]
    assert post["whole"] == "det" and post["core"] == "det.core" and post["ci_ms"][0] <= post["median_ms"]
    assert "Postprocessing" in (tmp_path / "det.latency.md").read_text()


def test_a_detector_plan_or_checkpoint_loads_resizing_to_the_size_it_trains_at(nets, tmp_path):
    """A detector trains and is scored at its plan's input size (`slimkit train` resizes to it), yet
    `export CKPT --postprocess` wrote a file whose transform resized every image to the size the
    detector was built for (64 px here; 320 for SSDlite), with a warning advising an --input-size that
    a checkpoint refuses: the deployed file ran the model at a size it never saw."""
    from slimkit.artifacts import load_model, write_checkpoint
    from slimkit.models.tasks import deployment_side
    plan = slimkit.full_plan(nets, input_size=(3, 32, 32))
    plan_file, ckpt = tmp_path / "plan.json", tmp_path / "checkpoint.pt"
    slimkit.save_plan(plan, plan_file)
    write_checkpoint(ckpt, model=slimkit.generate(plan).state_dict(), plan=plan, config={}, epoch=1, metrics=[])
    for source in (str(plan_file), str(ckpt)):
        assert deployment_side(load_model(source).model) == 32, source
    out = tmp_path / "det.onnx"
    r = runner.invoke(app, ["export", str(ckpt), "--postprocess", "--out", str(out), "--no-bench"],
                      env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "resizes every image" not in r.output and out.is_file()


@pytest.mark.parametrize("source,args,needle", [
    ("resnet20", [], "not a torchvision detector"),
    ("NETS", ["--batch", "2"], "one image at a time"),
    ("NETS", ["--dynamic-batch"], "one image at a time"),
    ("NETS", ["--exporter", "dynamo"], "cannot trace a detector's NMS"),
    ("NETS", ["--opset", "10"], "--opset 11 or later"),
    ("NETS", ["--int8", "--data", "synthetic"], "drop --int8"),
])
def test_cli_postprocess_bad_input_is_one_line(nets, tmp_path, source, args, needle):
    out = tmp_path / "o.onnx"
    r = runner.invoke(app, ["export", nets if source == "NETS" else source, "--postprocess", "--input-size", "64",
                            "--out", str(out), "--no-bench", *args], env={"COLUMNS": "300"})
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error:") and "Traceback" not in r.output and needle in r.output.replace("\n", " ")
    assert not out.exists()


def test_int8_with_postprocess_does_not_advise_a_command_that_is_refused_too(tmp_path):
    """--postprocess --int8 said 'or drop --postprocess to quantize the dense core', and the dense core's
    --int8 is refused in turn (a detector has no top-1)."""
    plan = tmp_path / "ssd.json"
    slimkit.save_plan(slimkit.full_plan("ssdlite320_mobilenet_v3_large", num_classes=4, input_size=(3, 64, 64)), plan)
    for extra in (["--postprocess"], []):
        r = runner.invoke(app, ["export", str(plan), *extra, "--int8", "--data", "shapes", "--no-bench",
                                "--out", str(tmp_path / "o.onnx")], env={"COLUMNS": "300"})
        assert r.exit_code == 2 and r.output.startswith("error:"), r.output
        assert "drop --int8" in r.output and "drop --postprocess" not in r.output, r.output


@pytest.mark.slow
def test_ssdlite_exports_whole_at_its_deployment_input(tmp_path):
    detector = registry.create_model("ssdlite320_mobilenet_v3_large")
    calibrate_bn(detector, (3, 320, 320), batches=1, batch_size=2)
    found = export(WholeDetector(detector.eval()), (3, 320, 320), tmp_path / "ssd.onnx",
                   detections=True).details["detection_parity"]
    assert found["detections"] == 300 and found["matched"] + found["ties_at_cut_off"] == 300


def test_latency_budgets_time_a_detectors_dense_core_as_bench_does(nets, tmp_path):
    """A latency search timed the whole detector, NMS on random weights included, while `slimkit bench`
    and the default export time the dense core: SSDlite's --latency 50% plan re-measured at 0.34x."""
    from slimkit.generator import channel_graph
    from slimkit.latency_search import LatencyMeter

    plan = slimkit.prune(nets, "50%", method="uniform", input_size=SIZE, round_to=1,
                          tolerance=0.1, latency=LatencyOptions(check=False))
    graph = channel_graph(plan.arch, plan.arch_kwargs, SIZE)
    meter = LatencyMeter(plan.unpruned(), graph, workdir=tmp_path)
    timed = onnx.load(str(meter._candidate(plan.widths).onnx_path))
    assert not any(n.op_type == "NonMaxSuppression" for n in timed.graph.node)
    core = registry.traced_part(registry.create_model(nets).eval())
    with torch.no_grad():
        expected = core(torch.zeros(1, *SIZE))
    assert len(timed.graph.output) == len(expected)  # the head's raw tensors, not boxes/scores/labels


@pytest.mark.parametrize("arch", ["NETS", pytest.param("lraspp_mobilenet_v3_large", marks=pytest.mark.slow)])
def test_cli_int8_of_a_dense_model_is_refused_before_any_export(nets, tmp_path, arch):
    """--int8 checks top-1 agreement: a detector's dense core was exported, quantized seven ways and failed
    minutes later on 'top-1 agreement 17%', leaving the fp32 file (a recipe's export.int8 was refused)."""
    out = tmp_path / "o.onnx"
    r = runner.invoke(app, ["export", nets if arch == "NETS" else arch, "--int8", "--data", "shapes", "--input-size", "64", "--num-classes", "4",
                            "--out", str(out), "--no-bench"], env={"COLUMNS": "300"})
    assert r.exit_code == 2 and "a classifier's metric" in r.output and "drop --int8" in r.output, r.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("arch", ["ssdlite320_mobilenet_v3_large", "lraspp_mobilenet_v3_large"])
def test_prune_precision_int8_of_a_dense_model_is_refused_as_export_int8_is(tmp_path, arch):
    """--precision int8 times candidates as `export --int8` ships them; a dense model has no int8 file
    (refused by export), so a plan timed as one was minutes of timing for a file that cannot exist."""
    out = tmp_path / "p.json"
    r = runner.invoke(app, ["prune", arch, "--latency", "50%", "--precision", "int8", "--input-size", "64",
                            "--out", str(out)], env={"COLUMNS": "300"})
    assert r.exit_code == 2 and "a classifier's metric" in r.output and "drop --precision" in r.output, r.output
    assert "Traceback" not in r.output and not list(tmp_path.iterdir())

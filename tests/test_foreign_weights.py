"""Trained weights from outside slimkit: plain state dicts, timm/torchvision checkpoint wrappers, and
files that are not checkpoints at all, through the one loader prune, train and G share."""

import json
import pickle
import re

import pytest
import timm
import torch
from typer.testing import CliRunner

import slimkit
from slimkit.checkpoint import CheckpointError, parent_shape, read_weights
from slimkit.cli import app
from slimkit.errors import PlanError
from slimkit.generator import build_model
from slimkit.plan import load_plan

SIZE = (3, 64, 64)
CLASSES = 5


@pytest.fixture(scope="module")
def timm_resnet18(tmp_path_factory):
    """A timm resnet18 (5-class head) saved the way its users save it: torch.save(model.state_dict())."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=CLASSES).eval()
    with torch.no_grad():  # BatchNorms off their init, so a channel in the wrong place shows in the outputs
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    path = tmp_path_factory.mktemp("timm") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_a_timm_state_dict_prunes_from_the_cli_and_inherits_exactly(timm_resnet18, tmp_path):
    parent, path = timm_resnet18
    plan_path = tmp_path / "p.json"
    r = CliRunner().invoke(app, ["prune", "timm:resnet18", "--weights", str(path), "--criterion", "l1", "--flops",
                                 "50%", "--input-size", "64", "--round-to", "1", "--out", str(plan_path), "--no-plot"])
    assert r.exit_code == 0, r.output
    plan = load_plan(plan_path)
    # the classes come from the state dict's classifier, as they come from a slimkit checkpoint's plan
    assert plan.has_keep and plan.num_classes == CLASSES and plan.criterion["kind"] == "l1"
    x = torch.randn(2, *SIZE)
    thin = slimkit.generate(plan, weights=path).eval()
    assert thin(x).shape == (2, CLASSES)
    keep_all = slimkit.full_plan("timm:resnet18", num_classes=CLASSES, input_size=SIZE)
    with torch.no_grad():
        assert torch.allclose(slimkit.generate(keep_all, weights=path).eval()(x), parent(x), atol=1e-5)


def test_wrapped_and_data_parallel_state_dicts_load(timm_resnet18, tmp_path):
    parent, _ = timm_resnet18
    keep_all = slimkit.full_plan("timm:resnet18", num_classes=CLASSES, input_size=SIZE)
    x = torch.randn(1, *SIZE)
    state = parent.state_dict()
    data_parallel = {f"module.{k}": v for k, v in state.items()}
    for wrapper in ({"model": state}, {"model_state": data_parallel}, data_parallel):
        path = tmp_path / "wrapped.pt"
        torch.save(wrapper, path)
        loaded, plan = read_weights(path)
        assert plan is None and loaded.keys() == state.keys()
    path = tmp_path / "train_checkpoint.pt"
    torch.save({"state_dict": data_parallel, "epoch": 3}, path)  # timm's train.py layout, DataParallel keys
    assert parent_shape(path, "timm:resnet18") == (CLASSES, None, None)
    with torch.no_grad():
        assert torch.allclose(slimkit.generate(keep_all, weights=path).eval()(x), parent(x), atol=1e-5)


def test_a_moving_average_alone_loads_and_beside_the_model_is_refused(timm_resnet18, tmp_path):
    """timm's train.py keeps 'state_dict_ema' beside 'state_dict', torchvision's references 'model_ema' (an
    AveragedModel: 'n_averaged' and 'module.'-prefixed keys) beside 'model'. The pair loaded 'state_dict' silently
    (timm's own loader prefers the EMA), and an EMA saved alone was refused as 'not model weights'."""
    parent, _ = timm_resnet18
    keep_all = slimkit.full_plan("timm:resnet18", num_classes=CLASSES, input_size=SIZE)
    x = torch.randn(1, *SIZE)
    state = parent.state_dict()
    averaged = {"n_averaged": torch.tensor(7), **{f"module.{k}": v for k, v in state.items()}}
    for i, (wrapper, key) in enumerate(((({"state_dict_ema": state, "epoch": 3}), None),
                                        ({"model_ema": averaged}, None),
                                        ({"state_dict": state, "state_dict_ema": state, "epoch": 3}, "state_dict_ema"),
                                        ({"model": state, "model_ema": averaged}, "model_ema"))):
        path = tmp_path / f"ema{i}.pt"
        torch.save(wrapper, path)
        if key is None:
            assert parent_shape(path, "timm:resnet18") == (CLASSES, None, None)
            with torch.no_grad():
                assert torch.allclose(slimkit.generate(keep_all, weights=path).eval()(x), parent(x), atol=1e-5)
        else:
            with pytest.raises(CheckpointError) as info:
                read_weights(path)
            text = str(info.value)
            assert "two sets of weights" in text and f"torch.save(ckpt['{key}']" in text and "\n" not in text, text


def test_weights_of_another_architecture_are_refused_in_one_line(timm_resnet18):
    _, path = timm_resnet18
    r = CliRunner().invoke(app, ["prune", "timm:resnet34", "--weights", str(path), "--criterion", "l1", "--flops",
                                 "50%", "--input-size", "64", "--round-to", "1", "--out", "/nonexistent/q.json"])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code != 0 and "Traceback" not in r.output and len(lines) == 1, r.output
    assert "timm:resnet34" in lines[0] and "missing layer1.2.conv1.weight" in lines[0]
    resnet34 = slimkit.full_plan("timm:resnet34", num_classes=CLASSES, input_size=SIZE)
    with pytest.raises(PlanError, match="does not hold weights of the full timm:resnet34"):
        slimkit.generate(resnet34, weights=path)


def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path):
    junk, plan, onnx_file = tmp_path / "junk.pt", tmp_path / "plan.json", tmp_path / "model.onnx"
    junk.write_bytes(bytes(range(256)) * 4)
    plan.write_text(json.dumps(slimkit.full_plan("resnet20", num_classes=10).to_dict()))
    torch.onnx.export(torch.nn.Linear(3, 2), torch.zeros(1, 3), str(onnx_file), dynamo=False)
    notes = {junk: "not a PyTorch checkpoint", plan: "slimkit plan", onnx_file: "is an ONNX model"}
    for path, note in notes.items():
        with pytest.raises(CheckpointError, match=note) as info:
            read_weights(path)
        assert "\n" not in str(info.value)
    # read but refused by weights_only: code in the pickle, or a plain pickle; never "truncated"
    class Code:
        def __reduce__(self):
            return (print, ("unpickled",))
    torch.save({"state_dict": {"a": torch.zeros(1)}, "hook": Code()}, tmp_path / "code.pt")
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"a": [1.0]}, f, protocol=4)
    for name, note in (("code.pt", "holds Python objects besides tensors (print)"),
                       ("plain.pkl", "is a plain pickle (protocol 4), not a file written by torch.save")):
        with pytest.raises(CheckpointError, match=re.escape(note)) as info:
            read_weights(tmp_path / name)
        assert "truncated" not in str(info.value)
    not_weights = tmp_path / "numbers.pt"
    torch.save({"epoch": 3, "lr": 0.1}, not_weights)
    with pytest.raises(CheckpointError, match="not model weights"):
        read_weights(not_weights)


def test_a_plain_state_dict_prunes_and_fine_tunes_end_to_end(tmp_path):
    runner = CliRunner()
    weights, plan, ft = tmp_path / "resnet20.pt", tmp_path / "p.json", tmp_path / "ft"
    torch.save(build_model("resnet20", {"num_classes": 10}).state_dict(), weights)
    r = runner.invoke(app, ["prune", "resnet20", "--weights", str(weights), "--criterion", "l1", "--flops", "50%",
                            "--out", str(plan), "--no-plot"])
    assert r.exit_code == 0, r.output
    assert load_plan(plan).num_classes == 10  # the classifier's rows, so training can check them
    r = runner.invoke(app, ["train", str(plan), "--init", "inherit", "--from", str(weights), "--schedule", "finetune",
                            "--epochs", "1", "--out", str(ft), "--data", "synthetic", "--max-steps-per-epoch", "1",
                            "--batch-size", "16"])
    assert r.exit_code == 0 and "inherited the kept channels' weights" in r.output, r.output


def test_diverged_integer_empty_and_misplaced_weights_say_what_is_wrong(tmp_path):
    """A diverged training's NaN weights would rank channels by NaN norms (arbitrary ones kept, exit 0);
    integer tensors would be rounded into float weights; meta or sparse tensors were tracebacks; an empty dict, a folder or an empty path were
    'a dict of ,', 'checkpoint not found: full' and 'checkpoint not found: .'. Each is one line, and no
    plan is written."""
    state = build_model("resnet20", {"num_classes": 10}).state_dict()
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save(state, folder / "checkpoint.pt")
    files = {"nan.pt": {k: v.clone().fill_(float("nan")) if k == "layer2.0.conv1.weight" else v
                        for k, v in state.items()},
             "int.pt": {k: v.round().long() if v.is_floating_point() else v for k, v in state.items()},
             "empty.pt": {},
             "meta.pt": {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in state.items()},
             "sparse.pt": {**state, "fc.weight": state["fc.weight"].to_sparse()}}
    for name, content in files.items():
        torch.save(content, tmp_path / name)
    out = tmp_path / "p.json"
    for weights, needle in (("nan.pt", "NaN or infinite values in layer2.0.conv1.weight: the training that wrote it "
                                       "diverged"), ("int.pt", "integer values where slimkit:resnet20 has float weights"),
                            ("empty.pt", "holds an empty dict, not model weights"),
                            ("meta.pt", "cannot copy weights from: conv1.weight (on the meta device"),
                            ("sparse.pt", "cannot copy weights from: fc.weight (torch.sparse_coo)"),
                            ("run", f"--weights: {folder} is a folder, not a checkpoint file: pass "
                                    f"{folder / 'checkpoint.pt'}"),
                            ("", "--weights: the path is empty")):
        path = str(tmp_path / weights) if weights else ""
        r = CliRunner().invoke(app, ["prune", "resnet20", "--weights", path, "--criterion", "l1", "--flops", "50%",
                                     "--out", str(out), "--no-plot"])
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and needle in " ".join(r.output.split()), r.output
        assert not out.exists()
    keep_all = slimkit.full_plan("resnet20", num_classes=10)
    with pytest.raises(PlanError, match="NaN or infinite"):
        slimkit.generate(keep_all, weights=files["nan.pt"])


def test_a_state_dict_without_batchnorm_step_counters_loads(tmp_path):
    """PyTorch before 0.4.1 saved no ``num_batches_tracked`` (nor do converted and older published weights),
    and torch's load_state_dict accepts such a file; slimkit refused it as 'not the full model'."""
    torch.manual_seed(0)
    parent = build_model("resnet20", {"num_classes": 10}).eval()
    with torch.no_grad():
        for m in parent.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "old.pt"
    torch.save({k: v for k, v in parent.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    keep_all = slimkit.full_plan("resnet20", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(slimkit.generate(keep_all, weights=path).eval()(x), parent(x), atol=1e-5)
    out = tmp_path / "p.json"
    r = CliRunner().invoke(app, ["prune", "resnet20", "--weights", str(path), "--criterion", "l1", "--flops", "50%",
                                 "--round-to", "1", "--out", str(out), "--no-plot", "--no-latency-check"])
    assert r.exit_code == 0 and load_plan(out).has_keep, r.output


def test_a_whole_pickled_model_is_told_to_save_its_state_dict(tmp_path):
    """torch.save(model) was told to re-save torch.save(ckpt['state_dict'], ...): advice for a checkpoint
    dict, wrong for a model object, which has no 'state_dict' entry."""
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), path)
    with pytest.raises(CheckpointError) as info:
        read_weights(path)
    text = str(info.value)
    assert "whole pickled Sequential" in text and "torch.save(model.state_dict()" in text, text
    assert "ckpt['state_dict']" not in text and "\n" not in text


def test_binary_and_empty_files_are_not_called_text(tmp_path):
    """Bytes with NULs decode as UTF-8, so a binary file was 'a text file'; an empty one was 'not a file
    written by torch.save' without saying it is empty."""
    binary, empty, text = tmp_path / "binary.pt", tmp_path / "empty.pt", tmp_path / "notes.pt"
    binary.write_bytes(b"\x00\x01\x02garbage" * 50)
    empty.write_bytes(b"")
    text.write_text("weights: see the shared drive\n" * 200 + "café", encoding="utf-8")
    for path, note in ((binary, "is not a PyTorch checkpoint"), (empty, "is empty (0 bytes)"),
                       (text, "is a text file")):
        with pytest.raises(CheckpointError, match=re.escape(note)) as info:
            read_weights(path)
        assert "\n" not in str(info.value)


def test_weights_of_another_model_name_the_architecture_without_an_empty_dict(tmp_path):
    """With no classifier to read the classes from, the refusal read 'the full slimkit:resnet20 {} (...)'."""
    path = tmp_path / "other.pt"
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3)}, path)
    r = CliRunner().invoke(app, ["prune", "resnet20", "--weights", str(path), "--criterion", "l1", "--flops", "50%",
                                 "--round-to", "1", "--out", str(tmp_path / "p.json"), "--no-plot"])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "the full slimkit:resnet20 (missing conv1.weight" in text and "{}" not in text, text


def test_a_lightning_checkpoint_loads_under_its_models_own_names(timm_resnet18, tmp_path):
    """A LightningModule's checkpoint keeps the network under its attribute ('model.conv1.weight'), beside
    a loss's buffers: it was refused as 'missing conv1.weight ...'. Its fingerprint is the plain file's, so
    a plan cut from one inherits from the other."""
    parent, plain = timm_resnet18
    state = parent.state_dict()
    lightning = tmp_path / "epoch=3.ckpt"
    torch.save({"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0",
                "state_dict": {**{f"model.{k}": v for k, v in state.items()}, "criterion.weight": torch.ones(CLASSES)},
                "hyper_parameters": {"lr": 0.1}, "optimizer_states": [], "lr_schedulers": []}, lightning)
    plan_path = tmp_path / "p.json"
    r = CliRunner().invoke(app, ["prune", "timm:resnet18", "--weights", str(lightning), "--criterion", "l1", "--flops",
                                 "50%", "--input-size", "64", "--round-to", "1", "--out", str(plan_path), "--no-plot",
                                 "--no-latency-check"])
    assert r.exit_code == 0, r.output
    plan = load_plan(plan_path)
    assert plan.num_classes == CLASSES  # its classifier found under the prefix too
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        assert torch.allclose(slimkit.generate(plan, weights=plain).eval()(x),
                              slimkit.generate(plan, weights=lightning).eval()(x))
        keep_all = slimkit.full_plan("timm:resnet18", num_classes=CLASSES, input_size=SIZE)
        assert torch.allclose(slimkit.generate(keep_all, weights=lightning).eval()(x), parent(x), atol=1e-5)
    both = tmp_path / "ema.ckpt"  # the model and its EMA copy: which one is meant cannot be told
    torch.save({"state_dict": {**{f"model.{k}": v for k, v in state.items()},
                               **{f"model_ema.{k}": v for k, v in state.items()}}}, both)
    with pytest.raises(CheckpointError, match=r"under several prefixes \(model., model_ema.\)") as info:
        slimkit.generate(keep_all, weights=both)
    assert "\n" not in str(info.value)


def test_a_transformer_checkpoint_at_another_image_size_is_told_to_prune_at_its_size(tmp_path):
    """A ViT trained at one size, pruned with another --input-size, was told to 'pass a checkpoint of that
    architecture, or name the architecture (and --num-classes)': its position embeddings are the problem."""
    path = tmp_path / "vit.pt"
    vit = build_model("timm:vit_tiny_patch16_224", {"num_classes": 10, "img_size": 32, "patch_size": 8})
    torch.save(vit.state_dict(), path)
    other_size = slimkit.full_plan("timm:vit_tiny_patch16_224", num_classes=10, input_size=(3, 64, 64),
                                   arch_kwargs={"patch_size": 8, "img_size": 64})
    with pytest.raises(PlanError) as info:
        slimkit.generate(other_size, weights=path)
    text = str(info.value)
    assert "shape pos_embed" in text and "position embeddings are for another image size than 64" in text, text
    assert "--num-classes" not in text and "\n" not in text
    at_default = slimkit.full_plan("timm:vit_tiny_patch16_224", num_classes=10, arch_kwargs={"patch_size": 8})
    with pytest.raises(PlanError, match="another image size than the architecture's default: prune at the input size"):
        slimkit.generate(at_default, weights=path)  # no --input-size: 224 px, 785 positions

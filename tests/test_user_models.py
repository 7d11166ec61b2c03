"""The user's own models: python: factories (a module or a file), model objects, factory kwargs, the
plan's graph fingerprint, and one-line errors for every way user code can go wrong."""

import json
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

import slimkit
from slimkit import registry
from slimkit.cli import app
from slimkit.errors import PlanError, RegistryError
from slimkit.flops import count_flops

runner = CliRunner()

# A user's network: residual blocks, a depthwise block, a concat and a custom two-layer head.
NETS = textwrap.dedent('''
    import torch
    from torch import nn


    class Residual(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                      nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            return torch.relu(x + self.body(x))


    class Depthwise(nn.Module):
        def __init__(self, c_in, c_out):
            super().__init__()
            self.dw = nn.Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in, bias=False)
            self.bn1 = nn.BatchNorm2d(c_in)
            self.pw = nn.Conv2d(c_in, c_out, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)

        def forward(self, x):
            return torch.relu(self.bn2(self.pw(torch.relu(self.bn1(self.dw(x))))))


    class Head(nn.Module):
        def __init__(self, c, num_classes):
            super().__init__()
            self.fc1 = nn.Linear(c, 2 * c)
            self.fc2 = nn.Linear(2 * c, num_classes)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x.mean((2, 3)))))


    class Net(nn.Module):
        def __init__(self, width=16, num_classes=10):
            super().__init__()
            w = width
            self.stem = nn.Sequential(nn.Conv2d(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
            self.res1 = Residual(w)
            self.down = Depthwise(w, 2 * w)
            self.res2 = Residual(2 * w)
            self.branch_a = nn.Sequential(nn.Conv2d(2 * w, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
            self.branch_b = nn.Sequential(nn.Conv2d(2 * w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                                          nn.ReLU())
            self.head = Head(2 * w, num_classes)

        def forward(self, x):
            x = self.res2(self.down(self.res1(self.stem(x))))
            return self.head(torch.cat([self.branch_a(x), self.branch_b(x)], dim=1))


    def build_net(width=16, num_classes=10):
        return Net(width, num_classes)


    def broken(width=16):
        raise ValueError("width must be even")


    def not_a_model(width=16):
        return width


    class Branchy(nn.Module):  # data-dependent control flow: cannot be traced
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else self.conv(-x)


    def build_branchy():
        return Branchy()


    class Silent(Net):  # computes, returns nothing
        def forward(self, x):
            super().forward(x)


    def build_silent():
        return Silent()


    class Pair(Net):  # class scores and the features beside them, as many research models return
        def forward(self, x):
            y = super().forward(x)
            return y, y.detach()


    def build_pair(num_classes=10):
        return Pair(16, num_classes)


    class Named(Net):  # a constant where the output should be
        def forward(self, x):
            super().forward(x)
            return "logits"


    def build_named():
        return Named()


    WIDTH = 16  # a constant named where a factory should be


    def build_float64():  # process-wide settings changed on the way
        torch.set_default_dtype(torch.float64)
        return Net()


    def build_no_grad():
        torch.set_grad_enabled(False)
        return Net()


    class Flat(nn.Module):  # LeNet-style: flattens a feature map with .view, as written for NCHW tensors
        def __init__(self, num_classes=10):
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.fc = nn.Linear(16 * 16 * 16, num_classes)

        def forward(self, x):
            x = self.conv(x)
            return self.fc(x.view(x.size(0), -1))


    def build_flat(num_classes=10):
        return Flat(num_classes)


    class BatchOfOne(Flat):  # traces at batch 1, fails at any other batch size
        def forward(self, x):
            return self.fc(self.conv(x).reshape(1, -1))


    def build_batch_of_one(num_classes=10):
        return BatchOfOne(num_classes)


    _calls = [0]


    def build_varying(num_classes=10):  # widths drawn anew on each call, as random.choice would
        _calls[0] += 1
        return Net(8 * (1 + _calls[0] % 2), num_classes)
''')


@pytest.fixture
def nets(tmp_path, monkeypatch):
    """nets.py in a fresh folder, which is the current folder (as a user runs slimkit beside their code)."""
    (tmp_path / "nets.py").write_text(NETS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *needles):
    assert result.exit_code in (1, 2), result.output
    text = result.output.strip()
    assert "Traceback" not in text
    assert text.startswith("error:") and len(text.splitlines()) <= 4, text  # rich may wrap one line
    for n in needles:
        assert n in " ".join(text.split()), text


def test_the_users_model_prunes_regenerates_elsewhere_trains_and_exports(nets):
    """From the CLI: prune the file's factory at 50% MACs (default method) with factory kwargs, train the
    plan one epoch in a fresh process (G rebuilds through the factory there), export the checkpoint with
    onnxruntime parity <= 1e-4."""
    plan_path = nets / "p.json"
    r = run("prune", "./nets.py:build_net", "--flops", "50%", "--arch-kwargs", '{"width": 32}', "--input-size", "16",
            "--data", "synthetic", "--steps", "6", "--batch-size", "16", "--val-size", "32", "--no-plot",
            "--out", plan_path)
    assert r.exit_code == 0, r.output
    plan = json.loads(plan_path.read_text())
    assert plan["arch"] == "python:nets.py:build_net"
    assert plan["arch_kwargs"] == {"width": 32, "num_classes": 10}
    assert plan["graph_fingerprint"].startswith("sha256:") and "regenerable" not in plan
    assert abs(plan["flops"] - plan["budget"]["value"]) / plan["budget"]["value"] <= 0.01
    assert any(g["width"] < g["full"] for g in plan["groups"].values())

    proc = subprocess.run([sys.executable, "-m", "slimkit", "train", str(plan_path), "--data", "synthetic", "--epochs",
                           "1", "--max-steps-per-epoch", "2", "--batch-size", "16", "--out", str(nets / "run")],
                          capture_output=True, text=True, cwd=nets, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "final: test top-1" in proc.stdout

    r = run("export", nets / "run" / "checkpoint.pt", "--out", nets / "m.onnx", "--no-bench", "--atol", "1e-4")
    assert r.exit_code == 0, r.output
    assert "parity" in r.output
    import onnx
    meta = {p.key: p.value for p in onnx.load(str(nets / "m.onnx")).metadata_props}
    assert json.loads(meta["slimkit.plan"])["arch"] == "python:nets.py:build_net"


def test_module_factories_objects_and_their_plans(nets, monkeypatch):
    """The API takes a module path, a function and a model object; a model object's plan works in this
    process (and with model=) but says it cannot be regenerated elsewhere."""
    monkeypatch.syspath_prepend(str(nets))
    plan = slimkit.prune("python:nets:build_net", "50%", method="uniform", input_size=(3, 16, 16),
                         arch_kwargs={"width": 24})
    assert plan.arch == "python:nets:build_net" and plan.arch_kwargs == {"width": 24}
    thin = slimkit.generate(plan)
    assert count_flops(thin, (3, 16, 16)) == plan.flops

    import nets as user_nets
    assert slimkit.prune(user_nets.build_net, "50%", method="uniform", input_size=(3, 16, 16)).arch == \
        "python:nets:build_net"

    net = user_nets.Net(24)
    obj_plan = slimkit.prune(net, "50%", method="uniform", input_size=(3, 16, 16))
    assert obj_plan.arch.startswith("object:Net#") and obj_plan.regenerable is False
    assert json.loads(obj_plan.to_json())["regenerable"] is False
    assert count_flops(slimkit.generate(obj_plan), (3, 16, 16)) == obj_plan.flops
    thin = slimkit.generate(obj_plan, model=user_nets.Net(24))
    assert count_flops(thin, (3, 16, 16)) == obj_plan.flops
    assert net.stem[0].out_channels == 24  # the user's object is never resized

    elsewhere = json.loads(obj_plan.to_json())
    elsewhere["arch"] = "object:Net#999"  # as another process sees it: nothing held under that name
    with pytest.raises(PlanError, match="cannot be regenerated here"):
        slimkit.generate(elsewhere)
    with pytest.raises(PlanError, match="traces to a different graph"):
        slimkit.generate(obj_plan, model=user_nets.Net(32))


def test_a_factory_that_now_traces_differently_is_refused(nets):
    plan_path = nets / "p.json"
    r = run("prune", "nets.py:build_net", "--flops", "50%", "--method", "uniform", "--input-size", "16",
            "--num-classes", "10", "--no-plot", "--out", plan_path)
    assert r.exit_code == 0, r.output
    plan = json.loads(plan_path.read_text())
    plan["graph_fingerprint"] = "sha256:" + "0" * 16  # what a plan from older code of nets.py holds
    plan_path.write_text(json.dumps(plan))
    assert_one_line_error(run("export", plan_path, "--no-bench"), "traces to a different graph", "prune it again")


@pytest.mark.parametrize("arch, extra, needles", [
    ("nets.py:build_nett", (), ["has no 'build_nett'", "did you mean build_net"]),
    ("nets.py:qqq", (), ["has no 'qqq' (it defines ", ", ...)"]),  # more than the six named: not all of them
    ("missing.py:build_net", (), ["model factory file not found: missing.py"]),
    ("python:no_such_pkg.models:build_net", (), ["cannot import no_such_pkg.models", "No module named"]),
    ("nets.py:broken", (), ["raised ValueError: width must be even"]),
    ("nets.py:not_a_model", (), ["returned an int, not a torch.nn.Module"]),
    ("nets.py:build_net", ("--arch-kwargs", '{"depth": 3}'), ["does not take these arguments", "depth"]),
    ("nets.py:build_net", ("--arch-kwargs", "width=3"), ["cannot read --arch-kwargs"]),
    ("nets.py:build_branchy", (), ["could not trace the model"]),
    ("nets.py:build_silent", (), ["Silent.forward returns no tensor"]),
    ("nets.py:build_named", (), ["Named.forward returns no tensor", "'logits'"]),  # a constant passed as an output
    ("nets.py:WIDTH", (), ["nets.py:WIDTH is an int, not a function"]),
    ("nets.py:build_varying", (), ["builds a different model on each call", "make the factory deterministic"]),
    ("nets.py:", (), ["'nets.py:' names no factory after the colon", "nets.py:build_net"]),  # was "unknown source"
])
def test_bad_user_code_is_one_line(nets, arch, extra, needles):
    assert_one_line_error(run("info", arch, "--input-size", "16", *extra), *needles)


def test_a_forward_that_returns_a_tuple_is_one_line_when_classes_are_learned(nets):
    """A forward returning (logits, features) pruned by --method uniform, then stopped gate learning and
    training with an AttributeError traceback ('tuple' object has no attribute 'float')."""
    plan_path = nets / "p.json"
    r = run("prune", "nets.py:build_pair", "--flops", "50%", "--input-size", "16", "--data", "synthetic",
            "--steps", "2", "--no-plot", "--no-latency-check", "--out", plan_path)
    assert_error_after_progress(r, "Pair.forward returns a tuple", "[batch, classes]", "return the logits alone")
    assert not plan_path.exists()
    r = run("prune", "nets.py:build_pair", "--flops", "50%", "--method", "uniform", "--input-size", "16",
            "--num-classes", "10", "--no-plot", "--no-latency-check", "--out", plan_path)
    assert r.exit_code == 0, r.output
    r = run("train", plan_path, "--epochs", "1", "--data", "synthetic", "--max-steps-per-epoch", "1",
            "--batch-size", "8", "--out", nets / "run")
    assert_error_after_progress(r, "Pair.forward returns a tuple")


def assert_error_after_progress(result, *needles):
    """The command's progress lines, then its one error line (no traceback)."""
    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output and "error:" in result.output, result.output
    error = result.output[result.output.index("error:"):]
    assert len(error.strip().splitlines()) <= 4, error  # rich may wrap one line
    for n in needles:
        assert n in " ".join(error.split()), error


def test_a_module_named_like_one_already_imported_says_it_is_shadowed(nets):
    """The user's json.py named as python:json:build_net imported the standard library's json, and the
    error listed json's functions ('json has no build_net ... it defines JSONDecodeError ...')."""
    (nets / "json.py").write_text(NETS)
    assert_one_line_error(run("info", "python:json:build_net", "--input-size", "16"),
                          "names json.py in the current folder", "the module name json is taken by",
                          "name it as a file (json.py:build_net)")
    r = run("info", "json.py:build_net", "--input-size", "16")  # the file form reads the file
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("factory, words", [("build_float64", "torch's default dtype from torch.float32 to "
                                                                 "torch.float64"),
                                             ("build_no_grad", "torch's gradient mode from True to False")])
def test_a_factory_that_changes_process_wide_settings_is_refused_and_they_are_put_back(nets, factory, words):
    """A float64 default dtype set inside a factory failed the export later ('Input type (double) and bias type
    (float)... try another --opset'); gradients switched off failed gate learning with a traceback."""
    import torch

    assert_one_line_error(run("info", f"nets.py:{factory}", "--input-size", "16"), words, "slimkit put it back")
    assert torch.get_default_dtype() == torch.float32 and torch.is_grad_enabled()


def test_user_code_is_imported_only_when_named(nets):
    """Listing and resolving names never runs user code; the file runs when a command builds its model."""
    (nets / "loud.py").write_text("raise SystemExit('imported')\n")
    assert registry.resolve("loud.py:build").canonical == "python:loud.py:build"
    assert registry.is_user_code("./loud.py:build") and not registry.is_user_code("resnet20")
    with pytest.raises(RegistryError, match="importing loud.py raised SystemExit"):
        registry.create_model("loud.py:build")


def test_a_recipe_takes_arch_kwargs(nets):
    from slimkit.recipe import load_recipe
    (nets / "r.yaml").write_text("name: mine\narch: nets.py:build_net\narch_kwargs: {width: 8}\n"
                                 "prune: {flops: 50%, method: uniform}\n")
    assert load_recipe(nets / "r.yaml").arch_kwargs == {"width": 8}
    (nets / "bad.yaml").write_text("name: mine\narch: nets.py:build_net\narch_kwargs: [8]\nprune: {flops: 50%}\n")
    with pytest.raises(slimkit.SlimkitError, match="arch_kwargs must be"):
        load_recipe(nets / "bad.yaml")


def test_a_factory_without_num_classes_must_match_the_data(nets):
    (nets / "fixed.py").write_text("from torch import nn\n"
                                   "def build():\n"
                                   "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
                                   "                         nn.Flatten(), nn.Linear(8, 7))\n")
    r = run("prune", "fixed.py:build", "--flops", "50%", "--input-size", "16", "--data", "synthetic", "--steps", "2",
            "--out", nets / "p.json")
    assert_one_line_error(r, "outputs [1, 7]", "[batch, 10]", "num_classes parameter")


def test_arch_kwargs_that_contradict_a_plan_are_refused_not_ignored(nets):
    """A plan records the factory's arguments: export and train of it took --arch-kwargs width 8 and built
    the plan's width-16 model without a word."""
    plan_path = nets / "p.json"
    r = run("prune", "nets.py:build_net", "--arch-kwargs", '{"width": 16}', "--flops", "50%", "--method", "uniform",
            "--input-size", "16", "--num-classes", "10", "--no-plot", "--no-latency-check", "--out", plan_path)
    assert r.exit_code == 0, r.output
    for command in (["export", plan_path, "--no-bench", "--out", nets / "p.onnx"],
                    ["train", plan_path, "--epochs", "1", "--data", "synthetic", "--out", nets / "run"]):
        assert_one_line_error(run(*command, "--arch-kwargs", '{"width": 8}'), "does not apply to plan",
                              "'width': 16}")
    assert not (nets / "p.onnx").exists() and not (nets / "run").exists()


def test_a_users_model_without_a_default_num_classes_inherits_a_parent_with_the_datas_classes(nets):
    """The fine-tuning-onto-new-classes check built the user's model without arguments to read its default head:
    a factory whose num_classes has no default failed with 'missing a required argument: num_classes' where
    inheriting a 10-class parent on 10-class data had trained."""
    import torch

    from slimkit.generator import build_model
    from slimkit.train import TrainConfig, train

    (nets / "nets.py").write_text(NETS + "\n\ndef required(num_classes):\n    return Net(16, num_classes)\n")
    parent = nets / "parent.pt"
    torch.save(build_model("./nets.py:required", {"num_classes": 10}).state_dict(), parent)
    ft = TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=1, batch_size=8, schedule="finetune",
                     init="inherit", init_from=str(parent))
    said = []
    train("./nets.py:required", nets / "ft", ft, log=said.append)
    assert any(m.startswith("init: every weight of") for m in said), said
    # a parent trained on other classes: its classes were unreadable (the factory was built without arguments),
    # and the run was refused with a shape mismatch and advice about --num-classes
    torch.save(build_model("./nets.py:required", {"num_classes": 100}).state_dict(), parent)
    said.clear()
    train("./nets.py:required", nets / "ft100", ft, log=said.append)
    assert any("was trained for 100 classes and synthetic has 10" in m for m in said), said


def test_the_users_model_fine_tunes_from_a_parent_trained_on_other_classes(nets):
    """A factory that takes num_classes, fine-tuned from its 100-class weights on 10-class data: the head was
    resized, the plan kept the graph fingerprint of the 100-class build, and G refused its own plan: 'now traces
    to a different graph than the plan was made from: its code or arguments changed'."""
    import torch
    sys.path.insert(0, str(nets))
    try:
        import nets as user_nets
        torch.save(user_nets.build_net(num_classes=100).state_dict(), nets / "parent.pt")
    finally:
        sys.path.remove(str(nets))
        sys.modules.pop("nets", None)
    r = run("prune", "nets.py:build_net", "--flops", "50%", "--method", "uniform", "--input-size", "16",
            "--num-classes", "100", "--round-to", "1", "--out", "p.json")
    assert r.exit_code == 0, r.output
    r = run("train", "p.json", "--init", "inherit", "--from", "parent.pt", "--schedule", "finetune", "--data",
            "synthetic", "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "8", "--workers", "0",
            "--out", "ft")
    assert r.exit_code == 0, r.output
    assert "was trained for 100 classes and synthetic has 10" in " ".join(r.output.split())
    run_plan = json.loads((nets / "ft" / "plan.json").read_text())
    assert run_plan["arch_kwargs"]["num_classes"] == 10
    assert slimkit.generate(run_plan).head.fc2.out_features == 10  # the run's plan builds again


def test_a_model_that_flattens_with_view_learns_gates_and_trains(nets):
    """`x.view(x.size(0), -1)` over a feature map (LeNet, VGG-style heads) pruned, then crashed with a traceback in
    gate learning and in training: 'view size is not compatible with input tensor's size and stride', because
    slimkit runs models channels-last. Such a model learns and trains in the NCHW layout its code needs."""
    common = ("--data", "synthetic", "--batch-size", "8")
    r = run("prune", "./nets.py:build_flat", "--flops", "50%", "--input-size", "16", "--method", "scratch", "--steps",
            "2", "--val-size", "16", "--round-to", "1", "--tolerance", "0.1", "--no-plot", "--no-latency-check",
            "--out", nets / "p.json", *common)
    assert r.exit_code == 0, r.output
    r = run("train", nets / "p.json", "--epochs", "1", "--max-steps-per-epoch", "2", "--out", nets / "run", *common)
    assert r.exit_code == 0, r.output
    assert "trains in the NCHW layout" in " ".join(r.output.split())


def test_weights_of_the_factory_at_other_arguments_name_arch_kwargs(nets):
    """`prune nets.py:build_net --weights W` where W is build_net(width=32)'s: the refusal's fix was 'name the
    architecture (and --num-classes) it was trained as'; the same factory at other widths needs --arch-kwargs."""
    import torch

    weights = nets / "w32.pt"
    torch.save(registry.create_model("nets.py:build_net", width=32).state_dict(), weights)
    assert_one_line_error(run("prune", "nets.py:build_net", "--weights", weights, "--criterion", "l1", "--flops", "50%",
                              "--input-size", "16", "--round-to", "1", "--no-plot", "--no-latency-check",
                              "--out", nets / "p.json"), "does not hold weights of the full", "--arch-kwargs")
    assert not (nets / "p.json").exists()


def test_a_forward_that_fails_on_a_batch_is_one_line_naming_the_users_code(nets):
    """A model written for one image (`x.reshape(1, -1)`) traces and prunes at batch 1, then training, gate learning
    and export (BatchNorm calibration on batches) ended in a traceback through the user's forward."""
    plan = nets / "p.json"
    r = run("prune", "./nets.py:build_batch_of_one", "--flops", "50%", "--input-size", "16", "--round-to", "1",
            "--tolerance", "0.1", "--no-plot", "--no-latency-check", "--out", plan)
    assert r.exit_code == 0, r.output
    for args in (["train", plan, "--data", "synthetic", "--batch-size", "8", "--epochs", "1", "--out", nets / "run"],
                 ["export", plan, "--no-bench", "--out", nets / "m.onnx"]):
        r = run(*args)
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        error = " ".join(r.output[r.output.index("error:"):].split())
        assert all(n in error for n in ("your model's code raised RuntimeError", "(nets.py, line", "in forward",
                                        "batches of any size")), error
    assert not (nets / "m.onnx").exists() and not (nets / "run" / "checkpoint.pt").exists()

"""Choosing the int8 configuration by measured speed: ordering, caching, fallback on a failed check, and
what the export reports. A small ResNet-20 at 32 px; the timing itself is faked where the test is about the
choice, so the outcome does not depend on this CPU."""

import json

import onnx
import pytest
from typer.testing import CliRunner

from slimkit import int8_speed, prune
from slimkit.artifacts import load_model
from slimkit.cli import app
from slimkit.data import load_data
from slimkit.errors import SlimkitError
from slimkit.exporters import int8 as int8_module
from slimkit.exporters.int8 import Int8Check, QuantizeSettings, export_int8, settings_of
from slimkit.exporters.onnx import export, read_metadata
from slimkit.int8_speed import CANDIDATES, candidates_matching, ordered_settings, rank_int8_configs
from slimkit.latency import LatencyReport
from slimkit.plan import save_plan

runner = CliRunner()


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speed")
    plan = prune("resnet20", "50%", method="uniform", num_classes=10, round_to=8)  # 32 px
    plan_path = save_plan(plan, folder / "p.json")
    src = load_model(str(plan_path))
    path = folder / "model.onnx"
    export(src.model, src.input_size, path, exporter="torchscript", metadata={"slimkit.plan": src.plan.to_json()})
    return {"path": path, "plan_path": plan_path, "shape": (1, 3, 32, 32)}


def _fake_measure(ratios: dict[str, tuple[float, float, float]], calls: list):
    """A measure() whose ratios (median, CI low, CI high) to the first candidate are given per label."""
    def fake(cands, **_options):
        calls.append([c.name for c in cands])
        models = []
        for c in cands:
            r, lo, hi = ratios.get(c.name, (1.0, 0.98, 1.02))
            models.append({"name": c.name, "stats": {"median_ms": 2.0 * r}, "ratio": r, "ratio_ci": [lo, hi]})
        models[0].update(ratio=1.0, ratio_ci=[1.0, 1.0])
        return LatencyReport("ort-cpu", "cpu", 1, 1, 0, 5, models)
    return fake


def replace_fmt(act: str, fmt: str) -> QuantizeSettings:
    return QuantizeSettings(activation_type=act, quant_format=fmt)


def test_candidates_cover_formats_and_types_default_first():
    assert CANDIDATES[0] == QuantizeSettings()
    assert {(s.quant_format, s.activation_type, s.weight_type) for s in CANDIDATES} == {
        (f, a, w) for f in ("QDQ", "QOperator") for a, w in (("uint8", "int8"), ("int8", "int8"), ("uint8", "uint8"))}
    assert [s.label for s in CANDIDATES if s.reduce_range] == ["QDQ u8/s8 per-channel 7-bit"]
    only_s8 = candidates_matching(activations="int8")
    assert {s.activation_type for s in only_s8} == {"int8"} and len(only_s8) == 2
    assert [s.label for s in candidates_matching("QOperator", "uint8", "int8")] == ["QOperator u8/s8 per-channel"]
    with pytest.raises(SlimkitError, match="unknown --int8-format 'QNN'"):
        candidates_matching(quant_format="QNN")


def test_a_confidently_faster_configuration_ranks_first_and_noise_does_not(fp32, monkeypatch, tmp_path):
    monkeypatch.setenv("SLIMKIT_NO_TIMING", "0")  # this test is about the timed ranking
    calls = []
    qop = "QOperator u8/s8 per-channel"
    s8 = "QDQ s8/s8 per-channel"
    monkeypatch.setattr(int8_speed, "measure", _fake_measure(
        {qop: (0.80, 0.75, 0.85), s8: (0.95, 0.90, 0.99), "fp32": (1.30, 1.2, 1.4)}, calls))
    cands = [QuantizeSettings(), replace_fmt("int8", "QDQ"), replace_fmt("uint8", "QOperator")]
    ranking = rank_int8_configs(fp32["path"], fp32["shape"], candidates=cands, cache=tmp_path / "c.json")
    # QOperator's whole interval is below the default; QDQ s8/s8 by less than MIN_GAIN (3%): after the default
    assert [c["label"] for c in ranking.configurations] == [qop, "QDQ u8/s8 per-channel", s8]
    assert ranking.source == "measured" and ranking.reference == "QDQ u8/s8 per-channel"
    assert ranking.int8_over_fp32 == pytest.approx(0.80 / 1.30)
    assert calls == [[c.label for c in cands] + ["fp32"]]
    # cached per machine and model structure: a second call does not time
    again = rank_int8_configs(fp32["path"], fp32["shape"], candidates=cands, cache=tmp_path / "c.json")
    assert again.source == "cached" and again.configurations == ranking.configurations and len(calls) == 1
    store = json.loads((tmp_path / "c.json").read_text())
    entry = next(iter(store["rankings"].values()))
    assert entry["machine"]["onnxruntime"] and entry["machine"]["cpu"]
    # another candidate set is another question: timed again
    rank_int8_configs(fp32["path"], fp32["shape"], candidates=cands[:2], cache=tmp_path / "c.json")
    assert len(calls) == 2
    assert [s.quant_format for s in ordered_settings(ranking, QuantizeSettings(calib_images=7))] == \
        ["QOperator", "QDQ", "QDQ"]


def test_damaged_cache_is_measured_again(fp32, monkeypatch, tmp_path):
    monkeypatch.setenv("SLIMKIT_NO_TIMING", "0")  # this test is about the timed ranking
    calls = []
    monkeypatch.setattr(int8_speed, "measure", _fake_measure({}, calls))
    cache, said = tmp_path / "c.json", []
    cache.write_text("{not json")
    ranking = rank_int8_configs(fp32["path"], fp32["shape"], candidates=list(CANDIDATES[:2]), cache=cache,
                                say=said.append)
    assert ranking.source == "measured" and len(calls) == 1
    # slimkit writes its caches atomically, so a file it cannot read is not one it wrote: left as it is
    assert cache.read_text() == "{not json" and any("is not slimkit's cache" in line for line in said)
    cache.unlink()
    rank_int8_configs(fp32["path"], fp32["shape"], candidates=list(CANDIDATES[:2]), cache=cache)
    assert json.loads(cache.read_text())["format"] == int8_speed.RANKING_FORMAT


@pytest.mark.parametrize("edit", [
    lambda e: e.update(configurations=[]), lambda e: e.update(configurations=e["configurations"][:1]),
    lambda e: e["configurations"][0].update(quant_format="bogus"), lambda e: e["configurations"][0].pop("weight_type"),
    lambda e: e["configurations"][0].update(ratio=0), lambda e: e["configurations"][0].update(ratio="fast"),
    lambda e: e["configurations"][1].update(ratio_ci=[1.0]), lambda e: e.update(fp32_ratio=float("nan")),
    lambda e: e.update(configurations="x"), lambda e: e.update(machine=[])])
def test_a_hand_edited_int8_ranking_cache_is_measured_again_not_trusted(fp32, monkeypatch, tmp_path, edit):
    monkeypatch.setenv("SLIMKIT_NO_TIMING", "0")  # this test is about the timed ranking
    calls = []
    monkeypatch.setattr(int8_speed, "measure", _fake_measure({}, calls))
    cache, cands = tmp_path / "c.json", list(CANDIDATES[:2])
    first = rank_int8_configs(fp32["path"], fp32["shape"], candidates=cands, cache=cache)
    store = json.loads(cache.read_text())
    edit(next(iter(store["rankings"].values())))
    cache.write_text(json.dumps(store))
    again = rank_int8_configs(fp32["path"], fp32["shape"], candidates=cands, cache=cache)
    assert again.source == "measured" and len(calls) == 2 and again.configurations == first.configurations
    assert [s.quant_format for s in ordered_settings(again, QuantizeSettings())] == ["QDQ", "QDQ"]


def test_real_timing_quantizes_every_configuration_and_ranks_them(fp32, monkeypatch, tmp_path):
    monkeypatch.setenv("SLIMKIT_NO_TIMING", "0")
    ranking = rank_int8_configs(fp32["path"], fp32["shape"], runs=5, warmup=1, cache=None)
    labels = {c["label"] for c in ranking.configurations}
    assert len(labels) + len(ranking.skipped) == len(CANDIDATES)
    assert all(c["median_ms"] > 0 for c in ranking.configurations) and ranking.fp32_ratio > 0


def test_no_timing_keeps_the_default_order_and_measures_nothing(fp32, monkeypatch, tmp_path):
    """SLIMKIT_NO_TIMING=1 (shared CI runners): the export must not depend on a timing there."""
    calls = []
    monkeypatch.setattr(int8_speed, "measure", _fake_measure({}, calls))
    ranking = rank_int8_configs(fp32["path"], fp32["shape"], cache=tmp_path / "c.json")
    assert ranking.source == "untimed" and calls == [] and not (tmp_path / "c.json").exists()
    assert [c["label"] for c in ranking.configurations] == [c.label for c in CANDIDATES]
    assert "SLIMKIT_NO_TIMING" in ranking.summary()


def test_export_falls_back_to_the_next_configuration_when_the_check_fails(fp32, monkeypatch, tmp_path):
    real = int8_module.check_int8
    seen = []

    def first_fails(*args, **kwargs):
        check = real(*args, **kwargs)
        seen.append(check)
        if len(seen) == 1:
            check = Int8Check(**{**check.__dict__, "output_error": 5.0})
        return check

    monkeypatch.setattr(int8_module, "check_int8", first_fails)
    data = load_data("fashion-mnist", data_dir=None, input_size=(3, 32, 32), val_size=0)
    # the second (int8 activations) passes on CPUs with and without VNNI
    first, second = (QuantizeSettings(calib_images=32, quant_format="QOperator"),
                     QuantizeSettings(calib_images=32, activation_type="int8"))
    warnings = []
    out = fp32["path"].with_name("fb.int8.onnx")
    res = export_int8(fp32["path"], data, trained=False, settings=[first, second], out=out, eval_images=64,
                      choice={"why": "test"}, warn=warnings.append)
    assert len(seen) == 2 and "QOperator u8/s8 per-channel failed the check" in warnings[0]
    assert [a["passed"] for a in res.details["attempts"]] == [False, True]
    q = json.loads(read_metadata(out)["slimkit.quantization"])
    assert q["configuration"] == "QDQ s8/s8 per-channel" and q["chosen_by"] == {"why": "test"}
    assert settings_of(out) == QuantizeSettings(activation_type="int8")  # another file can be quantized the same way
    record = json.loads(out.with_name("fb.int8.check.json").read_text())
    assert [a["configuration"] for a in record["attempts"]] == [first.label, second.label]


def test_qoperator_files_hold_integer_operators(fp32, tmp_path):
    out = int8_module.quantize_for_timing(fp32["path"], (3, 32, 32), tmp_path / "q.int8.onnx",
                                          settings=QuantizeSettings(quant_format="QOperator"))
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "QLinearConv" in ops and "Conv" not in ops  # integer operators in the file itself, no QDQ pairs
    assert settings_of(out).quant_format == "QOperator"


def test_quantizer_advice_for_configurations_timed_on_purpose_stays_out_of_the_terminal(fp32, tmp_path, caplog):
    """QOperator s8/s8 is one of the configurations int8_speed ranks by measurement; onnxruntime's
    "Please use QuantFormat.QDQ" line on the root logger would be a stray line in every export."""
    with caplog.at_level("WARNING"):
        int8_module.quantize_for_timing(fp32["path"], (3, 32, 32), tmp_path / "q.int8.onnx",
                                        settings=QuantizeSettings(quant_format="QOperator", activation_type="int8"))
    assert not [r for r in caplog.records if "QuantFormat.QDQ" in r.getMessage()]


def _export_int8(fp32, out, *options):
    """`slimkit export PLAN --int8` on a few Fashion-MNIST images, untimed by bench, at a wide terminal."""
    return runner.invoke(app, ["export", str(fp32["plan_path"]), "-o", str(out), "--exporter", "torchscript",
                               "--no-bench", "--int8", "--data", "fashion-mnist", "--calib-images", "32",
                               "--eval-images", "64", *options], terminal_width=200)


def test_cli_export_reports_which_configuration_ran(fp32, monkeypatch, tmp_path):
    monkeypatch.setenv("SLIMKIT_NO_TIMING", "0")  # this test is about the timed ranking
    calls = []
    qdq_s8 = "QDQ s8/s8 per-channel"
    monkeypatch.setattr(int8_speed, "measure", _fake_measure({qdq_s8: (0.6, 0.55, 0.65), "fp32": (1.5, 1.4, 1.6)},
                                                             calls))
    out = tmp_path / "m.onnx"
    r = _export_int8(fp32, out, "--int8-format", "QDQ")
    assert r.exit_code == 0, r.output
    assert calls and all("QOperator" not in name for name in calls[0])  # --int8-format QDQ: only QDQ timed
    assert "QDQ s8/s8 per-channel: the first of 4, in the order ranked here, that passed" in \
        " ".join(r.output.replace("│", " ").split())
    q = json.loads(read_metadata(out.with_name("m.int8.onnx"))["slimkit.quantization"])
    assert (q["quant_format"], q["activation_type"], q["weight_type"]) == ("QDQ", "int8", "int8")
    assert q["chosen_by"]["configurations"][0]["label"] == qdq_s8


def test_cli_explicit_configuration_is_not_timed(fp32, monkeypatch, tmp_path):
    monkeypatch.setattr(int8_speed, "measure", lambda *a, **k: pytest.fail("timed an explicit configuration"))
    out = tmp_path / "m.onnx"
    r = _export_int8(fp32, out, "--int8-format", "QDQ", "--int8-activations", "int8", "--int8-weights", "int8")
    assert r.exit_code == 0, r.output
    assert "as asked" in r.output


def test_the_default_kept_within_the_noise_is_not_called_the_fastest(fp32, monkeypatch, tmp_path):
    """The table said 'QDQ u8/s8 per-channel: the fastest of 7' beside 'QDQ u8/s8 per-channel 7-bit 0.94':
    the default stays first unless another's whole interval is 3% faster, which is what it should say."""
    monkeypatch.setenv("SLIMKIT_NO_TIMING", "0")
    seven_bit = "QDQ u8/s8 per-channel 7-bit"
    monkeypatch.setattr(int8_speed, "measure", _fake_measure({seven_bit: (0.96, 0.90, 1.02), "fp32": (1.5, 1.4, 1.6)},
                                                             []))
    out = tmp_path / "m.onnx"
    r = _export_int8(fp32, out, "--int8-format", "QDQ", "--int8-activations", "uint8", "--int8-weights", "int8")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.replace("│", " ").split())
    assert "QDQ u8/s8 per-channel: the first of 2" in text and f"{seven_bit} 0.96" in text, text
    assert "the fastest" not in text and "stays first unless another's whole 95% interval is 3% faster" in text, text

"""Interleaved latency measurement, paired ratios, and the CI gate's decisions and errors."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from slimkit.cli import app
from slimkit.latency import (Candidate, LatencyError, LatencyReport, check_regression, measure, paired_ratio,
                             physical_cores, summarize)

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_physical_cores_is_positive():
    assert physical_cores() >= 1


def test_paired_ratio_cancels_common_drift():
    rng = np.random.default_rng(0)
    drift = np.linspace(1, 3, 200)  # the machine slows down 3x during the run
    ref = 10 * drift * rng.lognormal(0, 0.02, 200)
    model = 5 * drift * rng.lognormal(0, 0.02, 200)
    ratio, lo, hi = paired_ratio(model, ref)
    assert lo <= ratio <= hi
    assert abs(ratio - 0.5) < 0.01 and hi - lo < 0.02
    # the ratio of unpaired medians would be just as right here, but only pairing gives a tight CI
    assert np.median(model) / np.median(ref) == pytest.approx(0.5, abs=0.02)


def test_summary_statistics():
    s = summarize(np.array([1.0, 2.0, 3.0, 4.0, 100.0]), batch=4)
    assert s["min_ms"] == 1.0 and s["median_ms"] == 3.0 and s["p99_ms"] > s["p90_ms"] > s["median_ms"]
    assert s["throughput_per_s"] == pytest.approx(4000 / 3)


def _report(ratio, ci):
    stats = summarize(np.ones(5), 1)
    return LatencyReport(backend="ort-cpu", device="x", threads=1, batch=1, warmup=1, runs=5, models=[
        {"name": "ref", "stats": stats, "ratio": 1.0, "ratio_ci": [1, 1]},
        {"name": "m", "stats": stats, "ratio": ratio, "ratio_ci": list(ci)}])


@pytest.mark.parametrize("ratio,ci,passed", [
    (0.50, (0.49, 0.51), True),    # unchanged
    (0.56, (0.54, 0.58), True),    # +12% but the interval reaches below the +10% limit: not proven
    (0.60, (0.58, 0.62), False),   # +20%: the whole interval is past the limit
    (1.00, (0.99, 1.01), False),   # the full model against a half-size model's baseline
])
def test_gate_fails_only_on_a_confident_regression(ratio, ci, passed):
    res = check_regression(_report(ratio, ci), {"ratio": 0.5}, 0.10)
    assert res.passed is passed
    assert res.message.startswith("PASS" if passed else "FAIL")
    assert ("inconclusive" in res.message) is (passed and ratio > 0.55)  # over the limit, not confidently


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory):
    """A resnet20 at ~25% FLOPs (channels in multiples of 8: ragged widths are slow) and the full one,
    exported (tiny: fast to time)."""
    folder = tmp_path_factory.mktemp("pair")
    assert run("prune", "resnet20", "--flops", "25%", "--method", "uniform", "--tolerance", "0.05",
               "--num-classes", "10", "-o", folder / "half.json", "--no-plot").exit_code == 0
    for src, out in (("half.json", "half.onnx"), ("resnet20", "full.onnx")):
        r = run("export", src if src == "resnet20" else folder / src, "--out", folder / out, "--no-bench",
                "--exporter", "torchscript", "--num-classes", "10")
        assert r.exit_code == 0, r.output
    return folder


def test_bench_side_by_side_writes_report(onnx_pair, tmp_path):
    r = run("bench", onnx_pair / "full.onnx", onnx_pair / "half.onnx", "--runs", "20", "--threads", "1",
            "--out", tmp_path / "lat")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "lat.json").read_text())
    assert rep["interleaved"] and rep["threads"] == 1 and rep["batch"] == 1
    full, half = rep["models"]
    assert full["ratio"] == 1.0 and len(rep["times_ms"]["half"]) == 20
    assert half["flops"] < full["flops"]
    assert (tmp_path / "lat.md").read_text().count("|") > 20 and (tmp_path / "lat.png").stat().st_size > 1000


def test_gate_records_passes_and_catches_a_slower_model(onnx_pair, tmp_path):
    base = tmp_path / "baseline.json"
    r = run("bench", onnx_pair / "half.onnx", "--baseline", base, "--update-baseline", "--runs", "30",
            "--threads", "1")
    assert r.exit_code == 0, r.output
    gate = json.loads(base.read_text())["gate"]
    assert gate["reference"] == "full-resnet20" and 0.2 < gate["ratio"] < 0.7
    # the same model again passes (generous tolerance: this test must never flake)...
    r = run("bench", onnx_pair / "half.onnx", "--baseline", base, "--max-regression", "40%", "--runs", "30",
            "--out", tmp_path / "chk")
    assert r.exit_code == 0, r.output
    assert "PASS" in r.output
    # ...and the full model checked against the half model's baseline fails with exit code 1
    r = run("bench", onnx_pair / "full.onnx", "--baseline", base, "--max-regression", "10%", "--runs", "30",
            "--out", tmp_path / "chk2")
    assert r.exit_code == 1, r.output
    assert "FAIL" in r.output


def _one_line_error(r, needle):
    assert r.exit_code == 2, r.output
    text = r.output.strip()
    assert text.startswith("error:") and "Traceback" not in text and needle in text.replace("\n", " ")


def test_bench_errors_are_one_line(onnx_pair, tmp_path):
    _one_line_error(run("bench", tmp_path / "nope.onnx"), "not found")
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    _one_line_error(run("bench", junk), "not an ONNX model")
    _one_line_error(run("bench", onnx_pair / "half.onnx", "--baseline", tmp_path / "none.json"),
                    "--update-baseline")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    _one_line_error(run("bench", onnx_pair / "half.onnx", "--baseline", bad), "not a slimkit latency baseline")
    _one_line_error(run("bench", onnx_pair / "half.onnx", "--backend", "tpu"), "unknown --backend")


def test_gate_rejects_a_model_with_another_input_shape(onnx_pair, tmp_path):
    base = tmp_path / "baseline.json"
    assert run("bench", onnx_pair / "half.onnx", "--baseline", base, "--update-baseline", "--runs", "10",
               "--threads", "1").exit_code == 0
    other = tmp_path / "r20_64.onnx"
    assert run("export", "resnet20", "--num-classes", "10", "--input-size", "64", "--out", other, "--no-bench",
               "--exporter", "torchscript").exit_code == 0
    _one_line_error(run("bench", other, "--baseline", base), "recorded at 1x3x32x32")


def test_another_models_baseline_names_both_models_by_file_and_macs(onnx_pair, tmp_path):
    """The refusal said 'recorded for another model (model), not runs/u20/model.onnx': the recorded name
    is the file's stem, and every training run's export is model.onnx."""
    base = tmp_path / "baseline.json"
    assert run("bench", onnx_pair / "half.onnx", "--baseline", base, "--update-baseline", "--runs", "10",
               "--threads", "1").exit_code == 0
    data = json.loads(base.read_text())
    data["gate"]["model_fingerprint"] = "0123456789abcdef"
    base.write_text(json.dumps(data))
    r = run("bench", onnx_pair / "full.onnx", "--baseline", base, "--runs", "10")
    _one_line_error(r, "recorded for another model")
    text = " ".join(r.output.split())
    assert f"({onnx_pair / 'half.onnx'}, " in text and f"not {onnx_pair / 'full.onnx'}, 40.8M MACs" in text, text


def test_gate_refuses_a_baseline_it_cannot_trust(onnx_pair, tmp_path):
    """Another model's baseline, impossible ratios, another format: exit 2 and one line, never a verdict."""
    base = tmp_path / "baseline.json"
    assert run("bench", onnx_pair / "half.onnx", "--baseline", base, "--update-baseline", "--runs", "10",
               "--threads", "1").exit_code == 0
    good = json.loads(base.read_text())

    def check_with(change, needle):
        data = json.loads(json.dumps(good))
        change(data)
        path = tmp_path / "changed.json"
        path.write_text(json.dumps(data))
        _one_line_error(run("bench", onnx_pair / "half.onnx", "--baseline", path, "--runs", "10"), needle)

    check_with(lambda d: d["gate"].update(model_fingerprint="0123456789abcdef"), "recorded for another model")
    check_with(lambda d: d["gate"].update(ratio=0.0), "impossible latency ratio")
    check_with(lambda d: d["gate"].update(ratio=float("nan")), "impossible latency ratio")
    check_with(lambda d: d["gate"].update(ratio="1e308"), "impossible latency ratio")  # text, and huge
    check_with(lambda d: d["gate"].update(ratio=1e308, ratio_ci=[1e307, 1e308]), "impossible latency ratio")
    check_with(lambda d: d["gate"].update(ratio=d["gate"]["ratio_ci"][1] * 2), "impossible latency ratio")
    # a ratio edited to let a slower model pass (CI edited to match) is not what the recorded times give
    check_with(lambda d: d["gate"].update(ratio=5.0, ratio_ci=[4.9, 5.1]), "not what its recorded times give")
    check_with(lambda d: d["times_ms"].update({d["gate"]["model"]: [t / 5 for t in d["times_ms"][d["gate"]["model"]]]}),
               "not what its recorded times give")
    check_with(lambda d: d.pop("times_ms"), "per-round times")
    check_with(lambda d: d["times_ms"].update({d["gate"]["reference"]: [0.0] * len(d["times_ms"][d["gate"]["reference"]])}),
               "per-round times")
    check_with(lambda d: d.update(format="slimkit.latency/0"), "format")
    check_with(lambda d: d["gate"].pop("model_fingerprint"), "which model")
    # the settings the check re-measures with are the CLI's own ranges: a billion threads is not an allocation error
    check_with(lambda d: d.update(threads=10**9), "'threads' must be in [1, 1024]")
    check_with(lambda d: d.update(threads=True), "'threads' must be a number")
    check_with(lambda d: d.update(batch=10**7), "'batch' must be in [1, 65536]")
    # a damaged reference is one line, and a reference of another input size is no ratio at all
    check_with(lambda d: d["gate"].update(reference_spec={"kind": "onnx"}), "damaged reference")
    check_with(lambda d: d["gate"].update(reference_spec={"kind": "onnx", "path": 3}), "damaged reference")
    check_with(lambda d: d["gate"].update(reference_spec={"kind": "checkpoint", "path": None}), "damaged reference")
    check_with(lambda d: d["gate"].update(reference_spec={"kind": "plan", "plan": None}), "damaged reference")
    check_with(lambda d: d["gate"].update(reference=["full"]), "damaged reference")
    check_with(lambda d: d["gate"]["reference_spec"]["plan"].update(input_size=[3, 64, 64], flops=None),
               "recorded at 1x3x32x32")
    _one_line_error(run("bench", onnx_pair / "half.onnx", "--baseline", base, "--reference", "nosuchnet"),
                    "--update-baseline")


# ---------------------------------------------------------------------------- timing modes
def test_served_mode_is_recorded_in_the_report(onnx_pair, tmp_path):
    r = run("bench", onnx_pair / "full.onnx", onnx_pair / "half.onnx", "--runs", "12", "--threads", "1",
            "--timing", "served", "--out", tmp_path / "lat")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "lat.json").read_text())
    assert rep["mode"] == "served" and rep["interleaved"] is False
    assert len(rep["times_ms"]["half"]) == 12 and 0 < rep["models"][1]["ratio"] < 1
    assert "served" in (tmp_path / "lat.md").read_text()
    assert LatencyReport.from_dict(rep).mode == "served"


def test_served_timing_in_more_blocks_pairs_every_run(onnx_pair):
    cands = [Candidate(name=n, input_shape=(1, 3, 32, 32), onnx_path=onnx_pair / f"{n}.onnx", spec={"kind": "onnx"})
             for n in ("full", "half")]
    rep = measure(cands, threads=1, warmup=3, runs=10, mode="served", blocks=5)
    assert all(len(t) == 10 and min(t) > 0 for t in rep.times_ms.values())  # 5 blocks of 2 runs, none left at 0
    assert 0 < rep.models[1]["ratio"] < 1
    with pytest.raises(LatencyError, match="1 to 10 blocks"):
        measure(cands, threads=1, runs=10, mode="served", blocks=11)


def test_served_timing_opens_a_fresh_session_for_every_block(onnx_pair, monkeypatch):
    # a session keeps the speed it started with, so served timing spreads each model over one session per block
    # (the median pairs then outvote an unlucky one); interleaved rounds keep one session per model
    import slimkit.latency as latency

    opened = []
    real = latency._ort_runner
    monkeypatch.setattr(latency, "_ort_runner", lambda c, *a: opened.append(c.name) or real(c, *a))
    cands = [Candidate(name=n, input_shape=(1, 3, 32, 32), onnx_path=onnx_pair / f"{n}.onnx", spec={"kind": "onnx"})
             for n in ("full", "half")]
    measure(cands, threads=1, warmup=3, runs=8, mode="served", blocks=4)
    assert sorted(opened) == ["full"] * 4 + ["half"] * 4
    opened.clear()
    measure(cands, threads=1, warmup=3, runs=8, mode="interleaved")
    assert sorted(opened) == ["full", "half"]


def test_gate_refuses_to_compare_across_timing_modes_and_settings(onnx_pair, tmp_path):
    base = tmp_path / "baseline.json"
    r = run("bench", onnx_pair / "half.onnx", "--baseline", base, "--update-baseline", "--runs", "10",
            "--threads", "1")
    assert r.exit_code == 0, r.output
    data = json.loads(base.read_text())
    assert data["mode"] == "interleaved" and data["gate"]["mode"] == "interleaved"
    r = run("bench", onnx_pair / "half.onnx", "--baseline", base, "--timing", "served", "--runs", "10",
            "--out", tmp_path / "chk")
    _one_line_error(r, "timing mode")
    # so are other settings: --backend and --batch were ignored without a word (the report said ort-cpu,
    # batch 1), and --threads 2 against this 1-thread baseline compared another ratio
    for option, value in (("--threads", "2"), ("--backend", "torch"), ("--batch", "4")):
        _one_line_error(run("bench", onnx_pair / "half.onnx", "--baseline", base, option, value, "--out",
                            tmp_path / "chk"), f"recorded with {option}")
    assert not list(tmp_path.glob("chk.*"))
    # the library refuses too: a served report against an interleaved baseline is not a regression check
    report = _report(0.5, (0.49, 0.51))
    report.mode = "served"
    with pytest.raises(LatencyError, match="not comparable"):
        check_regression(report, data["gate"], 0.1)
    # a baseline written before modes existed was interleaved, and still checks
    assert check_regression(_report(0.5, (0.49, 0.51)), {"ratio": 0.5}, 0.1).passed


def test_unknown_timing_mode_is_one_line(onnx_pair, tmp_path):
    _one_line_error(run("bench", onnx_pair / "half.onnx", "--timing", "fast", "--out", tmp_path / "x"), "timing mode")


def test_one_file_given_twice_is_named_not_blamed_on_its_name(onnx_pair, tmp_path, monkeypatch):
    # `slimkit bench m.onnx ./m.onnx` said "two models share a name (m, m); rename one file": renaming
    # would not help, the same file is given twice
    monkeypatch.chdir(onnx_pair)
    r = run("bench", "half.onnx", "./half.onnx", "--runs", "5", "--out", tmp_path / "lat")
    _one_line_error(r, "half.onnx is given twice: give each model once")
    r = run("bench", "half.json", "half.json", "--runs", "5", "--out", tmp_path / "lat")
    _one_line_error(r, "model 'half' (the same plan) is given twice")
    (tmp_path / "other").mkdir()  # two files of one name: renaming one is the fix
    (tmp_path / "other" / "half.onnx").write_bytes((onnx_pair / "half.onnx").read_bytes())
    r = run("bench", "half.onnx", tmp_path / "other" / "half.onnx", "--runs", "5", "--out", tmp_path / "lat")
    _one_line_error(r, "two models share a name (half, half); rename one file")

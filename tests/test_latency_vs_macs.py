"""bench/latency_vs_macs.py end to end on one tiny model (uniform plans only, 32 px, a few runs): every plan
gets fp32 and int8 ratios, lat/MAC and a profile, and the results files say what they were measured on."""

import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location("latency_vs_macs",
                                              Path(__file__).parent.parent / "bench" / "latency_vs_macs.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_one_model_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "MODELS", {"ResNet-20": "resnet20"})
    monkeypatch.setattr(bench, "SIDE", 32)
    monkeypatch.setattr(bench, "HIGH", 0.0)  # every plan counts as slow: its profile is written out
    out = tmp_path / "lvm"
    monkeypatch.setattr("sys.argv", ["latency_vs_macs.py", "--methods", "uniform", "--runs", "5", "--profile-runs",
                                     "2", "--threads", "1", "--round-to", "4", "--repeats", "2", "--work", str(tmp_path / "work"),
                                     "--out", str(out), "--same-process"])  # the patched globals live in this process
    bench.main()
    data = json.loads(out.with_suffix(".json").read_text())
    row = data["rows"][0]
    assert set(row["plans"]) == {"full", "uniform 50%", "uniform 25%"} and row["round_to"] == 4
    half = row["plans"]["uniform 50%"]
    assert 0.45 < half["mac_ratio"] < 0.55
    for precision in ("fp32", "int8"):
        e = half[precision]
        assert e["ratio"] > 0 and abs(e["ratio_over_macs"] - e["ratio"] / half["mac_ratio"]) < 1e-3
        assert len(e["repeat_ratios"]) == 2 and e["ratio"] in e["repeat_ratios"]
        assert {c["category"] for c in e["profile"]} >= {"other conv"}
    assert data["meta"]["cpu"] and "lscpu_flags" in data["meta"] and "--round-to 4" in data["meta"]["command"]
    md = out.with_suffix(".md").read_text()
    assert "ResNet-20 | uniform 50%" in md and "Where the time goes" in md and "**ResNet-20 uniform 50% fp32**" in md
    assert "fp32 plans at 50% with lat/MAC ≤ 0.0: **0 of 1**" in md
    assert row["timing"] == "served" and row["blocks"] == 5 and "served: onnxruntime defaults" in md
    assert "in 2 repeats" in md and "repeat by repeat: 0 of 1, 0 of 1" in md
    assert out.with_suffix(".png").stat().st_size > 1000

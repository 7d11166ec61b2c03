"""G over the whole zoo (slow: ~15 min on 2 cores; run with `make test-slow`)."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("zoo_roundtrip", Path(__file__).parent.parent / "bench" / "zoo_roundtrip.py")
zoo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(zoo)


def _ok(arch: str) -> bool:
    side = zoo.LARGE_MIN.get(arch.split(":")[1], zoo.SIZE)
    try:
        return zoo.check(arch, "50%", 1.0, side)["ok"] and zoo.check(arch, "x1.25", 1.25, side)["ok"]
    except Exception:  # noqa: BLE001 - a failure counts against the rate below
        return False


@pytest.mark.slow
def test_required_timm_models_all_round_trip():
    failed = [a for a in zoo.TIMM_REQUIRED if not _ok(f"timm:{a}")]
    assert not failed


@pytest.mark.slow
def test_at_least_90_percent_of_torchvision_cnns_round_trip():
    names = zoo.torchvision_cnns()
    ok = sum(_ok(f"torchvision:{n}") for n in names)
    assert ok / len(names) >= 0.9, f"{ok}/{len(names)}"


# Models whose channels are split with fixed sizes (mixed kernels, radix attention, Res2Net
# scales, CSP halves, ghost concats, channel shuffle) and a few plain ones.
SPLIT_MODELS = ["timm:mixnet_s", "timm:resnest14d", "timm:res2net50_14w_8s", "timm:cspresnet50",
                "timm:ghostnet_050", "torchvision:shufflenet_v2_x0_5", "timm:poolformer_s12"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", SPLIT_MODELS)
def test_split_models_prune_uniform_50_within_1_percent(arch):
    row = zoo.check_broad(arch)
    assert row["ok"], row.get("reason")
    assert abs(row["ratio"] - 1) <= 0.01
    assert row["frozen_share"] < 0.10, row["frozen"]


@pytest.mark.slow
def test_stored_split_sizes_are_found_where_models_store_them():
    rows = {a: zoo.check_broad(a) for a in ("timm:mixnet_s", "timm:res2net50_14w_8s", "timm:cspresnet50")}
    assert all(r["stored_sizes"] > 0 for r in rows.values()), {a: r["stored_sizes"] for a, r in rows.items()}

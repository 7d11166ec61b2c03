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

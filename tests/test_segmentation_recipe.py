"""The segmentation recipe (recipes/shapes_lraspp_50.yaml) under `slimkit run`: learned gates on the shapes
masks, and a summary that judges the models by mIoU, not top-1."""

from pathlib import Path

import pytest

from slimkit import data as data_module
from slimkit.pipeline import run_recipe
from slimkit.recipe import RecipeError, load_recipe, num_classes_of
from slimkit.train import headline_metric

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "shapes_lraspp_50.yaml"


def test_the_segmentation_recipe_learns_gates_on_shapes_masks_and_is_judged_by_miou():
    recipe = load_recipe(RECIPE)
    assert recipe.arch.endswith("lraspp_mobilenet_v3_large") and recipe.data.name == "shapes"
    assert recipe.prune.method == "scratch" and num_classes_of(recipe) == 4
    assert headline_metric(recipe.arch) == ("test_miou", "test mIoU")
    with pytest.raises(RecipeError, match="a segmentation model trains on masks: data.name shapes or voc:PATH"):
        load_recipe(RECIPE, ["data.name=cifar10"])


@pytest.mark.slow
def test_the_segmentation_recipe_runs_end_to_end_and_summarizes_miou(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "SHAPES_SPLITS", {"train": 8, "val": 4, "test": 4})
    recipe = load_recipe(RECIPE, ["input_size=64", "prune.steps=2", "prune.batch_size=4", "train.epochs=1",
                                  "train.batch_size=4", "bench.runs=5", "bench.threads=1"])
    summary = run_recipe(recipe, tmp_path / "run")
    assert summary["metric"] == {"key": "test_miou", "name": "test mIoU"}
    pruned = next(m for m in summary["models"] if m["name"] == "pruned")
    assert 0.0 <= pruned["test_miou"] <= 1.0 and pruned["latency_median_ms"] > 0
    assert "test mIoU" in (tmp_path / "run" / "summary.md").read_text()
    assert (tmp_path / "run" / "model.onnx").stat().st_size > 0

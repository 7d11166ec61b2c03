"""slimkit: prune any timm/torchvision CNN from scratch.

Learn channel gates on random frozen weights, pick widths that meet a FLOPs or latency budget,
regenerate the thin network through G, retrain it from scratch and export it.
"""

from slimkit.version import __version__  # noqa: F401
from slimkit.errors import BudgetError, PlanError, RegistryError, SlimkitError
from slimkit.flops import count_flops, count_params
from slimkit.generator import full_plan, generate
from slimkit.pipeline import run_recipe
from slimkit.plan import ChannelPlan, load_plan, save_plan
from slimkit.prune import GateOptions, LatencyOptions, prune
from slimkit.recipe import load_recipe
from slimkit.registry import create_model

__all__ = [
    "BudgetError", "ChannelPlan", "GateOptions", "LatencyOptions", "PlanError", "RegistryError", "SlimkitError",
    "count_flops", "count_params", "create_model", "full_plan", "generate", "load_plan", "load_recipe", "prune",
    "run_recipe", "save_plan",
]

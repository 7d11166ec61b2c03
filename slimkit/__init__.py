"""slimkit: prune any timm/torchvision CNN from scratch.

Learn channel gates on random frozen weights, pick widths that meet a FLOPs or latency budget,
regenerate the thin network through G, retrain it from scratch and export it.
"""

__version__ = "0.1.0"

from slimkit.errors import BudgetError, PlanError, RegistryError, SlimkitError  # noqa: E402
from slimkit.flops import count_flops, count_params  # noqa: E402
from slimkit.generator import generate  # noqa: E402
from slimkit.plan import ChannelPlan, load_plan, save_plan  # noqa: E402
from slimkit.prune import prune  # noqa: E402
from slimkit.registry import create_model  # noqa: E402

__all__ = [
    "BudgetError", "ChannelPlan", "PlanError", "RegistryError", "SlimkitError",
    "count_flops", "count_params", "create_model", "generate", "load_plan", "prune", "save_plan",
]

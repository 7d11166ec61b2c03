"""One exception family: the CLI prints these as a single line and exits non-zero."""


class SlimkitError(ValueError):
    """A user-facing error; its message names the problem and the fix, in one line."""


class RegistryError(SlimkitError):
    """Unknown architecture name or unsupported argument."""


class PlanError(SlimkitError):
    """A ChannelPlan file that cannot be read or does not fit its architecture."""


class BudgetError(SlimkitError):
    """A budget string that cannot be parsed or cannot be met."""

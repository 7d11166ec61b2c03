"""The slimkit version: one place, read by the package, by pyproject.toml and by every artifact."""

__version__ = "0.1.0"

"""``python -m slimkit`` (and ``torchrun -m slimkit``) runs the CLI."""

from slimkit.cli import main

main()

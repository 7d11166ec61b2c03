"""The channel graph's op rules, one module per family of aten ops.

Each module registers its rules with :func:`slimkit.graph.walk.rule`; importing this package
imports them all, which fills :data:`slimkit.graph.walk.RULES`. A new op family is a new module
here, imported below and listed in tests/test_layout.py.
"""
# ruff: noqa: F401 - every import is for its rules' registration

import slimkit.graph.ops.attention
import slimkit.graph.ops.cat
import slimkit.graph.ops.constants
import slimkit.graph.ops.conv
import slimkit.graph.ops.elementwise
import slimkit.graph.ops.linear
import slimkit.graph.ops.norm
import slimkit.graph.ops.permute
import slimkit.graph.ops.reduce
import slimkit.graph.ops.reshape
import slimkit.graph.ops.slicing
import slimkit.graph.ops.split

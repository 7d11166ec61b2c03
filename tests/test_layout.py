"""The package's layout holds: modules import only from layers below them (no cycles, nothing hidden
inside functions), each imports on its own, and plans are built in one place."""

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top: a module may import modules of a lower layer (and its own package's __init__).
LAYERS = [
    ["slimkit.errors", "slimkit.version", "slimkit.validate"],
    ["slimkit.flops", "slimkit.shapes"],
    ["slimkit.models", "slimkit.models.cifar", "slimkit.models.user", "slimkit.models.tasks"],
    ["slimkit.registry", "slimkit.data", "slimkit.runtime", "slimkit.files", "slimkit.attention"],
    # the channel graph package: union-find, result types, tracing <- the walk and its rule registry <- one
    # module per op family <- analyze() <- slimkit.graph (re-exports)
    ["slimkit.graph.unionfind", "slimkit.graph.channels", "slimkit.graph.tracing"],
    ["slimkit.graph.walk"],
    ["slimkit.graph.ops.attention", "slimkit.graph.ops.cat", "slimkit.graph.ops.constants", "slimkit.graph.ops.conv",
     "slimkit.graph.ops.elementwise", "slimkit.graph.ops.linear", "slimkit.graph.ops.norm", "slimkit.graph.ops.permute",
     "slimkit.graph.ops.reduce", "slimkit.graph.ops.reshape", "slimkit.graph.ops.slicing", "slimkit.graph.ops.split"],
    ["slimkit.graph.ops"],
    ["slimkit.graph.analysis"],
    ["slimkit.graph", "slimkit.plan", "slimkit.task_losses", "slimkit.exporters", "slimkit.exporters.onnx", "slimkit.exporters.int8",
     "slimkit.exporters.openvino"],
    ["slimkit.checkpoint"],
    ["slimkit.budget", "slimkit.gates", "slimkit.generator", "slimkit.plots", "slimkit.search_space",
     "slimkit.structures"],
    ["slimkit.latency", "slimkit.ort_profile"],
    ["slimkit.artifacts", "slimkit.int8_speed"],
    ["slimkit.search", "slimkit.latency_search", "slimkit.layer_latency", "slimkit.train"],
    ["slimkit.rounding"],
    ["slimkit.prune"],
    ["slimkit.recipe"],
    ["slimkit.pipeline"],
    ["slimkit.cli.*"],
    ["slimkit", "slimkit.__main__"],
]


def _module_files() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "slimkit").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    for path in sorted((ROOT / "exporters").glob("*.py")):
        name = "slimkit.exporters" + ("" if path.stem == "__init__" else f".{path.stem}")
        out[name] = path
    return out


MODULES = _module_files()


def _layer(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        for entry in layer:
            if name == entry or (entry.endswith(".*") and name.startswith(entry[:-1])) or \
                    (entry.endswith(".*") and name == entry[:-2]):
                return i
    raise AssertionError(f"{name} is in no layer of tests/test_layout.py: place it there")


def _slimkit_imports(tree: ast.AST) -> list[tuple[str, ast.AST, bool]]:
    """(imported slimkit module, node, inside a function?) for every slimkit import in ``tree``."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, child, in_function) for a in child.names if a.name.split(".")[0] == "slimkit")
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module and \
                    child.module.split(".")[0] == "slimkit":
                if child.module == "slimkit":  # from slimkit import registry: the submodules
                    found.extend((f"slimkit.{a.name}" if f"slimkit.{a.name}" in MODULES else "slimkit", child,
                                  in_function) for a in child.names)
                else:
                    found.append((child.module, child, in_function))
            visit(child, inner)

    visit(tree, False)
    return found


def test_every_module_is_in_a_layer():
    for name in MODULES:
        _layer(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_only_down_and_never_hide_in_functions(name):
    tree = ast.parse(MODULES[name].read_text())
    mine = _layer(name)
    package = name.rsplit(".", 1)[0]
    for target, node, in_function in _slimkit_imports(tree):
        assert not in_function, (f"{name}:{node.lineno} imports {target} inside a function: import it at the top "
                                 "(a cycle means a module sits in the wrong layer)")
        if target == package or target == name:
            continue
        assert _layer(target) < mine or (target.startswith(package + ".") and _layer(target) == mine), (
            f"{name}:{node.lineno} imports {target}, which is not below it ({LAYERS[_layer(target)]} vs "
            f"{LAYERS[mine]})")


def test_every_module_imports_on_its_own():
    """Each module in a fresh interpreter: an import cycle fails here whichever module comes first."""
    names = [n for n in MODULES if n != "slimkit.__main__"]

    def load(name: str) -> tuple[str, str]:
        r = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, cwd=ROOT)
        return name, (r.stderr.strip().splitlines() or [""])[-1] if r.returncode else ""

    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [f"{n}: {err}" for n, err in pool.map(load, names) if err]
    assert not failures, failures


def test_nothing_outside_the_cli_imports_it():
    for name, path in MODULES.items():
        if name.startswith("slimkit.cli") or name in ("slimkit.__main__",):
            continue
        for target, node, _ in _slimkit_imports(ast.parse(path.read_text())):
            assert not target.startswith("slimkit.cli"), f"{name}:{node.lineno} imports {target}"
    for path in sorted((ROOT / "bench").rglob("*.py")):
        for target, node, _ in _slimkit_imports(ast.parse(path.read_text())):
            assert not target.startswith("slimkit.cli"), f"{path.name}:{node.lineno} imports {target}"


def test_plans_are_built_in_the_plan_module_only():
    where = []
    for path in [*MODULES.values(), *sorted((ROOT / "bench").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ChannelPlan":
                where.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not where, f"ChannelPlan(...) outside slimkit/plan.py: {where}; use ChannelPlan.from_widths or with_widths"


def test_bench_scripts_import_what_exists():
    """bench/ is not imported by the tests: check its slimkit imports name things that exist."""
    import importlib
    import importlib.util

    missing = []
    for path in sorted((ROOT / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("slimkit"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name) and \
                            importlib.util.find_spec(f"{node.module}.{alias.name}") is None:
                        missing.append(f"{path.name}:{node.lineno} {node.module}.{alias.name}")
    assert not missing, missing

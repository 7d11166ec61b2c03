"""``slimkit run RECIPE``: parse, call :func:`slimkit.pipeline.run_recipe`, render."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from slimkit import registry
from slimkit.cli._common import print_table, console, make_progress, user_errors, warn
from slimkit.cli.bench import render_report
from slimkit.pipeline import (Layout, RunHooks, budget_reach, check_folder, format_cell,
                              missing_backend, missing_data, missing_parent, missing_training_data, run_recipe, stage_list, summary_columns)
from slimkit.recipe import dump_recipe, load_recipe


def render_summary(summary: dict[str, Any]) -> None:
    # no vertical rules: the ten columns of an int8 run fit 80 columns with every number whole
    table = Table(title=escape(f"{summary['recipe']} — {summary['arch']}"), box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True)
    columns = summary_columns(summary)
    for title, _, kind in columns:
        table.add_column(title, justify="left" if kind is None else "right")
    for row in summary["models"]:
        table.add_row(row["name"], *[format_cell(row.get(key), kind) for _, key, kind in columns[1:]])
    print_table(table, console)


def rich_hooks() -> RunHooks:
    return RunHooks(stage=lambda name, text: console.print(f"[bold cyan]{name}[/] {escape(text)}", highlight=False),
                    log=lambda text: console.print(text, highlight=False, markup=False, soft_wrap=True), warn=warn,
                    progress=make_progress, status=console.status, report=render_report, summary=render_summary)


def _dry_run(recipe, recipe_path: Path, overridden: bool, lay: Layout, same: bool) -> None:
    console.print(f"# resolved recipe ({recipe_path}{', with --set overrides' if overridden else ''})", highlight=False,
                  markup=False)
    console.print(dump_recipe(recipe), highlight=False, markup=False, soft_wrap=True)
    b = recipe.prune.budget()
    if b is None:
        what = f"structure {recipe.prune.structure}"
    else:
        what = (f"{b.fraction:.0%} of the full model's {'latency' if b.kind == 'latency' else 'MACs'}"
                if b.fraction is not None else f"{b.kind} {b.text}")
    reach = budget_reach(recipe)
    if reach:
        what += f" ({reach})"
    console.print(f"arch {recipe.arch} -> {registry.resolve(recipe.arch).canonical}; budget {what}; "
                  f"run folder {lay.root}" + (" (holds this recipe: finished stages are skipped)" if same else ""),
                  highlight=False, soft_wrap=True, markup=False)
    table = Table(title=f"stages, in {lay.root}/")
    for col in ("stage", "writes", "what, and whether it would run now"):
        table.add_column(col)
    for stage, outputs in stage_list(recipe, lay):
        for i, (path, text) in enumerate(outputs):
            name = path.relative_to(lay.root).as_posix() + ("/" if path.name.startswith("train") else "")
            table.add_row(stage if i == 0 else "", escape(name), escape(text))
    print_table(table, console)
    missing = missing_data(recipe)
    if missing:
        warn(f"data not available here: {missing}")
    stop = missing_parent(recipe, lay) or missing_backend(recipe) or missing_training_data(recipe, lay)
    if stop:
        warn(f"the run would stop before its first stage: {stop}")


@user_errors
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (see recipes/).")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe value, e.g. --set train.epochs=3 (value read as YAML; repeatable).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder (default: runs/<name>).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate the recipe, print the resolved config and the stages; run nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="In a folder that is not a run folder (no recipe.yaml of a run), replace files the run writes instead of refusing.")] = False,
) -> None:
    """Run a recipe: prune -> train -> export -> bench, each stage skipped when its outputs exist."""
    r = load_recipe(recipe, set_)
    if dry_run:
        lay = Layout(out or Path("runs") / r.name)
        _dry_run(r, recipe, bool(set_), lay, check_folder(r, lay))
        return
    run_recipe(r, out, source=str(recipe), hooks=rich_hooks(), force=force)

"""The three default prune commands of issue 14, timed: no "did not reach r" warning, at most 10
minutes each, FLOPs within 1% of the budget.

    python bench/default_prunes.py            # writes bench/results/default_prunes.{json,md}

Each command runs as a user would type it (the installed CLI, all defaults), one after another;
the wall time includes start-up, data loading, gate learning and selection.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slimkit.files import atomic_write_text

HERE = Path(__file__).parent
COMMANDS = [("mobilenet_v1", "150M"), ("resnet56", "50%"), ("resnet20", "25%")]
LIMIT_S = 600


def main() -> None:
    slimkit = Path(sys.executable).with_name("slimkit")
    rows = []
    with tempfile.TemporaryDirectory(prefix="slimkit-defaults-") as tmp:
        for arch, budget in COMMANDS:
            out = Path(tmp) / f"{arch}.json"
            cmd = [str(slimkit), "prune", arch, "--flops", budget, "--out", str(out), "--no-plot"]
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            text = proc.stdout + proc.stderr
            row = {"command": f"slimkit prune {arch} --flops {budget}", "exit_code": proc.returncode,
                   "seconds": round(seconds, 1), "warning": "warning:" in text.lower()}
            if proc.returncode == 0:
                plan = json.loads(out.read_text())
                target = plan["budget"]["value"]
                s = plan["search"]
                row.update(flops=plan["flops"], budget=target, off=round((plan["flops"] - target) / target, 5),
                           gate_mean=s["gates"]["mean"], target_r=s["target_r"], qualified=s["qualified"],
                           selection=s["selection"])
            row["ok"] = (proc.returncode == 0 and not row["warning"] and seconds <= LIMIT_S
                         and abs(row.get("off", 1.0)) <= 0.01)
            rows.append(row)
            print(json.dumps(row), flush=True)
    env = {"machine": platform.node(), "cpus": os.cpu_count(), "load_average_end": round(os.getloadavg()[0], 2),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    out = HERE / "results" / "default_prunes"
    atomic_write_text(out.with_suffix(".json"), json.dumps({"rows": rows, "environment": env}, indent=1) + "\n")
    lines = ["# The default prune commands (issue 14)", "",
             f"Environment: {env}. Wall time per command, all defaults.", "",
             "| command | ok | wall s | FLOPs vs budget | gate mean / r | warning | selection |",
             "|---|---|---:|---:|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['command']}` | {'yes' if r['ok'] else 'NO'} | {r['seconds']} | "
                     f"{100 * r.get('off', float('nan')):+.2f}% | {r.get('gate_mean', '–')} / {r.get('target_r', '–')} | "
                     f"{'yes' if r['warning'] else 'no'} | {r.get('selection', '–')} |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()

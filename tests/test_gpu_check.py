"""bench/gpu_check.sh: what CI can check without a GPU (arguments, the "no GPU" line, the table and
exit code when checks fail), so the script is known to work before a GPU is ever lent."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
NO_GPU = 3


def gpu_check(*args, **env):
    # No GPU for these tests, even on a machine that has one.
    full_env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=300)


def test_help_and_list_name_every_check():
    r = gpu_check("--help")
    assert r.returncode == 0 and "--only" in r.stdout and "exit" in r.stdout.lower()
    listed = gpu_check("--list").stdout.split()
    assert listed == ["cuda", "gates-bf16", "train-compile", "nccl", "ddp-train", "bench-ort-cuda", "bench-torch",
                      "latency-budget"]
    for name in listed:
        assert name in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["--bogus"], "unknown argument '--bogus'"),
    (["--only", "cuda,warp-drive"], "unknown check 'warp-drive'"),
    (["--only"], "--only needs"),
    (["--timeout", "soon"], "--timeout must be a whole number"),
    (["--timeout", "0"], "--timeout must be a whole number"),
])
def test_bad_arguments_are_one_line_and_exit_2(args, needle):
    r = gpu_check(*args)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_without_a_gpu_it_says_so_in_one_line_with_its_own_exit_code():
    r = gpu_check()
    assert r.returncode == NO_GPU, r.stdout + r.stderr
    line = r.stdout.strip()
    assert len(line.splitlines()) == 1 and "no CUDA GPU visible" in line
    if (ROOT / ".venv" / "bin" / "python").exists():  # the repo's venv, not whatever python is on PATH
        assert str(ROOT / ".venv" / "bin" / "python") in line


def test_failed_checks_give_a_table_and_exit_1(tmp_path):
    r = gpu_check("--assume-gpu", "--only", "cuda,ddp-train", "--out", str(tmp_path),
                  SLIMKIT_PYTHON=sys.executable)
    assert r.returncode == 1, r.stdout + r.stderr
    rows = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines()
            if line.split() and line.split()[0] in ("cuda", "ddp-train") and len(line.split()) > 2}
    assert rows == {"cuda": "failed", "ddp-train": "skipped"}, r.stdout
    assert "torch.cuda.is_available() is False" in r.stdout and (tmp_path / "cuda.log").is_file()

"""`torchrun -m slimkit train` with 2 CPU processes (gloo): one set of artifacts, replicas in sync,
the loss curve of one process with the same global batch, and resume across a changed world size."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from slimkit.cli import app

runner = CliRunner()
TRAIN = ["--data", "synthetic", "--epochs", "2", "--max-steps-per-epoch", "4", "--batch-size", "16",
         "--no-augment", "--lr", "0.05", "--seed", "0"]


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp") / "plan.json"
    r = runner.invoke(app, ["prune", "resnet20", "--flops", "50%", "--method", "uniform", "--round-to", "1",
                            "--num-classes", "10", "-o", str(path), "--no-plot"])
    assert r.exit_code == 0, r.output
    return path


def torchrun(nproc, *args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "slimkit", *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_gloo_processes_match_one_process(plan, tmp_path):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    r = torchrun(2, "train", plan, *TRAIN, "--out", ddp)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "global batch 16 = 2 process(es)" in r.stdout
    assert r.stdout.count("final: test top-1") == 1  # rank 0 alone reports
    m = json.loads((ddp / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["replicas_identical"] is True
    assert sorted(p.name for p in ddp.iterdir()) == ["checkpoint.pt", "config.json", "curves.png", "metrics.json",
                                                     "plan.json"]
    r = runner.invoke(app, ["train", str(plan), *TRAIN, "--out", str(single)])
    assert r.exit_code == 0, r.output
    s = json.loads((single / "metrics.json").read_text())
    # Same global batches, gradients averaged: the same curve, up to BatchNorm seeing 8 images per
    # process instead of 16.
    for a, b in zip(m["history"], s["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.05)


def test_resume_with_another_world_size_and_accumulation(plan, tmp_path):
    """One process is killed after its first checkpoint; two processes (x2 accumulation) finish it."""
    out = tmp_path / "run"
    three = [a if a != "2" else "3" for a in TRAIN]
    proc = subprocess.Popen([sys.executable, "-m", "slimkit", "train", str(plan), *three, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    # The checkpoint is the record of finished epochs: metrics.json is written just after it, so a
    # kill can land between the two.
    done = json.loads(torch.load(out / "checkpoint.pt", weights_only=True)["metrics"])
    assert done, "the first run was killed before it finished an epoch"
    r = torchrun(2, "train", plan, *three, "--out", out, "--resume", "--accum-steps", "2")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "2 accumulation step(s)" in r.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in m["history"]] == [1, 2, 3] and m["world_size"] == 2
    assert m["history"][: len(done)] == done  # the finished epochs were kept, not redone


def test_gate_learning_under_torchrun_writes_one_plan(tmp_path):
    out = tmp_path / "gates.json"
    r = torchrun(2, "prune", "resnet20", "--flops", "50%", "--round-to", "1", "--data", "synthetic",
                 "--steps", "4", "--batch-size", "16", "-o", out, "--no-plot")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stdout.count("wrote ") == 1
    plan = json.loads(out.read_text())
    assert plan["method"] == "scratch" and plan["search"]["steps"] == 4


def test_indivisible_global_batch_is_a_clear_error(plan, tmp_path):
    r = runner.invoke(app, ["train", str(plan), "--data", "synthetic", "--epochs", "1", "--batch-size", "15",
                            "--accum-steps", "2", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "must divide by" in r.output


STRAY = [{"WORLD_SIZE": "abc"}, {"RANK": "abc"}, {"RANK": "1"}, {"LOCAL_RANK": "-1"}, {"WORLD_SIZE": "0"},
         # no torchrun sets these: a rank taken as 0, or a local rank past the processes on the node
         {"WORLD_SIZE": "2"}, {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "2"},
         {"WORLD_SIZE": "4", "RANK": "1", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}]


# a uniform prune joins no process group, so WORLD_SIZE alone (no torchrun peers) only fails training
@pytest.mark.parametrize("command,env", [("train", e) for e in STRAY] + [("prune", e) for e in STRAY]
                         + [("train", {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": ""})])
def test_stray_torchrun_variables_are_one_line_and_write_nothing(plan, tmp_path, monkeypatch, env, command):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    args = (["train", str(plan), "--data", "synthetic", "--epochs", "1", "--max-steps-per-epoch", "1"]
            if command == "train" else ["prune", "resnet20", "--flops", "50%", "--method", "uniform"])
    r = runner.invoke(app, args + ["--out", str(out)])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert ("torchrun" in r.output) and not out.exists(), r.output


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("rank,missing", [("1", "rank 0"), ("0", "1 of WORLD_SIZE=2")])
def test_a_hand_set_launch_without_its_peer_stops_with_one_line(plan, tmp_path, monkeypatch, rank, missing):
    """RANK / WORLD_SIZE / MASTER_* set by hand (no torchrun) and the other process never starts:
    torch would wait 30 minutes deaf to Ctrl-C and SIGTERM; slimkit waits interruptibly, then says so."""
    from slimkit import runtime
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    for name, value in {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(runtime, "HAND_LAUNCH_JOIN_SECONDS", 1.0)
    out = tmp_path / "out"
    start = time.monotonic()
    r = runner.invoke(app, ["train", str(plan), *TRAIN, "--out", str(out)])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and missing in lines[0] and "torchrun" in lines[0], r.output
    assert time.monotonic() - start < 30 and not out.exists()


def test_two_processes_launched_by_hand_train_together(plan, tmp_path):
    """The launch a SLURM script or two terminals make: the same variables torchrun sets, no agent."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHELASTIC")}
    env.update(OMP_NUM_THREADS="1", WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()))
    out = tmp_path / "hand"
    procs = [subprocess.Popen([sys.executable, "-m", "slimkit", "train", str(plan), *TRAIN, "--out", str(out)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (1, 0)]  # rank 1 first: it waits
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert json.loads((out / "metrics.json").read_text())["final"]["epoch"] == 2

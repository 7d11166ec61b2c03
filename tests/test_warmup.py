"""Warm-up is capped for short runs: `slimkit train ARCH --epochs 1` must not be all warm-up (one
warm-up epoch of one ended at 81% on Fashion-MNIST, with the LR only just at its peak)."""

import torch

from slimkit.train import MAX_WARMUP_SHARE, _scheduler, warmup_steps


def test_one_epoch_runs_warm_up_for_a_tenth_of_it():
    assert warmup_steps(1.0, steps_per_epoch=100, epochs=1) == 10
    assert warmup_steps(1.0, steps_per_epoch=100, epochs=30) == 100  # long runs keep the asked warm-up
    assert warmup_steps(0.0, steps_per_epoch=100, epochs=1) == 0


def test_the_lr_peaks_early_and_decays_to_zero_in_a_one_epoch_run():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    steps = 100
    sched = _scheduler(opt, warmup_steps(1.0, steps, 1), steps)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    peak = max(range(steps), key=lrs.__getitem__)
    assert peak <= MAX_WARMUP_SHARE * steps
    assert lrs[-1] < 0.01

"""Learning-rate schedule: linear warm-up then cosine decay, restarted for every stage."""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base lr after `step` optimizer updates."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """A LambdaLR stepping once per optimizer update; warm-up is clipped to half the run."""
    # A warm-up longer than the run (e.g. the seed's 500 on a 100-step smoke run) would
    # never reach the base lr; cap it so short runs still train.
    warmup = min(warmup_steps, total_steps // 2)
    return LambdaLR(optimizer, lambda s: warmup_cosine_factor(s, warmup, total_steps))

"""Exponential moving average of a module's weights (validated and shipped instead of the raw weights)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps an fp32 shadow copy of `model`; `update()` after every optimizer step.

    The decay warms up as min(decay, (1 + n) / (10 + n)) over the first updates (as in
    TensorFlow's ExponentialMovingAverage with num_updates), so short runs are not dominated
    by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.num_updates = 0
        # A full module copy (not just tensors) so validation can run it directly.
        self.module = copy.deepcopy(model).float().eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay used by the next update."""
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the live weights into the shadow: ema ← d·ema + (1−d)·w."""
        d = self.current_decay()
        live = dict(model.named_parameters())
        for name, p in self.module.named_parameters():
            p.lerp_(live[name].detach().float(), 1.0 - d)
        # Buffers (e.g. norm statistics) are copied, not averaged.
        live_b = dict(model.named_buffers())
        for name, b in self.module.named_buffers():
            b.copy_(live_b[name])
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow weights (same keys as the live model's state_dict)."""
        return self.module.state_dict()

    def load_state_dict(self, sd: dict[str, torch.Tensor], num_updates: int) -> None:
        """Restore shadow weights and the update count (which sets the warm-up decay)."""
        self.module.load_state_dict(sd, strict=True)
        self.num_updates = int(num_updates)

    def to(self, device: torch.device | str) -> "EMA":
        self.module.to(device)
        return self

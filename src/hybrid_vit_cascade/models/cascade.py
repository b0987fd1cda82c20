"""The cascade: one `CascadeStage` per resolution, trained progressively with earlier stages frozen."""
from __future__ import annotations

import torch.nn as nn

from ..config import Config
from .stage import CascadeStage


class Cascade(nn.Module):
    """Stages of increasing resolution (`resolutions[k]` voxels per edge); stage k>0 is conditioned on k−1."""

    def __init__(self, cfg: Config):
        super().__init__()
        d = cfg.data
        self.stages = nn.ModuleList(
            CascadeStage(s, k, list(d.views), d.geometry.det_pixels, d.geometry, d.fov_mm) for k, s in enumerate(cfg.stages)
        )
        self.resolutions = [s.resolution for s in cfg.stages]
        self._frozen: set[int] = set()

    def freeze_except(self, k: int) -> None:
        """Make stage k (0-based) the only trainable one: others get requires_grad=False and stay in eval mode."""
        n = len(self.stages)
        if not 0 <= k < n:
            raise IndexError(f"stage index {k} out of range for a {n}-stage cascade")
        self._frozen = {i for i in range(n) if i != k}
        for i, stage in enumerate(self.stages):
            frozen = i in self._frozen
            stage.requires_grad_(not frozen)
            if frozen:
                stage.eval()
            else:
                stage.train(self.training)

    def train(self, mode: bool = True) -> "Cascade":
        """Set train/eval mode; frozen stages always stay in eval mode."""
        super().train(mode)
        for i in self._frozen:
            self.stages[i].eval()
        return self

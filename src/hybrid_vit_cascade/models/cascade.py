"""The cascade: one `CascadeStage` per resolution, trained progressively with earlier stages frozen."""
from __future__ import annotations

from typing import Optional

import torch.nn as nn

from ..config import Config
from .stage import CascadeStage


class Cascade(nn.Module):
    """Stages of increasing resolution (`resolutions[k]` voxels per edge); stage k>0 is conditioned on k−1."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        d = cfg.data
        self.views = list(d.views)
        self.stages = nn.ModuleList(
            CascadeStage(s, k, self.views, d.geometry.det_pixels, d.geometry, d.fov_mm) for k, s in enumerate(cfg.stages)
        )
        self.resolutions = [s.resolution for s in cfg.stages]
        self._frozen: set[int] = set()

    @classmethod
    def from_config(cls, cfg: Config) -> "Cascade":
        """Build the (untrained) cascade a config describes."""
        return cls(cfg)

    def __len__(self) -> int:
        return len(self.stages)

    def _index(self, k: int) -> int:
        n = len(self.stages)
        if not -n <= k < n:
            raise IndexError(f"stage index {k} out of range for a {n}-stage cascade")
        return k % n

    def stage(self, k: int) -> CascadeStage:
        """Stage k (0-based)."""
        return self.stages[self._index(k)]  # type: ignore[return-value]

    def freeze_except(self, k: Optional[int]) -> None:
        """Make stage k the only trainable one: others get requires_grad=False and stay in eval mode.

        k=None unfreezes every stage.
        """
        keep = None if k is None else self._index(k)
        self._frozen = set() if keep is None else {i for i in range(len(self.stages)) if i != keep}
        for i, stage in enumerate(self.stages):
            frozen = i in self._frozen
            stage.requires_grad_(not frozen)
            if frozen:
                stage.eval()
            else:
                stage.train(self.training)

    @property
    def frozen_stages(self) -> list[int]:
        return sorted(self._frozen)

    def train(self, mode: bool = True) -> "Cascade":
        """Set train/eval mode; frozen stages always stay in eval mode."""
        super().train(mode)
        for i in self._frozen:
            self.stages[i].eval()
        return self

    def trainable_parameters(self, k: int) -> list[nn.Parameter]:
        """Parameters of stage k that require gradients (what its optimiser should see)."""
        return [p for p in self.stage(k).parameters() if p.requires_grad]

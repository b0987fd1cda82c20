"""Baselines scored beside the cascade: the mean training volume and depth-prior back-projection.

(c), the direct-regression model, is a checkpoint trained with `training.objective = "regression"`
and runs through the same `Reconstructor`, so it needs no code here.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor

from hybrid_vit_cascade.geometry.physics import hu_to_unit, mu_to_hu
from hybrid_vit_cascade.models.lifting import backproject, depth_prior_from_volumes

PRIOR_BINS, PRIOR_GRID = 32, 16  # depth bins along each ray, coarse detector cells per edge of the prior


def training_volumes(dataset_root: str, res: int) -> Iterable[Tensor]:
    """The training split's CTs at `res` as batches (B, 1, res, res, res) in [-1, 1]."""
    batch = 8  # bounds memory only: the prior is a mean over all of them
    from hybrid_vit_cascade.data.datasets import CTXrayDataset

    ds = CTXrayDataset(dataset_root, "train", [res])
    for i in range(0, len(ds), batch):
        yield torch.stack([ds[j]["ct"][res] for j in range(i, min(i + batch, len(ds)))])


class BackprojectionBaseline:
    """Spread each X-ray's line integrals along its rays by a depth prior and read off attenuation.

    Per view, the line integral li = ∫μ dl of a ray is distributed over the ray's depth bins with the
    prior's probabilities p_b: the bin's attenuation is μ_b = li · p_b / Δl with Δl = fov_mm / bins
    (the bins split the cube's extent along the view axis). `lifting.backproject` returns
    (li / li_max) · p_b · bins per voxel, so μ = occupancy · li_max / fov_mm; views are averaged,
    μ → HU → model range. The prior is the training set's mean attenuation profile per ray
    (`depth_prior_from_volumes`, what the model's lifting is initialised with); without training
    volumes it falls back to a trained stage's learned prior, else a uniform one.
    """

    def __init__(self, rec, res: int, volumes: Optional[Iterable[Tensor]] = None):
        self.rec = rec
        self.res = res
        proj = rec.projector
        self.uv, self.depth = proj.voxel_to_detector(res, rec.spacing_mm(res))  # (V, D,H,W, 2), (V, D,H,W)
        self.prior_source = "training-set mean attenuation profile"
        if volumes is not None:
            self.prior = depth_prior_from_volumes(volumes, self.uv, self.depth, PRIOR_BINS, PRIOR_GRID, rec.window,
                                                  rec.mu_water)
        else:
            lifted = [s.lifting for s in rec.cascade.stages if getattr(s, "lifting", None) is not None]
            if lifted:
                with torch.no_grad():
                    self.prior = lifted[0].prior_probs().detach().float()
                self.prior_source = "stage 1 learned depth prior"
            else:
                self.prior = torch.full((len(rec.views), PRIOR_BINS, 1, 1), 1.0 / PRIOR_BINS)
                self.prior_source = "uniform"

    @torch.no_grad()
    def __call__(self, xray: Tensor, views: Optional[Sequence[int]] = None) -> Tensor:
        """X-rays (B, V, P, P) in the model range → volumes (B, 1, res, res, res) in [-1, 1].

        `views`: indices of the views to back-project (a subset; the mean is over those), None = all.
        """
        idx = list(range(xray.shape[1])) if views is None else list(views)
        occ = backproject(xray[:, idx].float(), self.prior[idx], self.uv[idx], self.depth[idx],
                          combine="mean")  # (B, 1, r, r, r)
        mu = occ * self.rec.li_max / self.rec.fov_mm  # 1/mm
        return hu_to_unit(mu_to_hu(mu, self.rec.mu_water), self.rec.window)

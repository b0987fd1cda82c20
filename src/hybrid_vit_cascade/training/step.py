"""One training or validation step of the stage being trained: objective loss + physics loss, or samples.

The stage is called through runtime.conditioning (`make_condition`, `stage_model_fn`), as inference calls it.
With training.film_augment a training sample may be shown one of its simulated clinical films
(training/film_cache.py) instead of its X-rays; the physics loss always compares with the clean ones.
With training.view_dropout a training sample may see one view only (`view_mask`); stage k ≥ 2 is then
conditioned on what stage k−1 produced from that same view (the conditioning cache's per-view
samples), and the physics loss still compares the prediction with every view's ground-truth X-ray.
Validation always uses every view.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from hybrid_vit_cascade.diffusion.losses import physics_loss
from hybrid_vit_cascade.runtime.conditioning import (
    draw_view_mask, make_condition, stage_model_fn, subset_label, subset_of_mask,
)
from hybrid_vit_cascade.runtime.sampling import SamplingSettings
from hybrid_vit_cascade.runtime.seeding import mix_seed, sample_generators


class StageStepper:
    """Runs one stage's loss or sampling on a batch; shared by training and validation."""

    def __init__(self, ctx, model: torch.nn.Module):
        self.ctx = ctx  # the StageTrainer (cfg, k, objective, projector, physics constants, device)
        self.model = model

    def condition(self, batch: dict, gens_cond, train: bool, view_mask: Optional[Tensor] = None):
        """(condition, level) of stage k ≥ 2: a random level in training, the inference level otherwise."""
        ctx = self.ctx
        if ctx.k == 1:
            return None, None
        level = None if train else ctx.stage_cfg.cond_noise_level
        return make_condition(self.prev_for(batch, view_mask), ctx.resolution, ctx.cfg, gens_cond, level)

    def prev_for(self, batch: dict, view_mask: Optional[Tensor]) -> Tensor:
        """Stage k−1's cached sample of each case from the same views as its mask (all views: batch["prev"])."""
        if view_mask is None or bool(view_mask.all()):
            return batch["prev"]
        views = self.ctx.view_names
        picked = []
        for b, row in enumerate(view_mask):
            sub = subset_of_mask(row, views)
            picked.append(batch["prev"][b] if len(sub) == len(views) else batch["prev_views"][subset_label(sub)][b])
        return torch.stack(picked)

    def view_mask(self, gens_views: Optional[Sequence[torch.Generator]]) -> Optional[Tensor]:
        """The per-sample view mask of a training batch (None: every view, training.view_dropout = 0)."""
        if gens_views is None:
            return None
        ctx = self.ctx
        return draw_view_mask(gens_views, len(ctx.view_names), ctx.cfg.training.view_dropout, ctx.device)

    def film_inputs(self, batch: dict, gens_films: Optional[Sequence[torch.Generator]]) -> Tensor:
        """The X-rays the model is shown: sample b's own, or with probability training.film_augment one of
        its simulated films (which one uniform; batch["films"] (B, F, V, P, P), training/film_cache.py)."""
        xray = batch["xray"]
        if gens_films is None or "films" not in batch:
            return xray
        films = batch["films"]
        F = films.shape[1]
        u = torch.stack([torch.rand(2, generator=g, device=xray.device) for g in gens_films])  # (B, 2), always both
        use = u[:, 0] < self.ctx.cfg.training.film_augment
        which = (u[:, 1] * F).long().clamp(max=F - 1)
        picked = films[torch.arange(len(which), device=films.device), which.to(films.device)]  # (B, V, P, P)
        return torch.where(use[:, None, None, None], picked.to(xray), xray)

    def losses(self, batch: dict, gens, gens_cond, train: bool,
               gens_views: Optional[Sequence[torch.Generator]] = None,
               gens_films: Optional[Sequence[torch.Generator]] = None) -> dict[str, Tensor]:
        """{"<kind>_loss", "physics_loss", "physics_loss_<view>"..., "loss"} for a batch on the device.

        <kind> is "diffusion" or "regression" (training.objective); "loss" is what is optimised:
        the objective loss + physics_weight × physics_loss. `gens_views` (training with view dropout)
        draw which views each sample shows, `gens_films` (training.film_augment) which sample sees a
        simulated film instead of its X-rays; their own generators, so no other draw moves.
        """
        ctx = self.ctx
        xray = batch["xray"]  # clean line integrals: the physics loss's target, whatever the model is shown
        mask = self.view_mask(gens_views)
        prev, cond_noise = self.condition(batch, gens_cond, train, mask)
        shown = self.film_inputs(batch, gens_films)
        model_fn = stage_model_fn(self.model, shown, prev, cond_noise, view_mask=mask)
        out = ctx.objective.loss(model_fn, batch["x0"], gens)
        res = {f"{ctx.objective.kind}_loss": out.loss}
        total = out.loss
        if ctx.stage_cfg.use_physics_loss:
            phys = physics_loss(out.x0_pred, xray, ctx.projector, ctx.spacing_mm, ctx.hu_window, ctx.mu_water, ctx.li_max)
            res["physics_loss"] = phys.total
            for name, v in zip(ctx.view_names, phys.per_view):
                res[f"physics_loss_{name}"] = v
            total = total + ctx.stage_cfg.physics_weight * phys.total
        res["loss"] = total
        return res

    @torch.no_grad()
    def sample(self, batch: dict, settings: SamplingSettings) -> Tensor:
        """Clean volumes (B, 1, D, D, D) for a batch, conditioned and sampled as at inference."""
        ctx = self.ctx
        ids = batch["case_id"]
        gens = sample_generators([mix_seed("val-sample", ctx.cfg.training.seed, ctx.k, c) for c in ids], ctx.device)
        gens_cond = sample_generators([mix_seed("val-cond", ctx.cfg.training.seed, ctx.k, c) for c in ids], ctx.device)
        xray = batch["xray"]
        prev, cond_noise = self.condition(batch, gens_cond, train=False)
        model_fn = stage_model_fn(self.model, xray, prev, cond_noise, ctx.accelerator.autocast, reuse_condition=True)
        B = xray.shape[0]
        r = ctx.resolution
        return ctx.objective.generate(model_fn, (B, 1, r, r, r), ctx.device, gens, settings)

"""One training or validation step of the stage being trained: objective loss + physics loss, or samples.

The stage is called through runtime.conditioning (`make_condition`, `stage_model_fn`), as inference calls it.
With training.film_augment a training sample may be shown one of its simulated clinical films
(training/film_cache.py) instead of its X-rays. The film's crop is centred where the reader found
the body, not on the dataset's cube: such a sample's target, its stage k−1 condition and the clean
X-rays of its physics loss are the cube the crop shows (the canonical cube moved by the film's
placement, geometry/translate.py), so the model learns to reconstruct what its field holds; stage
k ≥ 2 is conditioned on what stage k−1 made of that same film (the conditioning cache's film samples).
With training.view_dropout a training sample may see one view only (`view_mask`); stage k ≥ 2 is then
conditioned on what stage k−1 produced from that same view (the conditioning cache's per-view
samples), and the physics loss still compares the prediction with every view's ground-truth X-ray.
Validation always uses every view.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from hybrid_vit_cascade.data.preprocessing import AIR_HU
from hybrid_vit_cascade.data.radiograph_fit import ModelField
from hybrid_vit_cascade.diffusion.losses import physics_loss
from hybrid_vit_cascade.geometry.physics import hu_to_unit, normalize_xray
from hybrid_vit_cascade.geometry.translate import crop_placement, translate_volume, translate_xrays
from hybrid_vit_cascade.geometry.views import make_view
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

    def condition(self, batch: dict, gens_cond, train: bool, view_mask: Optional[Tensor] = None,
                  placement: Optional[Tensor] = None, film: Optional[Tensor] = None):
        """(condition, level) of stage k ≥ 2: a random level in training, the inference level otherwise.
        A sample shown film `film[b]` (≥ 0) is conditioned on stage k−1's sample from that film
        (batch["prev_films"]); without those, on its clean sample moved by `placement` (B, 3) mm."""
        ctx = self.ctx
        if ctx.k == 1:
            return None, None
        level = None if train else ctx.stage_cfg.cond_noise_level
        prev = self.prev_for(batch, view_mask)
        if film is not None and "prev_films" in batch:
            prev = torch.stack([self._film_prev(batch, b, int(f), view_mask) if f >= 0 else prev[b]
                                for b, f in enumerate(film.tolist())])
        elif placement is not None:
            prev = self.placed_volume(prev, placement)
        return make_condition(prev, ctx.resolution, ctx.cfg, gens_cond, level)

    def _film_prev(self, batch: dict, b: int, f: int, view_mask: Optional[Tensor]) -> Tensor:
        """Stage k−1's cached sample of sample b's film f, from the views its mask shows."""
        views = self.ctx.view_names
        shown = views if view_mask is None else subset_of_mask(view_mask[b], views)
        return batch["prev_films"][subset_label(shown)][b, f]

    def placed_volume(self, vol: Tensor, placement: Tensor) -> Tensor:
        """Canonical cubes (B, 1, r, r, r) as the crops placed at `placement` (B, 3) mm see them (air beyond);
        a sample placed at 0 is returned as it is."""
        air = float(hu_to_unit(torch.tensor(AIR_HU), self.ctx.hu_window))
        moved = (placement.abs().sum(-1) > 0).to(vol.device)[:, None, None, None, None]
        return torch.where(moved, translate_volume(vol, placement.to(vol), float(self.ctx.cfg.data.fov_mm), air), vol)

    def views(self) -> list:
        """The stage's views (geometry/views.View), in the model's view order."""
        return [make_view(v, self.ctx.cfg.data.geometry) for v in self.ctx.view_names]

    def placed_xrays(self, xray: Tensor, placement: Tensor) -> Tensor:
        """Clean X-rays (B, V, P, P) of the cubes placed at `placement` (B, 3) mm."""
        d = self.ctx.cfg.data
        views = self.views()
        air = float(normalize_xray(torch.tensor(0.0), self.ctx.li_max))
        moved = (placement.abs().sum(-1) > 0).to(xray.device)[:, None, None, None]
        pixel_mm = ModelField(d.geometry, float(d.fov_mm)).pixel_mm
        return torch.where(moved, translate_xrays(xray, placement.to(xray), views, pixel_mm, air), xray)

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

    def film_inputs(self, batch: dict, gens_films: Optional[Sequence[torch.Generator]],
                    view_mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """(the X-rays the model is shown, where their crops put the cube (B, 3) mm, which film (B,) or −1):
        sample b's own (0, −1), or with probability training.film_augment one of its simulated films
        (which one uniform; batch["films"] (B, F, V, P, P), batch["film_crops_mm"] (B, F, V, 2),
        training/film_cache.py), placed by the films of the views it shows (`view_mask`). None: no films."""
        xray = batch["xray"]
        if gens_films is None or "films" not in batch:
            return xray, None, None
        films = batch["films"]
        F = films.shape[1]
        u = torch.stack([torch.rand(2, generator=g, device=xray.device) for g in gens_films])  # (B, 2), always both
        use = u[:, 0] < self.ctx.cfg.training.film_augment
        which = (u[:, 1] * F).long().clamp(max=F - 1)
        rows = torch.arange(len(which), device=films.device)
        picked = films[rows, which.to(films.device)]  # (B, V, P, P)
        crops = batch["film_crops_mm"].to(xray)[rows.to(xray.device), which.to(xray.device)]  # (B, V, 2) mm
        placed = crop_placement(crops, self.views(), view_mask)  # (B, 3) mm
        placement = torch.where(use[:, None], placed.to(xray), torch.zeros_like(placed, dtype=xray.dtype))
        film = torch.where(use, which, torch.full_like(which, -1))
        return torch.where(use[:, None, None, None], picked.to(xray), xray), placement, film

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
        xray, x0 = batch["xray"], batch["x0"]  # clean line integrals: the physics target, whatever is shown
        mask = self.view_mask(gens_views)
        shown, placement, film = self.film_inputs(batch, gens_films, mask)
        if placement is not None and bool((placement != 0).any()):
            x0, xray = self.placed_volume(x0, placement), self.placed_xrays(xray, placement)
        else:
            placement = None
        prev, cond_noise = self.condition(batch, gens_cond, train, mask, placement, film)
        model_fn = stage_model_fn(self.model, shown, prev, cond_noise, view_mask=mask)
        out = ctx.objective.loss(model_fn, x0, gens)
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

"""One training or validation step of the stage being trained: objective loss + physics loss, or samples.

The stage is called through runtime.conditioning (`make_condition`, `stage_model_fn`), as inference calls it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from hybrid_vit_cascade.diffusion.losses import physics_loss
from hybrid_vit_cascade.runtime.conditioning import make_condition, stage_model_fn
from hybrid_vit_cascade.runtime.sampling import SamplingSettings
from hybrid_vit_cascade.runtime.seeding import mix_seed, sample_generators


class StageStepper:
    """Runs one stage's loss or sampling on a batch; shared by training and validation."""

    def __init__(self, ctx, model: torch.nn.Module):
        self.ctx = ctx  # the StageTrainer (cfg, k, objective, projector, physics constants, device)
        self.model = model

    def condition(self, batch: dict, gens_cond, train: bool):
        """(condition, level) of stage k ≥ 2: a random level in training, the inference level otherwise."""
        ctx = self.ctx
        if ctx.k == 1:
            return None, None
        level = None if train else ctx.stage_cfg.cond_noise_level
        return make_condition(batch["prev"], ctx.resolution, ctx.cfg, gens_cond, level)

    def losses(self, batch: dict, gens, gens_cond, train: bool) -> dict[str, Tensor]:
        """{"<kind>_loss", "physics_loss", "physics_loss_<view>"..., "loss"} for a batch on the device.

        <kind> is "diffusion" or "regression" (training.objective); "loss" is what is optimised:
        the objective loss + physics_weight × physics_loss.
        """
        ctx = self.ctx
        xray = batch["xray"]
        prev, cond_noise = self.condition(batch, gens_cond, train)
        out = ctx.objective.loss(stage_model_fn(self.model, xray, prev, cond_noise), batch["x0"], gens)
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
        model_fn = stage_model_fn(self.model, xray, prev, cond_noise, ctx.accelerator.autocast)
        B = xray.shape[0]
        r = ctx.resolution
        return ctx.objective.generate(model_fn, (B, 1, r, r, r), ctx.device, gens, settings)

"""Per-epoch validation of the stage being trained, with its EMA weights.

- losses: the objective (+ physics) loss over the whole val split with per-case noise that does not
  change between epochs, so successive values are comparable and pick the `best` checkpoint;
- quality: `training.val_samples` val volumes sampled (diffusion.sampler, diffusion.sample_steps)
  and scored with PSNR / SSIM-3D on [-1, 1] mapped to [0, 1] (= the HU window), data range 1;
- images: mid-slices (prediction | truth) and DRRs of the prediction next to the input X-rays.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from hybrid_vit_cascade import metrics
from hybrid_vit_cascade.diffusion.losses import physics_loss, predicted_xray
from hybrid_vit_cascade.runtime.sampling import resolve_sampling
from hybrid_vit_cascade.runtime.seeding import mix_seed, sample_generators
from hybrid_vit_cascade.slices import AXIS_NAMES, display_slice
from hybrid_vit_cascade.training.step import StageStepper

def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in batch.items()}


@torch.no_grad()
def validate(ctx, ema_model: torch.nn.Module, val_ds, log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """(scalar metrics, images) of the EMA model on the val split."""
    cfg = ctx.cfg
    stepper = StageStepper(ctx, ema_model)
    ema_model.eval()
    sums: dict[str, float] = {}
    n = 0
    loader = DataLoader(val_ds, batch_size=cfg.training.batch_size, shuffle=False, num_workers=0)
    for batch in loader:
        batch = to_device(batch, ctx.device)
        idx = batch["index"].tolist()
        gens = sample_generators([mix_seed("val", cfg.training.seed, ctx.k, i) for i in idx], ctx.device)
        gens_c = sample_generators([mix_seed("val-c", cfg.training.seed, ctx.k, i) for i in idx], ctx.device)
        with ctx.accelerator.autocast():
            res = stepper.losses(batch, gens, gens_c, train=False)
        B = len(idx)
        for key, v in res.items():
            sums[key] = sums.get(key, 0.0) + float(v) * B
        n += B
    out = {k: v / max(n, 1) for k, v in sums.items()}
    images: dict[str, np.ndarray] = {}
    n_samp = min(cfg.training.val_samples, len(val_ds))
    if n_samp > 0:
        psnrs, ssims = [], []
        sub = DataLoader(Subset(val_ds, list(range(n_samp))), batch_size=cfg.training.batch_size, shuffle=False)
        first = True
        settings = resolve_sampling(cfg, samples=1, guidance_scale=0.0)  # diffusion.sample_steps, diffusion.sampler
        for batch in sub:
            batch = to_device(batch, ctx.device)
            pred = stepper.sample(batch, settings)
            truth = batch["x0"].float()
            for p, t in zip(pred, truth):
                # [-1, 1] → [0, 1] is exactly the HU window mapped to [0, 1] (DESIGN.md physics).
                p01, t01 = (p[0].cpu() + 1) / 2, (t[0].cpu() + 1) / 2
                psnrs.append(metrics.psnr(p01, t01, data_range=1.0))
                ssims.append(metrics.ssim3d(p01, t01, data_range=1.0))
            if first:
                images = _images(ctx, pred[:1], batch)
                first = False
        out["psnr"] = float(np.mean(psnrs))
        out["ssim"] = float(np.mean(ssims))
    return out, images


def _images(ctx, pred: Tensor, batch: dict) -> dict[str, np.ndarray]:
    """Mid-slices (prediction | truth) and DRR(prediction) | input X-ray, per view, for case 0."""
    p = pred[0, 0].float().cpu().numpy()
    t = batch["x0"][0, 0].float().cpu().numpy()
    imgs = {f"slice_{name}": np.concatenate([display_slice(p, name), display_slice(t, name)], axis=1)
            for name in AXIS_NAMES}
    drr = predicted_xray(pred[:1].float(), ctx.projector, ctx.spacing_mm, ctx.hu_window, ctx.mu_water, ctx.li_max)
    for v, name in enumerate(ctx.view_names):
        imgs[f"drr_{name}"] = np.concatenate(
            [drr[0, v].cpu().numpy(), batch["xray"][0, v].float().cpu().numpy()], axis=1
        )
    return imgs

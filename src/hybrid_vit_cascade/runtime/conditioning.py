"""How a stage is called: its X-rays and the previous stage's (noise-augmented) output bound into `model_fn`.

Stage k ≥ 2 is conditioned on what stage k−1 really produces (its *sampled* output), upsampled
to stage k's resolution and noised to a level s that the stage also receives (Ho et al. 2022,
"Cascaded Diffusion Models", conditioning augmentation): in training s ~ U[0, training.cond_aug_max]
per sample, at evaluation and inference s = StageConfig.cond_noise_level. Training, validation, the
conditioning cache and inference all build the condition and the model_fn here, so inference sees
exactly what training saw. The views a stage sees are bound here too (`view_mask`): with
training.view_dropout a training sample shows one view or both (`draw_view_mask`), the conditioning
cache is built per view set (`view_subsets`), and inference takes any non-empty subset.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from hybrid_vit_cascade import threads
from hybrid_vit_cascade.config import Config
from hybrid_vit_cascade.diffusion.samplers import ModelFn
from hybrid_vit_cascade.diffusion.schedule import q_sample
from hybrid_vit_cascade.runtime.seeding import per_sample_rand, per_sample_randn


def upsample_to(x: Tensor, size: int) -> Tensor:
    """Trilinear resize of (B, 1, d, d, d) or (1, d, d, d) to edge `size` (identity if equal)."""
    squeeze = x.dim() == 4
    if squeeze:
        x = x[None]
    if x.shape[-1] != size:
        x = F.interpolate(x.float(), size=(size, size, size), mode="trilinear", align_corners=False)
    return x[0] if squeeze else x


def make_condition(
    prev_low: Tensor, size: int, cfg: Config, gens: Sequence[torch.Generator], level: Optional[float]
) -> tuple[Tensor, Tensor]:
    """(condition (B, 1, size³), its noise level (B,)) from the previous stage's output (B, 1, d³).

    `level` None draws a training level in [0, training.cond_aug_max] per sample from gens[b];
    a number is the fixed evaluation / inference level (StageConfig.cond_noise_level).
    """
    prev = upsample_to(prev_low, size)
    B = prev.shape[0]
    if level is None:
        lvl = per_sample_rand(gens, prev.device) * cfg.training.cond_aug_max  # (B,)
    else:
        lvl = torch.full((B,), float(level), device=prev.device)
    eps = per_sample_randn(gens, prev.shape[1:], prev.device, prev.dtype)  # (B, 1, size, size, size)
    return q_sample(prev, eps, lvl.to(prev.dtype), cfg.diffusion.schedule), lvl


def stage_model_fn(
    stage: torch.nn.Module,
    xray: Tensor,
    prev: Optional[Tensor] = None,
    cond_noise: Optional[Tensor] = None,
    autocast: Optional[Callable[[], object]] = None,
    view_mask: Optional[Tensor] = None,
    reuse_condition: bool = False,
) -> ModelFn:
    """model_fn(x_t, t) -> float32 output of `stage` with its X-rays (B, V, P, P), condition and view mask bound.

    view_mask (B, V) bool, True = view present; None = every view (the stage is then called exactly
    as before view masks existed). `reuse_condition` (sampling, no parameter gradients): the X-ray
    encoding, lifting and upsampled condition are computed on the first call and reused by every
    later one — the same outputs, without re-encoding the same X-rays at each sampler step.
    """
    ctx = autocast or nullcontext
    extra = {} if view_mask is None else {"view_mask": view_mask}
    encoded: dict = {}

    def model_fn(x_t: Tensor, t: Tensor) -> Tensor:
        threads.tick()  # every training step and sampler step passes here: follow the machine's load
        with ctx():
            if reuse_condition and "c" not in encoded:
                with torch.no_grad():
                    base = getattr(stage, "module", stage)  # a DDP / Accelerate wrapper keeps the stage in .module
                    encoded["c"] = base.encode_condition(xray, prev, view_mask, x_t.dtype)
            return stage(x_t, t, xray, prev, cond_noise, encoded=encoded.get("c"), **extra).float()

    return model_fn


# ---------------------------------------------------------------- view subsets (training.view_dropout)


def view_subsets(views: Sequence[str]) -> list[tuple[str, ...]]:
    """The view sets a view-dropout model is conditioned on: all views first, then each view alone."""
    views = tuple(views)
    return [views] + ([(v,) for v in views] if len(views) > 1 else [])


def subset_label(views: Sequence[str]) -> str:
    """'ap+lateral', 'ap': the name of a view set in cache folders, reports and file names."""
    return "+".join(views)


def subset_of_mask(mask_row: Tensor, views: Sequence[str]) -> tuple[str, ...]:
    """The present views of one sample's mask (V,) bool, in the model's order."""
    return tuple(v for v, present in zip(views, mask_row.tolist()) if present)


def draw_view_mask(gens: Sequence[torch.Generator], n_views: int, p_single: float, device) -> Tensor:
    """(B, V) bool: sample b keeps one view (which one uniform) with probability p_single, else all.

    Two uniforms per sample from gens[b] (always both, so the draw count is fixed); the caller
    gives these generators to nothing else, so the other draws of a step do not move.
    """
    u = torch.stack([torch.rand(2, generator=g, device=device) for g in gens])  # (B, 2)
    single = u[:, 0] < p_single
    which = (u[:, 1] * n_views).long().clamp(max=n_views - 1)
    alone = torch.nn.functional.one_hot(which, n_views).bool()
    return torch.where(single[:, None], alone, torch.ones_like(alone))

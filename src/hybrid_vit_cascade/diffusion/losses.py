"""Training losses: the v-prediction MSE (optionally min-SNR-γ weighted) and the DRR physics loss."""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from ..geometry.physics import hu_to_mu, normalize_xray, unit_to_hu
from .schedule import min_snr_weight

REDUCTIONS = ("mean", "sum", "none")


def v_loss(
    v_pred: Tensor,
    v_true: Tensor,
    t: Tensor,
    min_snr_gamma: Optional[float] = None,
    reduction: str = "mean",
    schedule: str = "cosine",
    min_snr_floor: float = 0.0,
) -> Tensor:
    """MSE between predicted and true v, per sample mean over voxels, optionally min-SNR-γ weighted.

    With min_snr_gamma the x0-equivalent weight is clamp(SNR, min_snr_floor, γ) (schedule.min_snr_weight).

    reduction "mean"/"sum" over the batch, or "none" for the per-sample (B,) values.
    """
    if v_pred.shape != v_true.shape:
        raise ValueError(f"v_pred {tuple(v_pred.shape)} and v_true {tuple(v_true.shape)} must have the same shape")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    B = v_pred.shape[0]
    if t.shape != (B,):
        raise ValueError(f"t must have shape (B,) = ({B},), got {tuple(t.shape)}")
    # float32 accumulation even under bf16/fp16 autocast: the loss is a small difference of squares.
    per_sample = (v_pred.float() - v_true.float()).pow(2).flatten(1).mean(1)  # (B,)
    if min_snr_gamma is not None:
        per_sample = per_sample * min_snr_weight(t, min_snr_gamma, schedule, min_snr_floor).to(per_sample)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


class PhysicsLoss(NamedTuple):
    """Total DRR loss (scalar) and its per-view values (V,), in the projector's view order."""

    total: Tensor
    per_view: Tensor


def predicted_xray(
    x0_pred: Tensor,
    projector: Callable[[Tensor, float], Tensor],
    spacing_mm: float,
    hu_window: tuple[float, float],
    mu_water: float,
    li_max: float,
) -> Tensor:
    """Normalised X-rays (B, V, P, P) of a model-range volume: [-1,1] → HU → μ → ∫μ dl → [-1,1]."""
    hu = unit_to_hu(x0_pred, hu_window)  # HU
    mu = hu_to_mu(hu, mu_water)  # 1/mm
    li = projector(mu, spacing_mm)  # (B, V, P, P) dimensionless line integrals
    return normalize_xray(li, li_max)


def physics_loss(
    x0_pred: Tensor,
    xray: Tensor,
    projector: Callable[[Tensor, float], Tensor],
    spacing_mm: float,  # voxel edge of x0_pred, mm
    hu_window: tuple[float, float],
    mu_water: float,  # 1/mm
    li_max: float,
) -> PhysicsLoss:
    """DRR loss: MSE between projections of the predicted volume and the input X-rays, view by view.

    x0_pred (B, 1, D, H, W) in [-1, 1]; xray (B, V, P, P) normalised with the same li_max, its views in
    the projector's order (the lateral prediction is compared with the lateral X-ray).
    """
    if x0_pred.ndim != 5 or x0_pred.shape[1] != 1:
        raise ValueError(f"x0_pred must be (B, 1, D, H, W), got {tuple(x0_pred.shape)}")
    if xray.ndim != 4 or xray.shape[0] != x0_pred.shape[0]:
        raise ValueError(f"xray must be (B, V, P, P) with B = {x0_pred.shape[0]}, got {tuple(xray.shape)}")
    # Under autocast the projector's sums would run in half precision; the loss is small, keep float32.
    pred = predicted_xray(x0_pred.float(), projector, spacing_mm, hu_window, mu_water, li_max)
    if pred.shape != xray.shape:
        raise ValueError(
            f"projector output {tuple(pred.shape)} does not match the X-rays {tuple(xray.shape)}: "
            "check the views (their number and order) and the detector size"
        )
    per_view = (pred - xray.float()).pow(2).mean(dim=(2, 3)).mean(0)  # (B, V) → (V,)
    return PhysicsLoss(per_view.mean(), per_view)


__all__ = ["v_loss", "physics_loss", "predicted_xray", "PhysicsLoss"]

"""Guidance as a wrapper of `model_fn(x_t, t) -> v`, so it composes with any sampler.

DRR-consistency guidance pulls the clean estimate toward volumes whose projections match the
measured X-rays, in the spirit of DPS (Chung et al. 2023) / classifier guidance (Dhariwal & Nichol
2021). At each call, with the per-sample loss L_b = mean_{v,p,q} (proj(x̂0_b) − y_b)²:

  (1) x̂0 = α·x_t − σ·v(x_t)                           (v identity, differentiable in x_t)
  (2) g = ∇_{x_t} Σ_b L_b   (through the network, as DPS; g = Jᵀ·∇_{x̂0}L with J = ∂x̂0/∂x_t),
      or g = ∇_{x̂0} L with through_model=False (no backward pass through the network)
  (3) x̂0' = x̂0 − η·g                                  (a gradient step on the clean estimate)
        η = scale                                      (normalize=False: volume units per unit gradient;
                                                        scale: one number, or one per sample)
        η_b = scale·2·L_b / ‖∇_{x̂0} L_b‖²               (normalize=True)
  (4) v' = (α·x_t − x̂0')/σ = v + η·g/σ                 (the v that yields x̂0' at this x_t)

Normalised step: for a linear projector A, moving x̂0 by −η·∇_{x̂0}L changes the residual r by
−η·(2/N)·AAᵀr; when AAᵀ ∝ I (e.g. one parallel view) η = 2L/‖∇_{x̂0}L‖² removes r exactly, so
scale = 1 means "fit the X-rays along the gradient", and the step does not depend on the projector's
units, the detector size or the volume resolution. With through_model=True the same η is applied
along Jᵀ∇_{x̂0}L, so the network's Jacobian rescales the step (it damps it at high noise, where a
denoiser's x̂0 barely depends on x_t).

Step (4) keeps x_t = α·x̂0' + σ·ε̂' with ε̂' = ε̂ − (α/σ)·η·g, i.e. the corrected prediction is a
consistent (x0, ε) pair, so a DDIM step from t to s moves the sample by −(α_s − σ_s·α_t/σ_t)·η·g,
a positive multiple of (x̂0' − x̂0) since α_s/σ_s > α_t/σ_t, and the final step returns x̂0'.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from .schedule import alpha_sigma, broadcast_to, x0_from_v

ModelFn = Callable[[Tensor, Tensor], Tensor]


def drr_consistency_wrap(
    model_fn: ModelFn,
    projector_fn: Callable[[Tensor], Tensor],
    target_xray: Tensor,
    scale: Union[float, Tensor],
    schedule: str = "cosine",
    through_model: bool = True,
    normalize: bool = False,
    views: Optional[Sequence[int]] = None,
) -> ModelFn:
    """Correct v so the clean estimate's projections move toward `target_xray` (B, V, P, P); see module doc.

    `projector_fn` maps x0 (B, 1, D, H, W) in [-1, 1] to normalised X-rays (B, V, P, P) and must be
    differentiable. `through_model=False` differentiates w.r.t. x̂0 only (cheaper: no backward pass
    through the network). `normalize=True` makes `scale` unit-free (scale = 1: fit the X-rays).
    `views`: indices of the views to fit (the projector renders all V; L_b then averages over the
    given ones only, so an absent view's placeholder image is never a target); None = every view.
    `scale` is one number, or a (B,) tensor giving each sample its own (runtime/sampling.py guidance spread).
    """
    if torch.is_tensor(scale):
        if scale.dim() != 1 or scale.shape[0] != target_xray.shape[0]:
            raise ValueError(f"per-sample DRR guidance scales must be ({target_xray.shape[0]},), got {tuple(scale.shape)}")
        if not torch.isfinite(scale).all() or (scale < 0).any():
            raise ValueError(f"DRR guidance scales must be finite and >= 0, got {scale.tolist()}")
    elif scale < 0:
        raise ValueError(f"DRR guidance scale must be >= 0, got {scale}")
    if views is not None and (not len(views) or len(set(views)) != len(views)):
        raise ValueError(f"DRR guidance needs distinct view indices to fit, got {list(views)}")

    def guided(x_t: Tensor, t: Tensor) -> Tensor:
        if not torch.is_tensor(scale) and scale == 0.0:
            return model_fn(x_t, t)
        with torch.enable_grad():
            if through_model:
                x_in = x_t.detach().requires_grad_(True)
                v = model_fn(x_in, t)
                x0 = x0_from_v(x_in, v, t, schedule)  # (1) differentiable in x_t through the network
            else:
                with torch.no_grad():  # no graph through the network's parameters
                    v = model_fn(x_t, t)
                x0 = x0_from_v(x_t, v, t, schedule).detach().requires_grad_(True)  # (1)
            pred = projector_fn(x0)
            if pred.shape != target_xray.shape:
                raise ValueError(
                    f"projector_fn returned {tuple(pred.shape)} but the target X-rays are {tuple(target_xray.shape)}"
                )
            resid = pred - target_xray
            if views is not None:
                resid = resid[:, list(views)]
            per_loss = resid.pow(2).flatten(1).mean(1)  # (B,) L_b
            # Summed over the batch: samples are independent, so each gets its own gradient.
            wrt = [x_in, x0] if through_model else [x0]
            grads = torch.autograd.grad(per_loss.sum(), wrt)  # (2)
        g, g_x0 = grads[0], grads[-1]
        if normalize:
            # η_b = scale·2·L_b/‖∇_{x̂0} L_b‖² (0 where that gradient vanishes, i.e. nothing to fit).
            gg = g_x0.pow(2).flatten(1).sum(1)  # (B,)
            ratio = 2 * per_loss.detach() / gg.clamp_min(torch.finfo(gg.dtype).tiny)
            eta = broadcast_to(_per_sample(scale, ratio) * torch.where(gg > 0, ratio, torch.zeros_like(ratio)), x_t)
        else:
            eta = broadcast_to(_per_sample(scale, g), x_t) if torch.is_tensor(scale) else scale
        # (3)+(4): x̂0' = x̂0 − η·g  ⇔  v' = v + η·g/σ (= (α·x_t − x̂0')/σ without the cancellation
        # in α·x_t − x̂0'); detached so the sampler stays grad-free.
        sigma = broadcast_to(alpha_sigma(t, schedule)[1], x_t).to(x_t.dtype)
        return (v.detach() + eta * g / sigma).detach()

    return guided


def _per_sample(scale: Union[float, Tensor], like: Tensor) -> Union[float, Tensor]:
    """A tensor scale on `like`'s device and dtype (one value per sample); a number as it is."""
    return scale.to(device=like.device, dtype=like.dtype) if torch.is_tensor(scale) else scale

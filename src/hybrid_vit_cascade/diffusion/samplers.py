"""Samplers for a v-prediction model: DDIM (Song et al. 2021) and DPM-Solver++(2M) (Lu et al. 2022).

`model_fn(x_t, t) -> v` with x_t (B, …) and t (B,). As in k-diffusion, the caller passes the
starting volume x (at time ts[0]) and the time grid ts = (t_0 > t_1 > … > t_N), usually from
`timesteps`; the samplers draw no starting noise themselves. Every sampler turns v into the clean
estimate x̂0 and noise estimate ε̂ with the schedule identities (never uses v as ε — the public
attempt's bug).

The last step (into t_N = 0) returns x̂0 of the final model call: no leftover noise. With
t_N > 0 the result is the sample at noise level t_N instead (a partially denoised volume).
Starting at t_0 < 1 from a partially noised volume (schedule.q_sample) gives SDEdit-style refinement.

Step grids (`timesteps`): "uniform" (the default for both samplers) spaces the N + 1 times uniformly
in t; "logsnr" spaces them uniformly in log-SNR λ (Lu et al. suggest it for DPM-Solver on
low-resolution pixel-space models), with the endpoints pinned exactly to t_max and t_min. On the
analytic Gaussian-data check (tests) uniform-t is the more accurate grid for the cosine schedule
(whose λ(t) already concentrates steps at mid SNR) and log-SNR for the VP-linear schedule.
Everything runs under torch.no_grad(); guidance wrappers re-enable gradients where they need them.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from .schedule import alpha_sigma, eps_from_v, log_snr, t_from_log_snr, x0_from_v

ModelFn = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[dict], None]
SPACINGS = ("uniform", "logsnr")


def timesteps(
    steps: int, t_max: float = 1.0, t_min: float = 0.0, spacing: str = "uniform", schedule: str = "cosine"
) -> Tensor:
    """The (steps + 1,) float64 grid t_max → t_min, uniform in t or in log-SNR."""
    if steps <= 0:
        raise ValueError(f"sampler steps must be positive, got {steps}")
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    if spacing == "uniform":
        return torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64)
    if spacing == "logsnr":
        ends = torch.tensor([t_max, t_min], dtype=torch.float64)
        lam = log_snr(ends, schedule)
        if lam[0] >= lam[1]:
            raise ValueError(f"t_max={t_max} and t_min={t_min} lie in the clamped flat end of the log-SNR")
        grid = t_from_log_snr(torch.linspace(float(lam[0]), float(lam[1]), steps + 1, dtype=torch.float64), schedule)
        grid[0], grid[-1] = t_max, t_min  # the inverse is exact only up to the clamp; pin the ends
        return grid
    raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {SPACINGS}")


def _check(x: Tensor, ts: Tensor) -> Tensor:
    """Validate the starting volume and the time grid; the grid as float64."""
    if not torch.isfinite(x).all():
        raise ValueError("the starting volume x contains NaN or Inf")
    ts = torch.as_tensor(ts, dtype=torch.float64)
    if ts.dim() != 1 or ts.numel() < 2:
        raise ValueError(f"the time grid ts must be 1-D with at least 2 entries, got shape {tuple(ts.shape)}")
    if not bool(((ts >= 0) & (ts <= 1)).all()):
        raise ValueError(f"the time grid ts must lie within [0, 1], got min {ts.min().item():.4g}, max {ts.max().item():.4g}")
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError("the time grid ts must be strictly decreasing")
    return ts


def _call(model_fn: ModelFn, x: Tensor, t: float, schedule: str) -> tuple[Tensor, Tensor]:
    """Evaluate the model at time t and return (x̂0, ε̂) via the schedule's v identities."""
    B = x.shape[0]
    # t stays at least float32 even for half-precision data (bf16 cannot resolve t near 1).
    tb = torch.full((B,), t, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
    v = model_fn(x, tb)
    if v.shape != x.shape:
        raise ValueError(f"model_fn must return v with the shape of x_t {tuple(x.shape)}, got {tuple(v.shape)}")
    if not torch.isfinite(v).all():
        raise FloatingPointError(f"model_fn returned NaN/Inf at t={t:.4f}")
    x0 = x0_from_v(x, v, tb, schedule).to(x.dtype)  # x0 = α·x_t − σ·v
    eps = eps_from_v(x, v, tb, schedule).to(x.dtype)  # ε  = σ·x_t + α·v
    return x0, eps


@torch.no_grad()
def ddim_sample(
    model_fn: ModelFn,
    x: Tensor,
    ts: Tensor,
    schedule: str = "cosine",
    eta: float = 0.0,
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callback] = None,
) -> Tensor:
    """DDIM (η = 0 deterministic, η = 1 ≈ DDPM ancestral) from x at ts[0] along the grid ts; η-noise from `generator`."""
    if eta < 0:
        raise ValueError(f"DDIM eta must be >= 0, got {eta}")
    ts = _check(x, ts)
    steps = len(ts) - 1
    alphas, sigmas = alpha_sigma(ts, schedule)
    for i in range(steps):
        t, s = float(ts[i]), float(ts[i + 1])
        # (1) Model call at t; x̂0 and ε̂ from v (Salimans & Ho 2022, §4 / schedule.py identities).
        a_t, s_t = float(alphas[i]), float(sigmas[i])
        x0, eps = _call(model_fn, x, t, schedule)
        if i == steps - 1 and s == 0.0:
            x = x0  # (4) final step into t = 0: return the clean estimate, no leftover noise
        else:
            a_s, s_s = float(alphas[i + 1]), float(sigmas[i + 1])
            # (2) Song et al. 2021 eq. 16 in α/σ notation (their α_t is our α_t²):
            #     σ_η = η·sqrt(σ_s²/σ_t²)·sqrt(1 − α_t²/α_s²).
            sig_eta = eta * (s_s / s_t) * max(1.0 - (a_t / a_s) ** 2, 0.0) ** 0.5
            # (3) Song et al. eq. 12: x_s = α_s·x̂0 + sqrt(σ_s² − σ_η²)·ε̂ + σ_η·z.
            dir_coef = max(s_s**2 - sig_eta**2, 0.0) ** 0.5
            x = a_s * x0 + dir_coef * eps
            if sig_eta > 0:
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x + sig_eta * z
        if callback is not None:
            callback({"i": i, "t": t, "t_next": s, "x": x, "x0": x0})
    return x


@torch.no_grad()
def dpmpp_2m_sample(
    model_fn: ModelFn,
    x: Tensor,
    ts: Tensor,
    schedule: str = "cosine",
    callback: Optional[Callback] = None,
) -> Tensor:
    """DPM-Solver++(2M), data-prediction multistep solver (Lu et al. 2022, Algorithm 2), from x at ts[0]; deterministic."""
    ts = _check(x, ts)
    steps = len(ts) - 1
    alphas, sigmas = alpha_sigma(ts, schedule)
    # Lu et al.'s λ is the half log-SNR: λ_t = log(α_t/σ_t).
    lams = torch.log(alphas) - torch.log(sigmas)
    x0_prev: Optional[Tensor] = None
    h_prev: Optional[float] = None
    for i in range(steps):
        t, s = float(ts[i]), float(ts[i + 1])
        # (1) Data prediction D_i = x̂0(x_{t_i}, t_i) from v.
        x0, _ = _call(model_fn, x, t, schedule)
        if i == steps - 1 and s == 0.0:
            # (5) final step into t = 0 (σ = 0, h = ∞): the solution is the data prediction itself.
            x = x0
        else:
            h = float(lams[i + 1] - lams[i])  # (2) h_i = λ_{t_{i+1}} − λ_{t_i} > 0
            if x0_prev is None:
                d = x0  # (3a) first step: first-order (DPM-Solver++(1) = DDIM)
            else:
                # (3b) Algorithm 2: r = h_{i−1}/h_i, D = (1 + 1/(2r))·D_i − (1/(2r))·D_{i−1}
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            # (4) x_{t_{i+1}} = (σ_{t_{i+1}}/σ_{t_i})·x_{t_i} − α_{t_{i+1}}·(e^{−h} − 1)·D
            ratio = float(sigmas[i + 1] / sigmas[i])
            x = ratio * x - float(alphas[i + 1]) * math.expm1(-h) * d
            h_prev = h
        x0_prev = x0
        if callback is not None:
            callback({"i": i, "t": t, "t_next": s, "x": x, "x0": x0})
    return x


SAMPLERS = {"ddim": ddim_sample, "dpmpp": dpmpp_2m_sample}


def sample(
    model_fn: ModelFn,
    x: Tensor,
    ts: Tensor,
    sampler: str = "ddim",
    eta: float = 0.0,
    schedule: str = "cosine",
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Dispatch to a sampler by its config name ("ddim" | "dpmpp"); eta and generator apply to DDIM only."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {tuple(SAMPLERS)}")
    if sampler == "ddim":
        return ddim_sample(model_fn, x, ts, schedule, eta=eta, generator=generator)
    if eta != 0:
        raise ValueError(f"eta={eta} is only meaningful for the DDIM sampler, not {sampler!r}")
    return dpmpp_2m_sample(model_fn, x, ts, schedule)


__all__ = ["ModelFn", "timesteps", "ddim_sample", "dpmpp_2m_sample", "sample", "SAMPLERS", "SPACINGS"]

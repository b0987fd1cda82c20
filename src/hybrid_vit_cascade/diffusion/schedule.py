"""Noise schedules and v-parameterisation identities over continuous time t ∈ [0, 1].

Variance-preserving diffusion: x_t = α_t·x0 + σ_t·ε with α_t² + σ_t² = 1, t = 0 (near) clean,
t = 1 (near) pure noise. Every schedule is defined through its log signal-to-noise ratio
λ(t) = log(α²/σ²), clamped to [LOGSNR_MIN, LOGSNR_MAX]; then α² = sigmoid(λ), σ² = sigmoid(−λ),
so α² + σ² = 1 holds by construction and α, σ stay strictly inside (0, 1) at both ends.

The model predicts v = α·ε − σ·x0 (Salimans & Ho 2022). This file is the only place that knows
about the objective: x0 = α·x_t − σ·v and ε = σ·x_t + α·v follow from x_t = α·x0 + σ·ε and
α² + σ² = 1 (substitute and expand). Everything else (samplers, guidance, losses) calls these.

Schedules:
- "cosine" (Nichol & Dhariwal 2021, eq. 17): ᾱ(t) = f(t)/f(0), f(t) = cos²((t + s)/(1 + s)·π/2),
  s = 0.008. Written as a log-SNR with the identity cos²u0 − cos²u = sin(u − u0)·sin(u + u0) so it
  is accurate near t = 0 where ᾱ → 1.
- "linear": the continuous-time VP-linear schedule (Song et al. 2021, "Score-based generative
  modeling through SDEs", VP SDE) with β(t) = β_min + t·(β_max − β_min), β_min = 0.1, β_max = 20:
  ᾱ(t) = exp(−β_min·t − ½(β_max − β_min)·t²). It is the T → ∞ limit of DDPM's β-linear schedule
  (1e-4 … 0.02 over T = 1000 steps, β_min = T·1e-4, β_max = T·0.02). λ(1) ≈ −10 (α ≈ 0.0066).

Internally the schedule maths runs in float64 (cheap: it is per-sample scalars) and is cast back
to t's dtype, so float32 training and float64 identity tests share one code path (Apple MPS has
no float64, so there it runs in float32).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

SCHEDULES = ("cosine", "linear")

# log-SNR clamp: σ(t=0) = sqrt(sigmoid(−20)) ≈ 4.5e-5 and α(t=1) ≈ 4.5e-5 for the cosine schedule.
LOGSNR_MIN = -20.0
LOGSNR_MAX = 20.0

COSINE_S = 0.008  # Nichol & Dhariwal's offset: keeps β small near t = 0
LINEAR_BETA_MIN = 0.1  # = 1000 · 1e-4 (DDPM β_1 over T = 1000)
LINEAR_BETA_MAX = 20.0  # = 1000 · 0.02 (DDPM β_T over T = 1000)


def _hi(x: Tensor) -> Tensor:
    """x in float64 (float32 on MPS, which lacks float64) for the schedule maths."""
    return x.to(torch.float32 if x.device.type == "mps" else torch.float64)


def _check_schedule(schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {schedule!r}; expected one of {SCHEDULES}")


def _check_t(t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"t must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"t must be a floating-point tensor, got dtype {t.dtype}")
    # One reduction (a single host sync on GPU) catches NaN and out-of-range times together.
    if not bool(((t >= 0) & (t <= 1)).all()):
        bad = t[~((t >= 0) & (t <= 1))]
        raise ValueError(f"diffusion time t must lie in [0, 1] (and not be NaN), got e.g. {bad.flatten()[0].item()}")


def _log_snr_cosine(t: Tensor) -> Tensor:
    s = COSINE_S
    u = (t + s) / (1 + s) * (math.pi / 2)
    u0 = s / (1 + s) * (math.pi / 2)
    # ᾱ = cos²u / cos²u0  ⇒  SNR = ᾱ/(1 − ᾱ) = cos²u / (cos²u0 − cos²u) = cos²u / (sin(u−u0)·sin(u+u0)).
    # Clamp the factors away from 0 (t = 0 gives sin(0); t = 1 gives cos(π/2) ≈ 0, possibly < 0 in
    # floating point) — the result is clamped to the log-SNR range anyway.
    tiny = torch.finfo(t.dtype).tiny
    cos_u = torch.cos(u).clamp_min(tiny)
    sin_minus = torch.sin(u - u0).clamp_min(tiny)
    sin_plus = torch.sin(u + u0)
    return 2 * torch.log(cos_u) - torch.log(sin_minus) - torch.log(sin_plus)


def _log_snr_linear(t: Tensor) -> Tensor:
    # −log ᾱ = ∫β = β_min·t + ½(β_max − β_min)·t²;  SNR = ᾱ/(1 − ᾱ) = 1/expm1(∫β).
    integral = LINEAR_BETA_MIN * t + 0.5 * (LINEAR_BETA_MAX - LINEAR_BETA_MIN) * t**2
    tiny = torch.finfo(t.dtype).tiny
    return -torch.log(torch.expm1(integral).clamp_min(tiny))


def log_snr(t: Tensor, schedule: str = "cosine") -> Tensor:
    """log(α²/σ²) at time t (any shape), clamped to [LOGSNR_MIN, LOGSNR_MAX]; decreasing in t."""
    _check_schedule(schedule)
    _check_t(t)
    t64 = _hi(t)
    lam = _log_snr_cosine(t64) if schedule == "cosine" else _log_snr_linear(t64)
    return lam.clamp(LOGSNR_MIN, LOGSNR_MAX).to(t.dtype)


def t_from_log_snr(lam: Tensor, schedule: str = "cosine") -> Tensor:
    """Inverse of `log_snr`: the time t ∈ [0, 1] at which the schedule reaches log-SNR `lam`."""
    _check_schedule(schedule)
    lam64 = _hi(lam).clamp(LOGSNR_MIN, LOGSNR_MAX)
    if schedule == "cosine":
        s = COSINE_S
        u0 = s / (1 + s) * (math.pi / 2)
        # ᾱ = sigmoid(λ) = cos²u / cos²u0  ⇒  u = arccos(sqrt(ᾱ)·cos u0).
        u = torch.arccos(torch.sqrt(torch.sigmoid(lam64)) * math.cos(u0))
        t = u * (2 / math.pi) * (1 + s) - s
    else:
        # ½Δβ·t² + β_min·t − (−log ᾱ) = 0 with −log ᾱ = softplus(−λ); take the positive root.
        d = LINEAR_BETA_MAX - LINEAR_BETA_MIN
        c = torch.nn.functional.softplus(-lam64)
        t = (-LINEAR_BETA_MIN + torch.sqrt(LINEAR_BETA_MIN**2 + 2 * d * c)) / d
    return t.clamp(0.0, 1.0).to(lam.dtype if lam.is_floating_point() else torch.get_default_dtype())


def alpha_sigma(t: Tensor, schedule: str = "cosine") -> tuple[Tensor, Tensor]:
    """(α_t, σ_t) with α² + σ² = 1, same shape and dtype as t."""
    _check_schedule(schedule)
    _check_t(t)
    t64 = _hi(t)
    lam = (_log_snr_cosine(t64) if schedule == "cosine" else _log_snr_linear(t64)).clamp(LOGSNR_MIN, LOGSNR_MAX)
    # α² = sigmoid(λ), σ² = sigmoid(−λ): both in (0, 1) and summing to 1 for every finite λ.
    alpha = torch.sigmoid(lam).sqrt()
    sigma = torch.sigmoid(-lam).sqrt()
    return alpha.to(t.dtype), sigma.to(t.dtype)


def broadcast_to(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample coefficient (B,) to (B, 1, …, 1) so it multiplies x of shape (B, …)."""
    if coef.ndim == 0:
        coef = coef.expand(x.shape[0])
    if coef.ndim != 1 or coef.shape[0] != x.shape[0]:
        raise ValueError(
            f"diffusion time must have shape (B,) = ({x.shape[0]},) to match data of shape "
            f"{tuple(x.shape)}, got {tuple(coef.shape)}"
        )
    return coef.reshape(coef.shape[0], *([1] * (x.ndim - 1))).to(device=x.device)


def _coefs(t: Tensor, x: Tensor, schedule: str) -> tuple[Tensor, Tensor]:
    alpha, sigma = alpha_sigma(t, schedule)
    dtype = torch.promote_types(t.dtype, x.dtype)
    return broadcast_to(alpha, x).to(dtype), broadcast_to(sigma, x).to(dtype)


def _same_shape(a: Tensor, b: Tensor, na: str, nb: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{na} and {nb} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def q_sample(x0: Tensor, eps: Tensor, t: Tensor, schedule: str = "cosine") -> Tensor:
    """Forward process x_t = α_t·x0 + σ_t·ε; x0, eps (B, …), t (B,)."""
    _same_shape(x0, eps, "x0", "eps")
    alpha, sigma = _coefs(t, x0, schedule)
    return alpha * x0 + sigma * eps


def v_target(x0: Tensor, eps: Tensor, t: Tensor, schedule: str = "cosine") -> Tensor:
    """Training target v = α_t·ε − σ_t·x0."""
    _same_shape(x0, eps, "x0", "eps")
    alpha, sigma = _coefs(t, x0, schedule)
    return alpha * eps - sigma * x0


def x0_from_v(x_t: Tensor, v: Tensor, t: Tensor, schedule: str = "cosine") -> Tensor:
    """Clean-data prediction x0 = α_t·x_t − σ_t·v."""
    _same_shape(x_t, v, "x_t", "v")
    alpha, sigma = _coefs(t, x_t, schedule)
    return alpha * x_t - sigma * v


def eps_from_v(x_t: Tensor, v: Tensor, t: Tensor, schedule: str = "cosine") -> Tensor:
    """Noise prediction ε = σ_t·x_t + α_t·v."""
    _same_shape(x_t, v, "x_t", "v")
    alpha, sigma = _coefs(t, x_t, schedule)
    return sigma * x_t + alpha * v


def min_snr_weight(t: Tensor, gamma: float, schedule: str = "cosine", floor: float = 0.0) -> Tensor:
    """Min-SNR-γ loss weight for the v objective: clamp(SNR, floor, γ) / (SNR + 1), shape of t.

    Hang et al. 2023 weight the x0 loss by min(SNR, γ); since x0 − x̂0 = −σ·(v − v̂) and
    σ² = 1/(SNR + 1), the same weighting on the v loss is min(SNR, γ)/(SNR + 1). Their x0 weight
    vanishes as SNR → 0, so the high-noise clean estimate — the conditional mean E[x0 | X-rays] that
    fixes a reconstruction's global structure — is barely trained; `floor` > 0 keeps its x0 weight at
    least `floor` there (floor = γ is a plain x0 loss, floor = 0 the original min-SNR-γ).
    """
    if not gamma > 0:
        raise ValueError(f"min-SNR gamma must be positive, got {gamma}")
    if not 0 <= floor <= gamma:
        raise ValueError(f"min-SNR floor must lie in [0, gamma={gamma}], got {floor}")
    lam = _hi(log_snr(t, schedule))
    snr = lam.exp()
    return (snr.clamp(floor, gamma) / (snr + 1)).to(t.dtype)

"""Noise schedules and v-parameterisation identities (float64, analytic checks)."""
import math

import pytest
import torch

from hybrid_vit_cascade.diffusion.schedule import (
    LOGSNR_MAX,
    LOGSNR_MIN,
    SCHEDULES,
    alpha_sigma,
    broadcast_to,
    eps_from_v,
    log_snr,
    min_snr_weight,
    q_sample,
    t_from_log_snr,
    v_target,
    x0_from_v,
)

F64 = torch.float64


def _rand_t(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g, dtype=F64)
    return torch.cat([t, torch.tensor([0.0, 1.0, 1e-4, 1 - 1e-4], dtype=F64)])


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_alpha_sigma_unit_norm_and_range(schedule):
    t = _rand_t()
    a, s = alpha_sigma(t, schedule)
    assert a.dtype == F64 and a.shape == t.shape
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(t), atol=1e-12, rtol=0)
    # strictly inside (0, 1) at both ends (the log-SNR clamp), so x0/ε identities never divide by 0
    assert bool(((a > 0) & (a < 1) & (s > 0) & (s < 1)).all())


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_log_snr_monotone_and_consistent(schedule):
    t = torch.linspace(0, 1, 2001, dtype=F64)
    lam = log_snr(t, schedule)
    assert bool((lam[1:] <= lam[:-1]).all())  # non-increasing everywhere
    interior = lam[(lam > LOGSNR_MIN + 1e-9) & (lam < LOGSNR_MAX - 1e-9)]
    assert bool((interior[1:] < interior[:-1]).all())  # strictly decreasing off the clamp
    a, s = alpha_sigma(t, schedule)
    torch.testing.assert_close(lam, torch.log(a**2 / s**2), atol=1e-8, rtol=1e-8)


def test_cosine_matches_nichol_dhariwal():
    # ᾱ(t) = f(t)/f(0), f(t) = cos²((t + s)/(1 + s)·π/2), s = 0.008 — away from the clamped ends.
    t = torch.linspace(0.001, 0.999, 101, dtype=F64)
    f = lambda u: torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    a, _ = alpha_sigma(t, "cosine")
    torch.testing.assert_close(a**2, f(t) / f(torch.zeros((), dtype=F64)), atol=1e-12, rtol=1e-9)


def test_linear_matches_ddpm_discrete():
    # DDPM β-linear (1e-4 … 0.02, T = 1000): ᾱ_k = Π(1 − β_i) ≈ continuous VP-linear at t = k/T.
    T = 1000
    betas = torch.linspace(1e-4, 0.02, T, dtype=F64)
    abar = torch.cumprod(1 - betas, 0)
    k = torch.tensor([50, 200, 500, 800], dtype=F64)
    a, _ = alpha_sigma(k / T, "linear")
    torch.testing.assert_close(a**2, abar[k.long() - 1], rtol=0.05, atol=1e-5)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_endpoints(schedule):
    a0, s0 = alpha_sigma(torch.zeros(1, dtype=F64), schedule)
    a1, s1 = alpha_sigma(torch.ones(1, dtype=F64), schedule)
    assert a0.item() > 1 - 1e-8 and s0.item() < 1e-4  # t = 0: (near) clean
    assert s1.item() > 0.9999 and a1.item() < 0.01  # t = 1: (near) pure noise
    assert log_snr(torch.zeros(1, dtype=F64), schedule).item() == LOGSNR_MAX


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_identities_round_trip(schedule):
    g = torch.Generator().manual_seed(1)
    B = 6
    x0 = torch.rand(B, 1, 4, 4, 4, generator=g, dtype=F64) * 2 - 1
    eps = torch.randn(B, 1, 4, 4, 4, generator=g, dtype=F64)
    t = torch.rand(B, generator=g, dtype=F64)
    t[0], t[1] = 0.0, 1.0
    x_t = q_sample(x0, eps, t, schedule)
    v = v_target(x0, eps, t, schedule)
    torch.testing.assert_close(x0_from_v(x_t, v, t, schedule), x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(eps_from_v(x_t, v, t, schedule), eps, atol=1e-6, rtol=0)
    a, s = alpha_sigma(t, schedule)
    torch.testing.assert_close(x_t, broadcast_to(a, x0) * x0 + broadcast_to(s, x0) * eps)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_t_from_log_snr_inverts(schedule):
    t = torch.linspace(0.01, 0.99, 99, dtype=F64)
    torch.testing.assert_close(t_from_log_snr(log_snr(t, schedule), schedule), t, atol=1e-9, rtol=0)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_min_snr_weight(schedule):
    t = torch.linspace(0, 1, 11, dtype=F64)
    gamma = 5.0
    snr = log_snr(t, schedule).exp()
    w = min_snr_weight(t, gamma, schedule)
    torch.testing.assert_close(w, torch.minimum(snr, torch.full_like(snr, gamma)) / (snr + 1))
    # equals the min-SNR x0 weight times σ² (x0 error = σ · v error)
    _, s = alpha_sigma(t, schedule)
    torch.testing.assert_close(w, torch.minimum(snr, torch.full_like(snr, gamma)) * s**2, atol=1e-9, rtol=1e-9)
    assert bool(((w > 0) & (w <= 1)).all())
    with pytest.raises(ValueError, match="gamma"):
        min_snr_weight(t, 0.0, schedule)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("floor", [0.5, 1.0, 5.0])
def test_min_snr_weight_floor(schedule, floor):
    t = torch.linspace(0, 1, 21, dtype=F64)
    gamma = 5.0
    snr = log_snr(t, schedule).exp()
    w = min_snr_weight(t, gamma, schedule, floor)
    torch.testing.assert_close(w, snr.clamp(floor, gamma) / (snr + 1))
    _, s = alpha_sigma(t, schedule)
    x0_weight = w / s**2  # the weight the same loss puts on the x0 error
    assert bool((x0_weight >= floor - 1e-9).all()) and bool((x0_weight <= gamma + 1e-9).all())
    if floor == gamma:  # a plain x0 loss: constant weight γ on the x0 error
        torch.testing.assert_close(x0_weight, torch.full_like(t, gamma), atol=1e-9, rtol=1e-9)
    # The floor only adds weight where SNR < floor (high noise); elsewhere it is min-SNR-γ.
    plain = min_snr_weight(t, gamma, schedule)
    torch.testing.assert_close(w[snr >= floor], plain[snr >= floor])
    assert bool((w[snr < floor] > plain[snr < floor]).all())
    with pytest.raises(ValueError, match="floor"):
        min_snr_weight(t, gamma, schedule, gamma + 1)
    with pytest.raises(ValueError, match="floor"):
        min_snr_weight(t, gamma, schedule, -0.1)


def test_broadcast_and_float32():
    x = torch.zeros(3, 1, 2, 2, 2)
    t = torch.rand(3)
    assert broadcast_to(t, x).shape == (3, 1, 1, 1, 1)
    out = q_sample(x, torch.ones_like(x), t)
    assert out.dtype == torch.float32 and out.shape == x.shape
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        q_sample(x, x, torch.rand(2))


def test_bad_inputs_named():
    with pytest.raises(ValueError, match="unknown noise schedule"):
        alpha_sigma(torch.rand(2), "sigmoid")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        alpha_sigma(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="NaN"):
        log_snr(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="same shape"):
        x0_from_v(torch.zeros(2, 1, 2, 2, 2), torch.zeros(2, 1, 2, 2, 3), torch.rand(2))

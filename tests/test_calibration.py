"""Calibration metrics of a K-sample ensemble against hand-computed values on tiny arrays."""
from __future__ import annotations

import math

import numpy as np
import pytest

from hybrid_vit_cascade.inference import calibration as C


def test_coverage_of_a_calibrated_gaussian_ensemble():
    """Two samples at ±σ/√2 have mean 0 and std σ (ddof 1); truths ~ N(0, σ²) fall inside ±2σ 95.45 % of the time."""
    rng = np.random.default_rng(0)
    sigma = rng.uniform(5, 50, size=200_000)
    samples = np.stack([-sigma / math.sqrt(2), sigma / math.sqrt(2)])
    mean, std = C.ensemble_mean_std(samples)
    np.testing.assert_allclose(std, sigma)
    truth = rng.normal(0, sigma)
    assert C.coverage(mean, std, truth) == pytest.approx(C.GAUSS_COVERAGE_2SIGMA, abs=0.002)
    assert C.GAUSS_COVERAGE_2SIGMA == pytest.approx(0.9545, abs=1e-4)


def test_coverage_counts_the_interval_edges_and_exact_hits():
    mean, std = np.zeros(4), np.array([1.0, 1.0, 0.0, 0.0])
    truth = np.array([2.0, 2.5, 0.0, 0.1])  # on the edge: in; beyond: out; σ = 0 exact hit: in; miss: out
    assert C.coverage(mean, std, truth) == 0.5


def test_gaussian_nll_by_hand_and_its_floor():
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    assert C.gaussian_nll([0.0], [2.0], [2.0]) == pytest.approx(half_log_2pi + math.log(2) + 0.5)
    # σ = 0 is floored at SIGMA_FLOOR_HU (1 HU): log 1 = 0, z = 0.5.
    assert C.gaussian_nll([0.0], [0.0], [0.5]) == pytest.approx(half_log_2pi + 0.125)
    assert C.SIGMA_FLOOR_HU == 1.0


def test_crps_by_hand_degenerate_and_brute_force():
    # {0, 2} vs 1: E|X−y| = 1, E|X−X'| = (0 + 2 + 2 + 0) / 4 = 1 → 1 − ½ = 0.5
    assert C.crps_ensemble(np.array([[0.0], [2.0]]), np.array([1.0])) == pytest.approx(0.5)
    rng = np.random.default_rng(1)
    pred, truth = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    degenerate = np.stack([pred] * 4)  # K identical samples: the CRPS is the MAE
    assert C.crps_ensemble(degenerate, truth) == pytest.approx(np.abs(pred - truth).mean())
    x, y = rng.normal(size=(5, 7)), rng.normal(size=7)
    brute = np.abs(x - y).mean(0) - 0.5 * np.abs(x[:, None] - x[None]).mean((0, 1))
    assert C.crps_ensemble(x, y) == pytest.approx(brute.mean())


def test_spearman_of_monotone_maps():
    a = np.array([[1.0, 5.0], [2.0, 9.0]])
    assert C.spearman(a, np.exp(a)) == pytest.approx(1.0)
    assert C.spearman(a, -a**3) == pytest.approx(-1.0)
    assert math.isnan(C.spearman(a, np.ones_like(a)))  # a constant map ranks nothing
    # ties get average ranks: ranks (1.5, 1.5, 3) vs (1, 2, 3) → Pearson of the ranks
    assert C.spearman([1.0, 1.0, 2.0], [1.0, 2.0, 3.0]) == pytest.approx(np.corrcoef([1.5, 1.5, 3], [1, 2, 3])[0, 1])


def test_gaussian_reference_spearman_of_two_far_apart_spreads():
    """Half the voxels σ = 1, half σ = 1000: |error| = σ|z| splits into two groups that never overlap in practice,
    and the rank correlation of a two-valued variable with perfectly separated halves is √3/2 · n/√(n² − 1)."""
    std = np.repeat([1.0, 1000.0], 5000)
    n = std.size
    assert C.spearman_gaussian_reference(std) == pytest.approx(math.sqrt(3) / 2 * n / math.sqrt(n * n - 1), abs=2e-3)
    assert math.isnan(C.spearman_gaussian_reference(np.full(10, 3.0)))  # constant σ: no ranking to score


def test_a_calibrated_ensemble_scores_its_gaussian_reference():
    """Samples and truth drawn from the same N(μ, σ²) per voxel: the measured Spearman matches the reference."""
    rng = np.random.default_rng(1)
    sigma = np.exp(rng.normal(3.0, 0.8, size=20_000))  # heteroscedastic, like a CT's std map
    mu = rng.normal(0, 100, size=sigma.size)
    samples = mu + sigma * rng.standard_normal((64, sigma.size))
    truth = mu + sigma * rng.standard_normal(sigma.size)
    c = C.case_calibration(samples, truth)
    assert c["spearman_gaussian_reference"] == pytest.approx(c["spearman_std_abs_error"], abs=0.02)
    assert 0.3 < c["spearman_gaussian_reference"] < 0.7  # far from 1 although calibrated by construction


def test_binned_calibration_and_exact_pooling():
    std, err = np.array([1.0, 3.0, 3.0, 600.0]), np.array([1.0, 2.0, 4.0, 0.0])
    b = C.binned(std, err)
    assert b["count"][:3] == [1, 2, 0] and b["count"][-1] == 1 and sum(b["count"]) == 4
    assert b["rms_std_hu"][0] == pytest.approx(1.0) and b["rmse_hu"][0] == pytest.approx(1.0)
    assert b["rms_std_hu"][1] == pytest.approx(3.0) and b["rmse_hu"][1] == pytest.approx(math.sqrt(10))
    assert math.isnan(b["rmse_hu"][2])  # empty bin
    pooled = C.pool_bins([C.binned(std[:2], err[:2]), C.binned(std[2:], err[2:])])
    np.testing.assert_allclose(np.array(pooled["rmse_hu"], float), np.array(b["rmse_hu"], float), equal_nan=True)
    assert pooled["count"] == b["count"]


def test_fit_scale_recovers_the_closed_form():
    """Far above the floor the NLL-optimal s is sqrt(mean(e² / σ²)); errors 3× the std give s ≈ 3."""
    rng = np.random.default_rng(2)
    std = rng.uniform(20, 80, size=50_000)
    err = rng.normal(0, 3 * std)
    s = C.fit_scale(std, err)
    assert s == pytest.approx(math.sqrt(np.mean(err**2 / std**2)), rel=1e-3)
    assert s == pytest.approx(3.0, rel=0.02)


def test_fit_coverage_scale_is_the_hand_computed_conformal_quantile():
    """Scores |e| / (2σ) = 0.25, 0.5, 0.75, 1.25: the 2nd smallest covers half, the 3rd three quarters."""
    std, err = np.array([1.0, 1.0, 2.0, 4.0]), np.array([0.5, -1.0, 3.0, 10.0])
    assert C.fit_coverage_scale(std, err, target=0.5) == pytest.approx(0.5)
    assert C.fit_coverage_scale(std, err, target=0.75) == pytest.approx(0.75)
    assert C.coverage(np.zeros(4), 0.75 * std, err) == 0.75
    # σ = 0: an exact hit is covered at any scale, a miss at none.
    assert C.fit_coverage_scale(np.array([0.0, 0.0, 1.0, 1.0]), np.array([0.0, 5.0, 1.0, 1.0]), target=0.5) == 0.5


def test_fit_coverage_scale_recovers_a_gaussian_and_is_narrower_than_nll_on_heavy_tails():
    rng = np.random.default_rng(4)
    std = rng.uniform(20, 80, size=50_000)
    assert C.fit_coverage_scale(std, rng.normal(0, 3 * std)) == pytest.approx(3.0, rel=0.03)
    err = 3 * std * rng.standard_t(3, size=std.shape)  # heavy tails: the NLL fit chases the outliers
    s_cov, s_nll = C.fit_coverage_scale(std, err), C.fit_scale(std, err)
    assert C.coverage(np.zeros_like(err), s_cov * std, err) == pytest.approx(C.GAUSS_COVERAGE_2SIGMA, abs=1e-4)
    assert s_cov < s_nll and C.coverage(np.zeros_like(err), s_nll * std, err) > C.GAUSS_COVERAGE_2SIGMA + 0.002


def test_fit_coverage_scale_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="miss the truth with zero std"):
        C.fit_coverage_scale(np.array([0.0, 0.0, 1.0, 1.0]), np.array([0.0, 5.0, 1.0, 1.0]), target=0.9)
    with pytest.raises(ValueError, match="target coverage must lie in"):
        C.fit_coverage_scale(np.ones(3), np.ones(3), target=1.0)
    with pytest.raises(ValueError, match="every std is zero"):
        C.fit_coverage_scale(np.zeros(3), np.ones(3))


def test_case_calibration_applies_a_given_scale():
    rng = np.random.default_rng(3)
    samples = rng.normal(0, 10, size=(4, 6, 6, 6))
    truth = rng.normal(0, 30, size=(6, 6, 6))
    raw = C.case_calibration(samples, truth)
    assert "scaled" not in raw and raw["samples"] == 4
    out = C.case_calibration(samples, truth, scale=3.0)
    mean, std = C.ensemble_mean_std(samples)
    assert out["scaled"]["coverage_2sigma"] == pytest.approx(C.coverage(mean, 3 * std, truth))
    assert out["scaled"]["coverage_2sigma"] >= raw["coverage_2sigma"]
    assert out["scaled"]["crps_hu"] == pytest.approx(C.crps_ensemble(mean + 3 * (samples - mean), truth))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="K ≥ 2 samples"):
        C.case_calibration(np.zeros((1, 4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="every std is zero"):
        C.fit_scale(np.zeros(5), np.ones(5))


def test_zero_spread_fraction():
    samples = np.array([[0.0, 1.0, 5.0, 5.0], [0.0, 3.0, 5.0, 6.0]])  # voxels 0 and 2: both samples agree
    assert C.case_calibration(samples, np.zeros(4))["zero_std_fraction"] == 0.5


def test_val_scale_is_reported_on_subset_and_film_rows_too():
    """s is fitted from every view; the subset and film rows get it too (as hvc infer applies it), the every-view row leads."""
    import torch

    from hybrid_vit_cascade.inference import calibration_eval
    from hybrid_vit_cascade.inference.pipeline import StageResult

    class Rec:
        window, is_diffusion = (-1024.0, 1476.0), True

        @staticmethod
        def to_hu(x):
            return ((x.float() + 1) / 2 * 2500 - 1024).numpy()

    g = torch.Generator().manual_seed(0)
    res = StageResult(2, "high", 4, torch.rand(1, 3, 1, 4, 4, 4, generator=g) * 0.2 - 0.1)
    tracker = calibration_eval.CalibrationTracker(Rec(), scale=2.0)
    case: dict = {}
    keys = ("cascade/stage2_high [ap]", "cascade/stage2_high [clinical film, placed]", "cascade/stage2_high")
    for key in keys:
        tracker.add(case, res, torch.zeros(1, 4, 4, 4), key)
    assert all(case["calibration"][k]["scaled"]["scale"] == 2.0 for k in keys)
    cal = tracker.summary()
    assert all("scaled" in cal["by_method"][k] for k in keys)
    line = calibration_eval.console_line(cal)
    assert "\n  cascade/stage2_high [ap]: Spearman" in line and "[clinical film, placed]: Spearman" in line
    assert "% with the same s" in line
    assert calibration_eval.console_line(cal).startswith("calibration (cascade/stage2_high, K=3")

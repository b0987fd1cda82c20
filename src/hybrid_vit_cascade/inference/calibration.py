"""How honest is the uncertainty of K samples? Rank, coverage and proper scores of an ensemble, in HU.

For one case, K sampled volumes x_1..x_K and the truth y (all HU, same shape), with the ensemble
mean μ and the voxel-wise standard deviation σ (ddof = 1, as `StageResult.std`):
- `spearman`: rank correlation of σ and |μ − y| over the voxels — does the map point at the errors?
- `spearman_gaussian_reference`: the Spearman that errors drawn exactly from N(0, σ²) would give with
  this σ map — what a perfectly calibrated Gaussian posterior scores. It is not 1: |error| = σ·|z|
  with z ~ N(0, 1) ranks by σ only as far as σ varies more than |z| does, so the reference is the
  yardstick for `spearman` (above it: errors more concentrated where σ is large than a Gaussian's).
- `coverage`: the fraction of voxels with |y − μ| ≤ k·σ; a calibrated Gaussian gives 95.45 % at k = 2.
- `gaussian_nll`: mean over voxels of −log N(y; μ, σ²) (nats per voxel, density per HU), with σ
  floored at SIGMA_FLOOR_HU: where all K samples agree exactly (σ = 0, e.g. air clipped at the
  window floor) the density is otherwise infinite or zero.
- `crps_ensemble`: the ensemble CRPS E|X − y| − ½ E|X − X'| over the K samples (the CRPS of their
  empirical distribution; Gneiting & Raftery 2007, eq. 21), mean over voxels, HU. Proper, like the NLL,
  but with no σ floor needed; a single sample (or K identical ones) gives the MAE.
- `binned`: voxels grouped by σ (fixed edges CAL_EDGES_HU) → RMS σ and RMSE per bin; a calibrated
  map puts the bins on the identity line (Levi et al. 2019, "Evaluating and calibrating uncertainty
  prediction in regression tasks"). Fixed edges let cases pool exactly (`pool_bins`).
- `fit_coverage_scale`: one factor s for σ such that mean ± k·s·σ holds the truth in a target share
  (95.45 % at k = 2) of given (σ, error) voxels — split-conformal calibration (Vovk et al. 2005;
  Angelopoulos & Bates 2021, "A gentle introduction to conformal prediction", §1): fitted on the
  validation split, then applied unchanged to the evaluated cases, whose coverage it then targets
  whatever the errors' shape. `fit_scale`: the factor minimising the Gaussian NLL instead — reported
  beside it; with heavy-tailed errors it widens the interval beyond the nominal coverage.
Pure numpy; float64 throughout.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

# A CT stores whole HU, so a claimed spread below 1 HU is below what the truth itself resolves.
SIGMA_FLOOR_HU = 1.0
COVERAGE_K = 2.0  # the interval mean ± k·std whose coverage is reported
GAUSS_COVERAGE_2SIGMA = math.erf(2 / math.sqrt(2))  # 0.9545: what a calibrated Gaussian σ gives at k = 2
# σ bin edges (HU) of the calibration plot: octaves from the floor up to a wrong-tissue spread.
CAL_EDGES_HU = (0.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, math.inf)
SCALE_RANGE = (1 / 64, 64.0)  # search interval of the fitted std scale
REFERENCE_DRAWS = 4  # draws of z averaged in the Gaussian reference Spearman (seeded: reproducible)


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def ensemble_mean_std(samples) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (ddof = 1) over the first axis of K ≥ 2 samples (K, ...)."""
    x = _f64(samples)
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"calibration needs K ≥ 2 samples stacked on the first axis, got shape {x.shape}")
    return x.mean(axis=0), x.std(axis=0, ddof=1)


def _ranks(a: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(a.ravel(), method="average")


def spearman(std, abs_error) -> float:
    """Spearman rank correlation of two same-shaped arrays (ties: average ranks); NaN if either is constant."""
    a, b = _f64(std), _f64(abs_error)
    if a.shape != b.shape:
        raise ValueError(f"std shape {a.shape} != error shape {b.shape}")
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def spearman_gaussian_reference(std, draws: int = REFERENCE_DRAWS, seed: int = 0) -> float:
    """Mean over `draws` of spearman(σ, σ·|z|), z ~ N(0, 1) per voxel: a calibrated Gaussian's score; NaN for constant σ."""
    s = _f64(std)
    if s.size < 2 or np.ptp(s) == 0:
        return math.nan
    rng = np.random.default_rng(seed)
    return float(np.mean([spearman(s, s * np.abs(rng.standard_normal(s.shape))) for _ in range(draws)]))


def coverage(mean, std, truth, k: float = COVERAGE_K) -> float:
    """Fraction of voxels whose truth lies inside mean ± k·std (a zero-width interval covers an exact hit)."""
    return float((np.abs(_f64(truth) - _f64(mean)) <= k * _f64(std)).mean())


def gaussian_nll(mean, std, truth, floor: float = SIGMA_FLOOR_HU) -> float:
    """Mean over voxels of −log N(truth; mean, max(std, floor)²), nats per voxel (density per HU)."""
    s = np.maximum(_f64(std), floor)
    z = (_f64(truth) - _f64(mean)) / s
    return float(np.mean(0.5 * math.log(2 * math.pi) + np.log(s) + 0.5 * z * z))


def crps_ensemble(samples, truth) -> float:
    """Ensemble CRPS over the first axis (K, ...) vs truth (...), mean over voxels: E|X−y| − ½E|X−X'|."""
    x = np.sort(_f64(samples), axis=0)
    y = _f64(truth)
    if x.shape[1:] != y.shape:
        raise ValueError(f"samples {x.shape} do not stack volumes shaped like the truth {y.shape}")
    K = x.shape[0]
    term1 = np.abs(x - y).mean(axis=0)
    # Σ_i Σ_j |x_i − x_j| = 2 Σ_i (2i − K + 1) x_(i) over the sorted samples (i = 0..K−1): O(K log K), not K².
    w = (2 * np.arange(K) - K + 1).reshape((K,) + (1,) * y.ndim)
    half_spread = (w * x).sum(axis=0) / K**2  # ½ E|X − X'|
    return float((term1 - half_spread).mean())


def binned(std, abs_error, edges: Sequence[float] = CAL_EDGES_HU) -> dict[str, list]:
    """Voxels grouped by std into [edges[i], edges[i+1]): count, RMS std and RMSE per bin (NaN if empty)."""
    s, e = _f64(std).ravel(), _f64(abs_error).ravel()
    idx = np.clip(np.searchsorted(np.asarray(edges[1:-1]), s, side="right"), 0, len(edges) - 2)
    n = len(edges) - 1
    count = np.bincount(idx, minlength=n)
    var = np.bincount(idx, weights=s * s, minlength=n)
    sq = np.bincount(idx, weights=e * e, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"edges_hu": list(edges), "count": count.tolist(),
                "rms_std_hu": np.sqrt(var / count).tolist(), "rmse_hu": np.sqrt(sq / count).tolist()}


def pool_bins(many: Sequence[dict[str, list]]) -> dict[str, list]:
    """Several `binned` results with the same edges → one, exactly as if all voxels were binned together."""
    if not many:
        raise ValueError("no binned calibration to pool")
    edges = many[0]["edges_hu"]
    if any(list(b["edges_hu"]) != list(edges) for b in many):
        raise ValueError("binned calibrations with different std edges cannot be pooled")
    count = np.sum([b["count"] for b in many], axis=0)
    # An empty bin's NaN contributes 0 (its count is 0).
    var = np.sum([np.nan_to_num(np.square(b["rms_std_hu"])) * b["count"] for b in many], axis=0)
    sq = np.sum([np.nan_to_num(np.square(b["rmse_hu"])) * b["count"] for b in many], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"edges_hu": list(edges), "count": count.astype(int).tolist(),
                "rms_std_hu": np.sqrt(var / count).tolist(), "rmse_hu": np.sqrt(sq / count).tolist()}


def _nll_of_scale(std: np.ndarray, err: np.ndarray, s: float, floor: float) -> float:
    sig = np.maximum(s * std, floor)
    z = err / sig
    return float(np.mean(np.log(sig) + 0.5 * z * z)) + 0.5 * math.log(2 * math.pi)


def fit_scale(std, error, floor: float = SIGMA_FLOOR_HU) -> float:
    """The factor s minimising the Gaussian NLL of `error` under N(0, max(s·std, floor)²) over all voxels.

    A grid over log s (eighth-octave steps inside SCALE_RANGE) finds the basin — the floor can make the
    NLL non-convex in s — then a bounded Brent search refines it within one grid step.
    """
    from scipy.optimize import minimize_scalar

    s, e = _f64(std).ravel(), _f64(error).ravel()
    if s.shape != e.shape or s.size == 0:
        raise ValueError(f"std and error must be non-empty and of one shape, got {s.shape} and {e.shape}")
    if not (s > 0).any():
        raise ValueError("every std is zero: no spread to scale")
    lo, hi = (math.log2(v) for v in SCALE_RANGE)
    grid = np.arange(lo, hi + 1e-9, 0.125)
    vals = [_nll_of_scale(s, e, 2.0**g, floor) for g in grid]
    g0 = grid[int(np.argmin(vals))]
    res = minimize_scalar(lambda g: _nll_of_scale(s, e, 2.0**g, floor),
                          bounds=(max(lo, g0 - 0.125), min(hi, g0 + 0.125)), method="bounded",
                          options={"xatol": 1e-4})
    return float(2.0 ** res.x)


def fit_coverage_scale(std, error, k: float = COVERAGE_K, target: float = GAUSS_COVERAGE_2SIGMA) -> float:
    """The smallest factor s with |error| ≤ k·s·std in at least `target` of the voxels (split-conformal)."""
    s, e = _f64(std).ravel(), np.abs(_f64(error).ravel())
    if s.shape != e.shape or s.size == 0:
        raise ValueError(f"std and error must be non-empty and of one shape, got {s.shape} and {e.shape}")
    if not 0 < target < 1:
        raise ValueError(f"target coverage must lie in (0, 1), got {target}")
    if not (s > 0).any():
        raise ValueError("every std is zero: no spread to scale")
    # 1. Each voxel's conformity score: the s at which its interval starts to hold the truth
    #    (an exact hit with σ = 0 is covered at any s; a miss with σ = 0 at none).
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(e == 0, 0.0, e / (k * s))
    # 2. The ⌈target·n⌉-th smallest score: the fewest voxels' intervals widened to reach the target.
    i = math.ceil(target * r.size) - 1
    q = float(np.partition(r, i)[i])
    if not math.isfinite(q):
        raise ValueError(f"more than {100 * (1 - target):.2f} % of the voxels miss the truth with zero std: "
                         "no scale reaches the target coverage")
    return q


def case_calibration(samples_hu, truth_hu, scale: Optional[float] = None) -> dict:
    """Every calibration number of one case: K samples (K, ...) and the truth (...), HU.

    With `scale` (fitted elsewhere, e.g. on the validation split) the coverage, NLL and CRPS are
    also given for std × scale (`scaled`): the samples spread about their mean by that factor.
    """
    x = _f64(samples_hu)
    y = _f64(truth_hu)
    mean, std = ensemble_mean_std(x)
    if mean.shape != y.shape:
        raise ValueError(f"samples {x.shape} do not stack volumes shaped like the truth {y.shape}")
    err = np.abs(mean - y)
    out = {"samples": int(x.shape[0]), "spearman_std_abs_error": spearman(std, err),
           "spearman_gaussian_reference": spearman_gaussian_reference(std),
           "coverage_2sigma": coverage(mean, std, y), "nll": gaussian_nll(mean, std, y),
           "crps_hu": crps_ensemble(x, y), "std_hu_mean": float(std.mean()), "abs_error_hu_mean": float(err.mean()),
           # all K samples identical (typically clamped at a window edge): no interval, σ floored in the NLL
           "zero_std_fraction": float((std == 0).mean()), "bins": binned(std, err)}
    if scale is not None:
        out["scaled"] = {"scale": float(scale), "coverage_2sigma": coverage(mean, scale * std, y),
                         "nll": gaussian_nll(mean, scale * std, y),
                         "crps_hu": crps_ensemble(mean + scale * (x - mean), y)}
    return out

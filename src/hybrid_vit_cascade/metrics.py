"""Reconstruction metrics: PSNR/SSIM-3D, HU errors, per-slice PSNR, DRR consistency, X2CT-GAN protocol.

Conventions (the public attempt got these wrong, so they are spelled out):
- Volumes come in **HU**. PSNR-3D, SSIM-3D and the per-slice PSNR are computed on the HU window
  mapped to [0, 1] (`(clip(HU, lo, hi) - lo) / (hi - lo)`) with **data range 1**, never on [-1, 1].
- MAE / RMSE are in HU, on both volumes clipped to the same window (the model cannot represent
  values outside it, and the prepared ground truth is stored clipped).
- PSNR is `10 log10(range² / MSE)` of one volume (or one slice); averages are taken over PSNR
  values (dB), never the log of an averaged MSE across cases.
- Identical inputs give PSNR = +inf. Per-slice PSNR averages exclude identical slices (e.g. all-air
  border slices: both clipped to the window floor) and report how many were excluded; if all slices
  are identical the average is +inf. `summarize` averages finite values and counts infinities.
- X2CT-GAN numbers (Ying et al., CVPR 2019) follow their released evaluation code, see `x2ct_metrics`.
All computations run in float64 on CPU.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hybrid_vit_cascade.slices import AXIS_NAMES  # per-axis metrics are named by slice plane

ArrayLike = np.ndarray | torch.Tensor

SSIM_WINDOW = 11  # voxels per edge of ssim3d's Gaussian window (σ = 1.5: Wang et al. 2004, scikit-image)
X2CT_SSIM_WINDOW = 7  # pixels per edge of the X2CT-GAN protocol's uniform 2-D window
# The smallest cube edge every volume metric here can score. Validation and evaluation score each
# stage at its own size, so config.py refuses smaller stages at load time (not at the first validation).
MIN_VOLUME_EDGE = max(SSIM_WINDOW, X2CT_SSIM_WINDOW)


def _as64(a: ArrayLike) -> torch.Tensor:
    """Any array/tensor -> float64 CPU tensor (no grad)."""
    if isinstance(a, torch.Tensor):
        return a.detach().to(device="cpu", dtype=torch.float64)
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


def _check_pair(pred: torch.Tensor, target: torch.Tensor, ndim: int | None = None) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if ndim is not None and pred.ndim != ndim:
        raise ValueError(f"expected {ndim}-D arrays, got shape {tuple(pred.shape)}")
    for name, a in (("prediction", pred), ("target", target)):
        if not torch.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or Inf values")


def hu_to_unit01(hu: ArrayLike, window: tuple[float, float]) -> torch.Tensor:
    """HU -> [0, 1] over the window (clipped); float64."""
    lo, hi = float(window[0]), float(window[1])
    return (_as64(hu).clamp(lo, hi) - lo) / (hi - lo)


def psnr(pred: ArrayLike, target: ArrayLike, data_range: float = 1.0) -> float:
    """PSNR in dB over all elements; +inf when identical."""
    p, t = _as64(pred), _as64(target)
    _check_pair(p, t)
    mse = float(((p - t) ** 2).mean())
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def _gauss1d(sigma: float, radius: int) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _filter_valid(x: torch.Tensor, kernels: Sequence[torch.Tensor]) -> torch.Tensor:
    """Separable 'valid' correlation of (N, 1, *spatial) with one 1-D kernel per spatial axis."""
    nd = x.ndim - 2
    conv = F.conv3d if nd == 3 else F.conv2d
    for axis, k in enumerate(kernels):
        shape = [1, 1] + [1] * nd
        shape[2 + axis] = k.numel()
        x = conv(x, k.reshape(shape))
    return x


def _ssim_map(x: torch.Tensor, y: torch.Tensor, kernels, data_range: float, k1: float, k2: float,
              cov_norm: float) -> torch.Tensor:
    """SSIM map (Wang et al. 2004) of (N, 1, *spatial) inputs over the valid region."""
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    # Filter the five moments in one batch: (5N, 1, *spatial)
    n = x.shape[0]
    stats = _filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=0), kernels)
    ux, uy, uxx, uyy, uxy = stats.split(n, dim=0)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))


def ssim3d(pred: ArrayLike, target: ArrayLike, data_range: float = 1.0, sigma: float = 1.5,
           win_size: int = SSIM_WINDOW, k1: float = 0.01, k2: float = 0.03) -> float:
    """3-D SSIM with a Gaussian window (σ=1.5, 11³), population covariance, mean over the valid region.

    Equals scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)`: its border crop of (win−1)/2 voxels leaves exactly the voxels whose
    window lies inside the volume, which is what the 'valid' convolution computes.
    """
    p, t = _as64(pred), _as64(target)
    _check_pair(p, t, ndim=3)
    if min(p.shape) < win_size:
        raise ValueError(f"volume {tuple(p.shape)} is smaller than the SSIM window {win_size}")
    g = _gauss1d(sigma, (win_size - 1) // 2)
    s = _ssim_map(p[None, None], t[None, None], [g, g, g], data_range, k1, k2, cov_norm=1.0)
    return float(s.mean())


def mae_hu(pred_hu: ArrayLike, target_hu: ArrayLike, window: tuple[float, float]) -> float:
    """Mean absolute error in HU, both volumes clipped to the window."""
    p, t = _as64(pred_hu), _as64(target_hu)
    _check_pair(p, t)
    lo, hi = window
    return float((p.clamp(lo, hi) - t.clamp(lo, hi)).abs().mean())


def rmse_hu(pred_hu: ArrayLike, target_hu: ArrayLike, window: tuple[float, float]) -> float:
    """Root-mean-square error in HU, both volumes clipped to the window."""
    p, t = _as64(pred_hu), _as64(target_hu)
    _check_pair(p, t)
    lo, hi = window
    return float(((p.clamp(lo, hi) - t.clamp(lo, hi)) ** 2).mean().sqrt())


def _slice_mse(p: torch.Tensor, t: torch.Tensor, axis: int) -> torch.Tensor:
    """MSE of every slice taken along `axis` of a 3-D pair: (n_slices,)."""
    other = tuple(a for a in range(3) if a != axis)
    return ((p - t) ** 2).mean(dim=other)


def slice_psnr(pred01: ArrayLike, target01: ArrayLike, data_range: float = 1.0) -> dict[str, float]:
    """2-D PSNR of each slice, averaged over the slices of each axis, and over the three axes.

    Identical slices (PSNR = inf) are left out of the average; `slices_identical` counts them.
    """
    p, t = _as64(pred01), _as64(target01)
    _check_pair(p, t, ndim=3)
    out: dict[str, float] = {}
    n_identical = 0
    for axis, name in enumerate(AXIS_NAMES):
        mse = _slice_mse(p, t, axis)
        finite = mse > 0
        n_identical += int((~finite).sum())
        if finite.any():
            out[name] = float((10.0 * torch.log10(data_range**2 / mse[finite])).mean())
        else:
            out[name] = math.inf
    out["mean"] = float(np.mean([out[n] for n in AXIS_NAMES]))
    out["slices_identical"] = n_identical
    return out


def drr_psnr(pred_xray: ArrayLike, input_xray: ArrayLike) -> list[float]:
    """DRR consistency: PSNR per view of normalised X-rays in [-1, 1], mapped to [0, 1], data range 1.

    Inputs are (V, H, W). No clipping: a reprojection brighter than the dataset's li_max is an error
    the score should see.
    """
    p, t = _as64(pred_xray), _as64(input_xray)
    _check_pair(p, t, ndim=3)
    return [psnr((p[v] + 1) / 2, (t[v] + 1) / 2, data_range=1.0) for v in range(p.shape[0])]


# ---------------------------------------------------------------------------------------------
# X2CT-GAN protocol (kylekma/X2CT, 3DGAN/test.py + 3DGAN/lib/utils/metrics_np.py):
#   - CT values are HU + 1024 clipped to CT_MIN_MAX = [0, 2500] and normalised by 2500 to [0, 1];
#   - SSIM (`Structural_Similarity`) on that [0, 1] volume with PIXEL_MAX = 1.0 through skimage's
#     compare_ssim(multichannel=True) with its defaults (7×7 uniform window, sample covariance,
#     K1=0.01, K2=0.03), i.e. the mean 2-D SSIM over slices, once for each of the three axes, and the
#     average of the three;
#   - the [0, 1] volume is mapped back to [0, 2500] and cast with `.astype(np.int32)` (truncation);
#     PSNR-3D (`Peak_Signal_to_Noise_Rate_3D`) = 20 log10(4095 / sqrt(MSE over the volume)), and the
#     2-D PSNR (`Peak_Signal_to_Noise_Rate`) = mean over slices of 20 log10(4095 / sqrt(slice MSE)),
#     per axis and averaged; a zero MSE scores 100 dB there (their convention, kept).
#   Their PIXEL_MAX = 4095 exceeds the 2500 data range, which inflates PSNR by 20 log10(4095/2500)
#   ≈ 4.3 dB relative to a range-correct PSNR; that is why these are reported separately and labelled.
# ---------------------------------------------------------------------------------------------
X2CT_MIN_MAX = (0.0, 2500.0)
X2CT_PIXEL_MAX = 4095.0
X2CT_ZERO_MSE_PSNR = 100.0


def _x2ct_psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    safe = torch.where(mse == 0, torch.ones_like(mse), mse)
    val = 20.0 * torch.log10(X2CT_PIXEL_MAX / safe.sqrt())
    return torch.where(mse == 0, torch.full_like(mse, X2CT_ZERO_MSE_PSNR), val)


def x2ct_ssim_slices(a01: torch.Tensor, b01: torch.Tensor, axis: int) -> float:
    """Mean 2-D SSIM over the slices along `axis` (7×7 uniform window, sample covariance, range 1)."""
    # Move the slice axis first: (S, 1, h, w)
    x = a01.movedim(axis, 0)[:, None]
    y = b01.movedim(axis, 0)[:, None]
    win = X2CT_SSIM_WINDOW
    if min(x.shape[-2:]) < win:
        raise ValueError(f"slices {tuple(x.shape[-2:])} are smaller than the 7×7 SSIM window")
    box = torch.full((win,), 1.0 / win, dtype=torch.float64)
    npix = win * win
    s = _ssim_map(x, y, [box, box], 1.0, 0.01, 0.03, cov_norm=npix / (npix - 1))
    return float(s.mean(dim=(1, 2, 3)).mean())


def x2ct_metrics(pred_hu: ArrayLike, target_hu: ArrayLike) -> dict[str, float]:
    """The X2CT-GAN evaluation numbers of one case (HU+1024 clipped to [0, 2500]; see the comment above)."""
    p, t = _as64(pred_hu), _as64(target_hu)
    _check_pair(p, t, ndim=3)
    lo, hi = X2CT_MIN_MAX
    p01 = ((p + 1024.0).clamp(lo, hi) - lo) / (hi - lo)
    t01 = ((t + 1024.0).clamp(lo, hi) - lo) / (hi - lo)
    out: dict[str, float] = {}
    for axis, name in enumerate(AXIS_NAMES):
        out[f"x2ct_ssim_{name}"] = x2ct_ssim_slices(t01, p01, axis)
    out["x2ct_ssim_avg"] = float(np.mean([out[f"x2ct_ssim_{n}"] for n in AXIS_NAMES]))
    # Back to [0, 2500] and truncated to integers, as their test.py does before PSNR/MAE/MSE.
    pi = torch.trunc(p01 * (hi - lo) + lo)
    ti = torch.trunc(t01 * (hi - lo) + lo)
    se = (pi - ti) ** 2
    out["x2ct_psnr_3d"] = float(_x2ct_psnr_from_mse(se.mean()))
    for axis, name in enumerate(AXIS_NAMES):
        out[f"x2ct_psnr_{name}"] = float(_x2ct_psnr_from_mse(_slice_mse(pi, ti, axis)).mean())
    out["x2ct_psnr_avg"] = float(np.mean([out[f"x2ct_psnr_{n}"] for n in AXIS_NAMES]))
    out["x2ct_mae"] = float((pi - ti).abs().mean())  # in their [0, 2500] integer units (= HU)
    return out


def volume_metrics(pred_hu: ArrayLike, target_hu: ArrayLike, window: tuple[float, float],
                   x2ct: bool = True) -> dict[str, float]:
    """Every volume metric of one case as a flat dict (see the module docstring for conventions)."""
    p01, t01 = hu_to_unit01(pred_hu, window), hu_to_unit01(target_hu, window)
    out: dict[str, float] = {
        "psnr3d": psnr(p01, t01, data_range=1.0),
        "ssim3d": ssim3d(p01, t01, data_range=1.0),
        "mae_hu": mae_hu(pred_hu, target_hu, window),
        "rmse_hu": rmse_hu(pred_hu, target_hu, window),
    }
    sl = slice_psnr(p01, t01)
    for name in AXIS_NAMES:
        out[f"psnr2d_{name}"] = sl[name]
    out["psnr2d_mean"] = sl["mean"]
    if x2ct:
        out.update(x2ct_metrics(pred_hu, target_hu))
    return out


def summarize(values: Iterable[float]) -> dict[str, float]:
    """Mean and (population) std over cases of one metric; infinities are counted, not averaged."""
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    return {
        "mean": float(finite.mean()) if finite.size else (math.inf if arr.size else math.nan),
        "std": float(finite.std()) if finite.size else math.nan,
        "n": int(arr.size),
        "n_inf": int(np.isinf(arr).sum()),
    }


def summarize_cases(cases: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per-metric `summarize` over a list of per-case metric dicts (keys taken from the first case)."""
    if not cases:
        return {}
    keys = [k for k, v in cases[0].items() if isinstance(v, (int, float))]
    return {k: summarize(c[k] for c in cases if k in c) for k in keys}

"""Metrics against reference implementations (scikit-image, MONAI) on random and structured volumes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from hybrid_vit_cascade import metrics as M

WINDOW = (-1024.0, 1476.0)


def _blob_volume(n: int, seed: int) -> np.ndarray:
    """A phantom-like HU volume: air, a soft-tissue ellipsoid body, lungs, a bright spine."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij")
    hu = np.full((n, n, n), -1000.0)
    hu[(x / 0.8) ** 2 + (y / 0.6) ** 2 + (z / 0.9) ** 2 < 1] = 40.0
    for cx in (-0.35, 0.35):
        hu[((x - cx) / 0.25) ** 2 + (y / 0.35) ** 2 + (z / 0.6) ** 2 < 1] = -800.0
    hu[(x / 0.1) ** 2 + ((y + 0.4) / 0.1) ** 2 < 1] = 1200.0
    return hu + rng.normal(0, 10, hu.shape)


def _pair(kind: str, n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "random":
        t = rng.uniform(-1100, 1600, (n, n, n))  # exceeds the window on both sides: clipping matters
        p = t + rng.normal(0, 200, t.shape)
    else:
        t = _blob_volume(n, seed)
        p = _blob_volume(n, seed + 1) + rng.normal(0, 60, t.shape)
    return p, t


def _unit(hu: np.ndarray) -> np.ndarray:
    lo, hi = WINDOW
    return (np.clip(hu, lo, hi) - lo) / (hi - lo)


@pytest.mark.parametrize("kind", ["random", "blob"])
def test_psnr3d_matches_skimage_and_monai(kind):
    p, t = _pair(kind)
    ours = M.volume_metrics(p, t, WINDOW, x2ct=False)["psnr3d"]
    ref = peak_signal_noise_ratio(_unit(t), _unit(p), data_range=1.0)
    assert ours == pytest.approx(ref, abs=1e-9)
    from monai.metrics import PSNRMetric

    mon = PSNRMetric(max_val=1.0)(torch.as_tensor(_unit(p))[None, None], torch.as_tensor(_unit(t))[None, None])
    assert ours == pytest.approx(float(mon), abs=1e-6)


@pytest.mark.parametrize("kind", ["random", "blob"])
def test_ssim3d_matches_skimage_gaussian_3d(kind):
    p, t = _pair(kind, n=18)
    ours = M.ssim3d(_unit(p), _unit(t), data_range=1.0)
    ref = structural_similarity(_unit(t), _unit(p), data_range=1.0, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert ours == pytest.approx(ref, abs=1e-10)


def test_data_range_is_respected():
    """The public attempt scored [-1, 1] volumes with range 1; here the range enters as 20·log10(range)."""
    p, t = _pair("blob")
    u_p, u_t = _unit(p), _unit(t)
    on01 = M.psnr(u_p, u_t, data_range=1.0)
    # The same data on [-1, 1] has 4× the MSE; scored with the correct range 2 PSNR is unchanged ...
    assert M.psnr(2 * u_p - 1, 2 * u_t - 1, data_range=2.0) == pytest.approx(on01, abs=1e-9)
    # ... and with the wrong range 1 it drops by exactly 20·log10(2) ≈ 6.02 dB.
    assert on01 - M.psnr(2 * u_p - 1, 2 * u_t - 1, data_range=1.0) == pytest.approx(20 * math.log10(2), abs=1e-9)
    # SSIM's constants scale with the range: the same images on [0, 255] with range 255 score the same.
    assert M.ssim3d(255 * u_p, 255 * u_t, data_range=255.0) == pytest.approx(M.ssim3d(u_p, u_t), abs=1e-10)
    # ... while [0, 1] data scored with a too-large range has its SSIM pushed toward 1.
    rp, rt = _pair("random")
    right, wrong = M.ssim3d(_unit(rp), _unit(rt)), M.ssim3d(_unit(rp), _unit(rt), data_range=255.0)
    assert right < 0.98 and wrong > 0.9995


def test_psnr_is_per_volume_not_log_of_batch_mean():
    """Average PSNR over cases is the mean of per-case dB values (not PSNR of the pooled MSE)."""
    p1, t1 = _pair("blob", seed=0)
    p2, t2 = _pair("random", seed=1)
    cases = [M.volume_metrics(p1, t1, WINDOW, x2ct=False), M.volume_metrics(p2, t2, WINDOW, x2ct=False)]
    s = M.summarize_cases(cases)["psnr3d"]
    per_case = [peak_signal_noise_ratio(_unit(t), _unit(p), data_range=1.0) for p, t in ((p1, t1), (p2, t2))]
    assert s["mean"] == pytest.approx(np.mean(per_case), abs=1e-9)
    assert s["std"] == pytest.approx(np.std(per_case), abs=1e-9)
    pooled = 10 * math.log10(1 / np.mean([np.mean((_unit(p) - _unit(t)) ** 2) for p, t in ((p1, t1), (p2, t2))]))
    assert abs(s["mean"] - pooled) > 0.1


def test_mae_rmse_in_hu_within_window():
    t = np.zeros((16, 16, 16))
    p = t.copy()
    p[:8] = 100.0  # half the voxels off by 100 HU
    p[0, 0, 0] = 5000.0  # beyond the window: clipped to 1476 first
    n = t.size
    expected_abs = (100.0 * (8 * 256 - 1) + 1476.0) / n
    assert M.mae_hu(p, t, WINDOW) == pytest.approx(expected_abs)
    assert M.rmse_hu(p, t, WINDOW) == pytest.approx(math.sqrt((100.0**2 * (8 * 256 - 1) + 1476.0**2) / n))


@pytest.mark.parametrize("kind", ["random", "blob"])
def test_slice_psnr_matches_skimage_per_slice(kind):
    p, t = _pair(kind, n=16)
    ours = M.slice_psnr(_unit(p), _unit(t))
    for axis, name in enumerate(M.AXIS_NAMES):
        ref = np.mean([peak_signal_noise_ratio(np.take(_unit(t), i, axis), np.take(_unit(p), i, axis), data_range=1.0)
                       for i in range(16)])
        assert ours[name] == pytest.approx(ref, abs=1e-9)
    assert ours["mean"] == pytest.approx(np.mean([ours[n] for n in M.AXIS_NAMES]))
    assert ours["slices_identical"] == 0


def test_identical_volumes_and_slices():
    p, t = _pair("blob", n=16)
    m = M.volume_metrics(t, t, WINDOW)
    assert m["psnr3d"] == math.inf
    assert m["ssim3d"] == pytest.approx(1.0, abs=1e-12)
    assert m["mae_hu"] == 0 and m["rmse_hu"] == 0
    assert m["psnr2d_mean"] == math.inf
    assert m["x2ct_psnr_3d"] == M.X2CT_ZERO_MSE_PSNR and m["x2ct_ssim_avg"] == pytest.approx(1.0)
    # Identical border slices are left out of the slice average and counted.
    q = p.copy()
    q[0] = t[0]
    sl = M.slice_psnr(_unit(q), _unit(t))
    ref = np.mean([peak_signal_noise_ratio(_unit(t)[i], _unit(q)[i], data_range=1.0) for i in range(1, 16)])
    assert sl["sagittal"] == pytest.approx(ref, abs=1e-9)
    assert sl["slices_identical"] == 1
    s = M.summarize([30.0, math.inf, 32.0])
    assert s == {"mean": 31.0, "std": 1.0, "n": 3, "n_inf": 1}


def test_drr_psnr_maps_minus1_1_to_unit_range():
    rng = np.random.default_rng(3)
    t = rng.uniform(-1, 1, (2, 16, 16))
    p = np.clip(t + rng.normal(0, 0.05, t.shape), -1, 1)
    ours = M.drr_psnr(p, t)
    for v in range(2):
        assert ours[v] == pytest.approx(peak_signal_noise_ratio((t[v] + 1) / 2, (p[v] + 1) / 2, data_range=1.0))


@pytest.mark.parametrize("kind", ["random", "blob"])
def test_x2ct_protocol_matches_reference(kind):
    """Reimplements their metrics_np.py recipe with skimage (the library their code calls)."""
    p, t = _pair(kind, n=16)
    ours = M.x2ct_metrics(p, t)
    p01 = np.clip(p + 1024, 0, 2500) / 2500
    t01 = np.clip(t + 1024, 0, 2500) / 2500
    ssims = []
    for axis, name in enumerate(M.AXIS_NAMES):
        # compare_ssim(multichannel=True) == channel-wise mean, default 7×7 uniform, sample covariance.
        ref = structural_similarity(np.moveaxis(t01, axis, -1), np.moveaxis(p01, axis, -1), data_range=1.0,
                                    channel_axis=-1)
        assert ours[f"x2ct_ssim_{name}"] == pytest.approx(ref, abs=1e-10)
        ssims.append(ref)
    assert ours["x2ct_ssim_avg"] == pytest.approx(np.mean(ssims))
    pi = (p01 * 2500).astype(np.int32).astype(np.float64)
    ti = (t01 * 2500).astype(np.int32).astype(np.float64)
    assert ours["x2ct_psnr_3d"] == pytest.approx(peak_signal_noise_ratio(ti, pi, data_range=4095), abs=1e-9)
    for axis, name in enumerate(M.AXIS_NAMES):
        ref = np.mean([peak_signal_noise_ratio(np.take(ti, i, axis), np.take(pi, i, axis), data_range=4095)
                       for i in range(16)])
        assert ours[f"x2ct_psnr_{name}"] == pytest.approx(ref, abs=1e-9)


def test_bad_inputs_raise():
    a = np.zeros((16, 16, 16))
    with pytest.raises(ValueError, match="shape"):
        M.psnr(a, np.zeros((16, 16, 15)))
    b = a.copy()
    b[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        M.volume_metrics(b, a, WINDOW)
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        M.ssim3d(np.zeros((8, 8, 8)), np.zeros((8, 8, 8)))

"""Is a finite RAS+ HU volume plausibly a body CT? One-line reasons, checked once per CT in `read_ct`."""
from __future__ import annotations

import numpy as np

# Plausibility bounds of a body CT (every CT passes them once, in read_ct). Generous on purpose:
# the project's own phantoms at 8³ have ~54 mm voxels, thin slabs and other body parts must pass.
MIN_VOXELS_PER_AXIS = 8
SPACING_RANGE_MM = (0.05, 80.0)  # finer is a micro-CT / unit mix-up, coarser cannot resolve a body
MIN_EXTENT_MM = 40.0  # every axis: a scan of any body part spans more than 4 cm
HU_LIMITS = (-32768.0, 32767.0)  # beyond int16: no scanner (even an extended HU scale) stores it
DENSE_HU, MAX_DENSE_FRACTION = 4000.0, 0.02  # denser than cortical bone: metal only, never 2% of a scan
MIN_HU_RANGE = 100.0  # any body CT spans air or lung to soft tissue (~1000 HU); μ or [-1, 1] data span ~1
MIN_BODY_FRACTION = 0.005  # voxels above preprocessing.BODY_THRESHOLD_HU: less is an (almost) empty scan


def _spacing_problem(sp: np.ndarray) -> str | None:
    lo, hi = SPACING_RANGE_MM
    if not np.all((sp >= lo) & (sp <= hi)):
        return (f"implausible voxel spacing {' × '.join(f'{s:g}' for s in sp)} mm (expected {lo:g}–{hi:g} mm "
                "per axis; check the header's voxel size units)")
    return None


def implausible_ct(hu: np.ndarray, spacing: tuple[float, float, float]) -> str | None:
    """Why a finite RAS+ HU volume cannot be a body CT (one line), or None if it is plausible."""
    from .preprocessing import BODY_THRESHOLD_HU  # imported here: preprocessing imports data.io, which imports this

    shape, sp = hu.shape, np.asarray(spacing, dtype=float)
    dims = " × ".join(str(n) for n in shape)
    if min(shape) < MIN_VOXELS_PER_AXIS:
        return f"degenerate volume of {dims} voxels: a CT needs at least {MIN_VOXELS_PER_AXIS} voxels along every axis"
    reason = _spacing_problem(sp)
    if reason:
        return reason
    extent = sp * np.array(shape)
    if extent.min() < MIN_EXTENT_MM:
        return (f"the scan spans only {' × '.join(f'{e:.3g}' for e in extent)} mm; a body CT spans at least "
                f"{MIN_EXTENT_MM:g} mm along every axis")
    vmin, vmax = float(hu.min()), float(hu.max())
    if vmax == vmin:
        return f"constant volume (every voxel {vmin:g}): no image"
    if vmax - vmin < MIN_HU_RANGE:
        return (f"values span only {vmin:.4g} to {vmax:.4g}: not Hounsfield units (air −1000, water 0, bone "
                "≥ 300); attenuation coefficients or normalised intensities? give the CT in HU")
    if vmin < HU_LIMITS[0] or vmax > HU_LIMITS[1]:
        return (f"values {vmin:.4g} to {vmax:.4g} are not Hounsfield units (expected within "
                f"{HU_LIMITS[0]:g}..{HU_LIMITS[1]:g}, air −1000, water 0)")
    if vmin >= 0.0:
        return (f"no voxel below 0 (minimum {vmin:g}) although air is −1000 HU: these look like raw stored values "
                "without the rescale to HU (air ≈ 0, water ≈ 1000); apply the rescale slope/intercept")
    dense = float(np.count_nonzero(hu > DENSE_HU)) / hu.size
    if dense > MAX_DENSE_FRACTION:
        return (f"{dense:.0%} of voxels above {DENSE_HU:g} HU (denser than bone; only metal is): "
                "not Hounsfield units, or a wrong rescale slope")
    body = float(np.count_nonzero(hu > BODY_THRESHOLD_HU)) / hu.size
    if body < MIN_BODY_FRACTION:
        return (f"no body: only {body:.2%} of voxels above {BODY_THRESHOLD_HU:g} HU (at least "
                f"{MIN_BODY_FRACTION:.1%} expected); the scan is (almost) all air")
    return None

"""Write reconstructed canonical cubes as NIfTI in HU that open correctly in 3D Slicer / ITK-SNAP.

A canonical cube (DESIGN.md) has array axes = RAS+ axes, isotropic voxels of `fov_mm / res` mm,
centred on the isocentre. The affine carries exactly that; qform (code 1, scanner) and sform
(code 2, aligned) are both set to it so every reader (nibabel, ITK, Slicer, ITK-SNAP, FSL) agrees,
and the units are mm. ITK-based tools report the same geometry in LPS (x and y negated).
"""
from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from hybrid_vit_cascade.data.io import save_nifti
from hybrid_vit_cascade.geometry.views import canonical_affine


def cube_affine(res: int, fov_mm: float, centre_mm=None) -> np.ndarray:
    """Voxel → RAS+ world (mm) affine of a canonical cube with `res` voxels across `fov_mm`, centred at
    `centre_mm` (RAS+; None: the isocentre)."""
    if res <= 0 or not fov_mm > 0:
        raise ValueError(f"need res > 0 and fov_mm > 0, got res={res}, fov_mm={fov_mm}")
    aff = canonical_affine(res, fov_mm / res)
    if centre_mm is not None:
        aff[:3, 3] += np.asarray(centre_mm, dtype=float)
    return aff


def write_cube_nifti(path: str | os.PathLike, vol_hu: np.ndarray, fov_mm: float,
                     description: str = "", display_window: tuple[float, float] | None = None,
                     centre_mm=None) -> Path:
    """Write a canonical (res, res, res) HU cube (float32) with its real spacing and orientation, its centre
    at `centre_mm` (RAS+ mm; None: the world origin)."""
    arr = np.asarray(vol_hu, dtype=np.float32)
    if arr.ndim != 3 or len(set(arr.shape)) != 1:
        raise ValueError(f"expected a canonical cube (res, res, res), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"refusing to write {path}: the volume contains NaN or Inf")
    aff = cube_affine(arr.shape[0], fov_mm, centre_mm)
    img = nib.Nifti1Image(arr, aff)
    img.set_qform(aff, code=1)  # scanner
    img.set_sform(aff, code=2)  # aligned
    hdr = img.header
    hdr.set_xyzt_units(xyz="mm")
    hdr["descrip"] = description.encode()[:79]
    if display_window is not None:  # viewers use cal_min/cal_max as the initial display window
        hdr["cal_min"], hdr["cal_max"] = float(display_window[0]), float(display_window[1])
    return save_nifti(img, path)

"""Synthetic thorax CT phantoms: vectorised numpy, deterministic by seed, realistic HU.

A phantom is built in physical millimetres on a RAS+ grid (x → patient right, y → anterior,
z → superior) so its anatomy does not depend on the voxel size: body outline (skin, fat,
muscle), lungs with vessel-like texture and a diaphragm dome, heart, aorta, trachea, spine
(vertebral bodies, discs, canal, posterior elements), ribs, sternum, lung nodules and
optionally a scanner table. `write_phantom` stores it as NIfTI, sometimes in LPS or another
axis order and with anisotropic slices, so the reading pipeline's reorientation is exercised.
"""
from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..files import write_json_atomic
from .io import SPACING_RANGE_MM, sidecar_path, write_nifti

# Orientations `write_phantom` picks from (weights): mostly RAS/LPS as scanners write them.
ORIENTATIONS = (("RAS", 4), ("LPS", 3), ("LAS", 1), ("RPI", 1), ("PRS", 1))


def phantom_seed(seed: int, index: int) -> int:
    """Seed of case `index` of a set generated with `seed` (sets with different seeds don't overlap)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], cells: int) -> np.ndarray:
    """Zero-mean unit-ish random field smooth on the scale of shape/cells (float32)."""
    coarse = torch.from_numpy(rng.standard_normal((1, 1) + (cells + 1,) * 3).astype(np.float32))
    # torch's trilinear upsampling is ~10x faster than scipy.ndimage.zoom here
    return F.interpolate(coarse, size=shape, mode="trilinear", align_corners=False)[0, 0].numpy()


def make_phantom(
    seed: int, size: int = 128, anisotropic: bool = False, with_table: bool | None = None
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A thorax phantom: (HU float32 array with RAS+ axes, voxel spacing (x, y, z) mm)."""
    rng = np.random.default_rng(seed)
    u = rng.uniform
    extent_xy = u(380.0, 430.0)  # mm, field of view in-plane
    extent_z = u(300.0, 370.0)  # mm, scan length
    sxy = extent_xy / size
    sz = extent_z / size
    nz = size
    if anisotropic:  # thick slices, as older or low-dose protocols write them
        # capped: at 8–13 voxels per edge 2.5× the in-plane size would exceed what read_ct accepts
        sz = min(sxy * u(1.6, 2.5), SPACING_RANGE_MM[1])
        nz = max(8, int(round(extent_z / sz)))
    nx = ny = size
    x = ((np.arange(nx, dtype=np.float32) - (nx - 1) / 2) * sxy)[:, None, None]
    y = ((np.arange(ny, dtype=np.float32) - (ny - 1) / 2) * sxy)[None, :, None]
    z = ((np.arange(nz, dtype=np.float32) - (nz - 1) / 2) * sz)[None, None, :]
    zn = z / (extent_z / 2)  # -1 (inferior) .. 1 (superior)
    shape = (nx, ny, nz)

    # --- body outline: an ellipse tapering slightly along z
    a = u(130.0, 172.0) * (1.0 + u(-0.08, 0.05) * zn)  # LR semi-axis, mm
    b = u(92.0, 125.0) * (1.0 + u(-0.06, 0.04) * zn)  # AP semi-axis, mm
    cy = u(-12.0, 12.0)  # body centre along AP, mm
    yc = y - cy
    rho = np.sqrt((x / a) ** 2 + (yc / b) ** 2)
    grad = np.sqrt((x / a**2) ** 2 + (yc / b**2) ** 2) / np.maximum(rho, 1e-3)
    depth = (1.0 - rho) / np.maximum(grad, 1e-6)  # ≈ distance inside the skin, mm
    body = depth > 0
    t_fat = u(5.0, 28.0)
    t_mus = u(8.0, 18.0)
    hu_fat, hu_mus, hu_soft = u(-120, -85), u(40, 60), u(30, 45)

    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[body] = hu_soft
    hu[body & (depth < t_fat + t_mus)] = hu_mus
    hu[body & (depth < t_fat)] = hu_fat
    hu[body & (depth < 2.0)] = u(0, 30)  # skin
    inner = depth - t_fat - t_mus  # mm inside the chest wall muscle

    # --- lungs with a diaphragm dome; texture = parenchyma noise + vessel-like filaments
    lung_a, lung_b = a * u(0.36, 0.44), b * u(0.62, 0.78)
    lung_cx, lung_cy = a * u(0.42, 0.5), cy - b * u(0.0, 0.12)
    z_apex = extent_z / 2 * u(0.6, 0.85)
    z_dome = -extent_z / 2 * u(0.25, 0.6)
    lungs = np.zeros(shape, dtype=bool)
    for side in (1.0, -1.0):  # right (+x), left (-x)
        cx = side * lung_cx
        r2 = ((x - cx) / lung_a) ** 2 + ((y - lung_cy) / lung_b) ** 2
        top = z_apex - 60.0 * r2  # rounded apex
        dome = z_dome + u(30.0, 55.0) * np.clip(1.0 - r2, 0.0, 1.0) + (8.0 if side > 0 else 0.0)
        lungs |= (r2 <= 1.0) & (z <= top) & (z >= dome)
    lungs &= inner > 4.0
    parenchyma = u(-880.0, -820.0) + 25.0 * _smooth_noise(rng, shape, 10)
    n1, n2 = _smooth_noise(rng, shape, 18), _smooth_noise(rng, shape, 18)
    vessels = (np.abs(n1) < 0.09) & (np.abs(n2) < 0.09)
    lung_hu = np.where(vessels, u(-150.0, 20.0), parenchyma)
    hu[lungs] = lung_hu[lungs]
    # liver under the right dome, slightly denser than muscle
    liver = body & (inner > 0) & (x > -0.3 * a) & ~lungs & (z < z_dome + 30.0)
    hu[liver] = u(50, 65)

    # --- mediastinum: heart, aorta, trachea
    hx, hy, hz = -a * u(0.08, 0.2), cy + b * u(0.1, 0.3), z_dome + u(35.0, 60.0)
    heart_r = ((x - hx) / (a * u(0.28, 0.36))) ** 2 + ((y - hy) / (b * u(0.38, 0.48))) ** 2 + ((z - hz) / u(55.0, 75.0)) ** 2
    heart = heart_r <= 1.0
    hu[heart] = u(35.0, 45.0)  # myocardium
    hu[heart_r <= 0.55] = u(45.0, 60.0)  # blood pool
    spine_y = cy - b + t_fat + t_mus + u(30.0, 42.0)
    ao = ((x + u(15.0, 30.0)) ** 2 + (y - spine_y - u(28.0, 38.0)) ** 2) <= u(10.0, 14.0) ** 2
    hu[np.broadcast_to(ao, shape) & (inner > 0)] = u(40.0, 55.0)
    tr_r = u(7.0, 10.0)
    tr_d = x**2 + (y - (spine_y + u(40.0, 55.0))) ** 2
    z_carina = hz + u(50.0, 80.0)
    hu[np.broadcast_to(tr_d <= (tr_r + 2.0) ** 2, shape) & (z > z_carina) & (inner > 0)] = 60.0  # wall
    hu[np.broadcast_to(tr_d <= tr_r**2, shape) & (z > z_carina) & (inner > 0)] = -1000.0

    # --- spine: vertebral bodies (cortical shell + cancellous core), discs, canal, posterior elements
    cortical, cancellous = u(800.0, 1200.0), u(180.0, 380.0)
    vb_r = u(15.0, 22.0)
    pitch = u(26.0, 32.0)
    disc = u(4.0, 7.0)
    zphase = np.mod(z + u(0.0, pitch), pitch)  # position within one vertebra + disc period
    in_disc = zphase < disc
    r_vb = np.sqrt(x**2 + (y - spine_y) ** 2)
    vb = np.broadcast_to(r_vb <= vb_r, shape) & body
    hu[vb] = np.where(np.broadcast_to(r_vb > vb_r - 2.5, shape), cortical, cancellous)[vb]
    hu[vb & np.broadcast_to(in_disc, shape)] = u(70.0, 100.0)
    canal_y = spine_y - vb_r - 9.0
    r_canal = np.sqrt(x**2 + (y - canal_y) ** 2)
    ring = (r_canal > 8.0) & (r_canal <= 13.0) & (y < spine_y)
    spinous = (np.abs(x) <= 4.0) & (y < canal_y) & (y > canal_y - u(30.0, 40.0))
    transverse = (np.abs(x) <= u(35.0, 45.0)) & (np.abs(y - canal_y - 3.0) <= 5.0) & (r_canal > 8.0)
    post = np.broadcast_to(ring | spinous | transverse, shape) & ~np.broadcast_to(in_disc, shape) & body
    hu[post] = u(450.0, 700.0)
    hu[np.broadcast_to(r_canal <= 8.0, shape) & body] = u(15.0, 35.0)  # cord and CSF

    # --- ribs: 12 pairs following the inner chest wall, sloping down toward the front
    ra, rb = a - t_fat - t_mus * 0.5, b - t_fat - t_mus * 0.5
    rho_r = np.sqrt((x / ra) ** 2 + (yc / rb) ** 2)
    radius = np.sqrt(x**2 + yc**2)
    dr = (rho_r - 1.0) * radius / np.maximum(rho_r, 1e-3)  # radial offset from the rib path, mm
    phi = np.arctan2(np.abs(x), -yc) / np.pi  # 0 = posterior midline, 1 = anterior midline
    z_top = z_apex - u(5.0, 20.0)
    rib_pitch = u(20.0, 26.0)
    drop = u(50.0, 80.0)
    k = np.round((z_top - drop * phi - z) / rib_pitch)
    dz = z - (z_top - drop * phi - k * rib_pitch)
    rib_d = (dr / 4.0) ** 2 + (dz / 6.0) ** 2
    on_path = (k >= 0) & (k < 12) & (phi > 0.08) & (phi < 0.88) & (rib_d <= 1.0)
    cartilage = on_path & (phi > 0.72)
    hu[on_path] = np.where(rib_d > 0.4, cortical * 0.9, cancellous)[on_path]
    hu[cartilage] = u(120.0, 200.0)
    # sternum
    st = (np.abs(x) <= u(12.0, 18.0)) & (np.abs(dr) <= 6.0) & (phi > 0.9) & (z < z_top) & (z > hz - 40.0)
    hu[st] = np.where(np.abs(dr) > 3.5, cortical * 0.8, cancellous)[st]

    # --- nodules inside the lungs: solid or ground glass spheres
    lung_idx = np.flatnonzero(lungs)
    for _ in range(int(rng.integers(0, 5)) if lung_idx.size else 0):
        i, j, kk = np.unravel_index(rng.choice(lung_idx), shape)
        r = u(2.5, 12.0)
        d2 = (x - x[i, 0, 0]) ** 2 + (y - y[0, j, 0]) ** 2 + (z - z[0, 0, kk]) ** 2
        hu[(d2 <= r * r) & lungs] = u(-550.0, -400.0) if u() < 0.25 else u(10.0, 60.0)

    # --- scanner table below the patient (a separate object the body finder must ignore)
    if with_table if with_table is not None else u() < 0.5:
        ty = cy - b.max() - u(8.0, 20.0)
        shell = np.broadcast_to((np.abs(y - ty) <= 6.0) & (np.abs(x) <= 0.85 * extent_xy / 2), shape)
        hu[shell] = -850.0  # foam core
        skin = np.broadcast_to((np.abs(np.abs(y - ty) - 6.0) <= 1.5) & (np.abs(x) <= 0.85 * extent_xy / 2), shape)
        hu[skin] = 250.0  # carbon-fibre faces

    # acquisition: slight blur (partial volume) and quantum noise
    # ~1 mm scanner blur, in voxels per axis (≤ 0.6 so coarse grids keep thin cortical bone)
    hu = ndimage.gaussian_filter(hu, sigma=[min(0.6, 1.0 / s) for s in (sxy, sxy, sz)], truncate=2.5)
    hu += rng.normal(0.0, u(6.0, 15.0), size=shape).astype(np.float32)
    return np.clip(hu, -1024.0, 3071.0).astype(np.float32), (sxy, sxy, sz)


def phantom_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float], offset_mm: np.ndarray) -> np.ndarray:
    """RAS+ affine of a phantom array: centre of the grid at `offset_mm` (scanner coordinates)."""
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = offset_mm - (np.array(shape) - 1) / 2.0 * np.array(spacing)
    return aff


def reorient(hu: np.ndarray, affine: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """Re-express a RAS+ array and affine with array axes `axcodes` (e.g. 'LPS'); same world image."""
    start = nib.orientations.io_orientation(affine)
    end = nib.orientations.axcodes2ornt(tuple(axcodes))
    tf = nib.orientations.ornt_transform(start, end)
    out = nib.orientations.apply_orientation(hu, tf)
    return np.ascontiguousarray(out), affine @ nib.orientations.inv_ornt_aff(tf, hu.shape)


def write_phantom(path: str | os.PathLike, seed: int, size: int = 128, vary: bool = True) -> dict:
    """Generate phantom `seed` and write it as NIfTI (int16 HU) plus a JSON sidecar; returns the sidecar."""
    rng = np.random.default_rng([seed, 7])  # orientation choices, independent of anatomy draws
    anisotropic = bool(vary and rng.uniform() < 0.25)
    names, weights = zip(*ORIENTATIONS)
    axcodes = str(rng.choice(names, p=np.array(weights) / sum(weights))) if vary else "RAS"
    offset = rng.uniform([-20, -20, -250], [20, 20, 250]) if vary else np.zeros(3)
    hu, spacing = make_phantom(seed, size, anisotropic=anisotropic)
    arr, aff = reorient(np.rint(hu).astype(np.int16), phantom_affine(hu.shape, spacing, offset), axcodes)
    path = Path(path)
    write_nifti(path, arr, aff, dtype=np.int16)
    meta = {"patient_id": path.name.split(".")[0], "generator": "hvc phantoms", "seed": seed,
            "size": size, "orientation": axcodes, "spacing_mm": [round(s, 4) for s in spacing]}
    write_json_atomic(sidecar_path(path), meta)
    return meta

"""From labels to a CT: HU per tissue with texture, the patient's pose in the field, the table, blur and noise.

Lung texture: the drawn parenchyma value plus a supine anteroposterior gradient (dependent lung
30–80 HU denser; Webb, HRCT of the Lung) and smooth parenchymal noise; vessels and bronchial walls
mix in by their partial-volume fractions. Pose: off-centre and rotated (roll about z ±6°, yaw about y
±4°) by resampling the patient-frame volume (Li et al. 2007: most patients lie off the isocentre).
Tables (scanner frame, never rotated with the patient): a flat carbon-fibre board with a thin pad,
a curved couch with a 3–6 cm mattress, or none. Acquisition: ≈ 1 mm Gaussian blur and quantum noise
whose level grows with body size.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .body import Scene
from .grid import smooth_noise
from .tissues import Tissue as T
from .tissues import lookup_table

# Texture amplitude (HU per unit of smooth noise) per tissue: heterogeneity inside organs.
TEXTURE = {T.FAT: 8.0, T.MUSCLE: 6.0, T.LIVER: 5.0, T.SPLEEN: 4.0, T.CANCELLOUS: 35.0, T.GLAND: 8.0,
           T.SOFT_TISSUE: 10.0, T.STOMACH: 10.0, T.CONSOLIDATION: 8.0, T.EFFUSION: 3.0, T.LUNG: 18.0}


def tissue_hu(sc: Scene) -> np.ndarray:
    """HU of the patient-frame label map with textures and lung partial volumes; sets LUNG_VESSEL labels."""
    p, g, s, lab = sc.p, sc.g, sc.s, sc.lab
    lung = lab == T.LUNG
    vessel = sc.art + sc.vein
    lab[lung & (vessel >= 0.5)] = T.LUNG_VESSEL
    hu = lookup_table(p.hu)[lab]
    amp = np.zeros(256, np.float32)
    for t, a in TEXTURE.items():
        amp[int(t)] = a
    hu += amp[lab] * smooth_noise(sc.stream(7), g.shape, 24)
    sel = lung | (lab == T.LUNG_VESSEL)
    if sel.any():
        grad = sc.stream(8).uniform(30.0, 80.0)
        t_ant = np.clip((g.y - s["y_post"]) / np.maximum(s["y_ant"] - s["y_post"], 1.0), 0.0, 1.0)
        base = hu + grad * (0.5 - t_ant)  # dependent (posterior) lung denser
        fa, fv, fw = sc.art, sc.vein, sc.wall
        tot = fa + fv + fw
        scale = np.where(tot > 1.0, 1.0 / np.maximum(tot, 1e-6), 1.0).astype(np.float32)
        mixed = (base * (1.0 - np.minimum(tot, 1.0)) + (p.hu[T.BLOOD_RIGHT] * fa + p.hu[T.BLOOD_LEFT] * fv
                                                       + p.hu[T.AIRWAY_WALL] * fw) * scale)
        hu[sel] = mixed[sel]
    return hu


def _rotation(p) -> np.ndarray:
    r, y = np.deg2rad(p.pose["roll_deg"]), np.deg2rad(p.pose["yaw_deg"])
    Rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    Ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    return Rz @ Ry


def pose(sc: Scene, hu: np.ndarray, spacing, origin) -> tuple[np.ndarray, np.ndarray]:
    """Resample (HU, labels) from the patient frame into the scanner field (rotated about the patient centre)."""
    p, g = sc.p, sc.g
    t = np.array([p.pose["offset_x"], p.pose["offset_y"], 0.0])
    R = _rotation(p)
    n = np.array(g.shape)
    ax = [(origin[i] + np.arange(n[i]) * spacing[i] - t[i]).astype(np.float32) for i in range(3)]
    xyz = (ax[0][:, None, None], ax[1][None, :, None], ax[2][None, None, :])
    grid = np.empty((*g.shape, 3), dtype=np.float32)
    Rt = R.T
    for i in range(3):  # patient-frame coordinate i of every output voxel, as grid_sample's [-1, 1]
        a = 2.0 / (spacing[i] * max(n[i] - 1, 1))
        c = -(float(g.origin[i]) / spacing[i]) * 2.0 / max(n[i] - 1, 1) - 1.0
        v = grid[..., 2 - i]  # grid_sample wants (z, y, x) order for a (D=x, H=y, W=z) volume
        v[...] = (Rt[i, 0] * a) * xyz[0] + (Rt[i, 1] * a) * xyz[1] + (Rt[i, 2] * a) * xyz[2] + c
    np.clip(grid[..., 0], -1.0, 1.0, out=grid[..., 0])  # a tilted patient keeps the end slices (no air wedge)
    grid = torch.from_numpy(grid)[None]
    inp = torch.from_numpy(hu + 1000.0)[None, None]
    out = F.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0].numpy() - 1000.0
    labs = torch.from_numpy(sc.lab.astype(np.float32))[None, None]
    lab = F.grid_sample(labs, grid, mode="nearest", padding_mode="zeros", align_corners=True)[0, 0].numpy()
    return np.ascontiguousarray(out, dtype=np.float32), lab.astype(np.uint8)


def add_table(sc: Scene, hu: np.ndarray, lab: np.ndarray, spacing, origin) -> dict | None:
    """Draw the patient's table under the lowest body voxel (scanner frame); returns its description."""
    kind = sc.p.table
    if kind == "none":
        return None
    rng = sc.stream(9)
    xs = (origin[0] + np.arange(lab.shape[0]) * spacing[0])[:, None]
    ys = (origin[1] + np.arange(lab.shape[1]) * spacing[1])[None, :]
    occupied = np.flatnonzero((lab != T.AIR).any(axis=(0, 2)))
    if occupied.size == 0:
        return None
    y_low = float(ys[0, occupied[0]]) - 0.5 * spacing[1]
    width = rng.uniform(400.0, 470.0) if kind == "flat" else rng.uniform(420.0, 500.0)
    if kind == "flat":
        pad = max(rng.uniform(8.0, 20.0), 1.5 * spacing[1])
        thick = rng.uniform(25.0, 45.0)
        top = np.full_like(xs, y_low - pad)
        desc = {"kind": kind, "width_mm": round(width, 1), "thickness_mm": round(thick, 1), "pad_mm": round(pad, 1)}
    else:
        pad = max(rng.uniform(30.0, 60.0), 1.5 * spacing[1])
        thick = rng.uniform(15.0, 30.0)
        radius = rng.uniform(400.0, 800.0)
        top = y_low - pad + xs**2 / (2.0 * radius)
        desc = {"kind": kind, "width_mm": round(width, 1), "thickness_mm": round(thick, 1), "mattress_mm": round(pad, 1),
                "curvature_radius_mm": round(radius, 1)}
    depth = top - ys  # mm below the couch top (negative: the mattress or pad above it)
    layers = ((-pad, 0.0, T.MATTRESS), (0.0, 2.0, T.TABLE), (2.0, thick - 2.0, T.TABLE_FOAM), (thick - 2.0, thick, T.TABLE))
    free = (lab == T.AIR) & (hu < -900.0)  # never over the body (or what resampling blurred off it)
    h = spacing[1]
    cover = np.zeros(depth.shape, np.float32)
    add = np.zeros(depth.shape, np.float32)
    best, best_f = np.zeros(depth.shape, np.uint8), np.zeros(depth.shape, np.float32)
    for d0, d1, label in layers:  # partial volume: the share of each voxel's y-extent in each layer
        w = np.clip(np.minimum(d1, depth + h / 2) - np.maximum(d0, depth - h / 2), 0.0, None) / h
        w = np.where(np.abs(xs) <= width / 2.0 - (10.0 if label == T.MATTRESS else 0.0), w, 0.0).astype(np.float32)
        cover += w
        add += w * (sc.p.hu[label] + 1000.0)
        best = np.where(w > best_f, np.uint8(label), best)
        best_f = np.maximum(best_f, w)
    m2 = cover > 0.0
    m = m2[:, :, None] & free
    hu[m] = (hu + add[:, :, None])[m]  # air (−1000) + Σ share × (layer + 1000)
    lab[m & (cover >= 0.5)[:, :, None]] = np.broadcast_to(best[:, :, None], lab.shape)[m & (cover >= 0.5)[:, :, None]]
    return desc


def acquire(sc: Scene, hu: np.ndarray, spacing) -> np.ndarray:
    """≈ 1 mm scanner blur (at most 0.6 voxel, so coarse grids keep thin bone) and quantum noise."""
    hu = ndimage.gaussian_filter(hu, sigma=[min(0.6, 1.0 / s) for s in spacing], truncate=2.5)
    hu += sc.stream(10).normal(0.0, sc.p.pose["noise_sd"], size=hu.shape).astype(np.float32)
    return np.clip(hu, -1024.0, 3071.0).astype(np.float32)

"""Lung texture: recursive bronchovascular and pulmonary-vein trees drawn as tubes.

Each lobar root grows a tree generation by generation: every branch splits in two with radii
obeying Murray's law (r³ = r₁³ + r₂³; Murray, PNAS 1926) and an asymmetry ratio 0.55–1 (real
airway/arterial trees are asymmetric; Horsfield & Cumming 1968), length 5–8 radii (length ≈ 3
diameters; Weibel, Morphometry of the Human Lung 1963), the larger child deviating 15–35° and the
smaller 35–65° from the parent (Zamir's optimal branching), the branching plane turned ≈ 90° at
each generation, with a mild outward bias so the tree fills the lung. A branch stops when it leaves
the lung or thins below what the voxel grid can show (0.3 voxel). Arteries run beside bronchi of
equal calibre (artery–bronchus ratio ≈ 1; Webb, HRCT of the Lung); bronchi are drawn as air lumen
with a partial-volume wall (thickness ≈ 0.2 × radius) while their lumen spans ≥ 0.4 voxel. Random
numbers are keyed by branch identity (`hashed_uniform`), so a branch's shape does not depend on the
grid and a seed keeps its tree at any size.
"""
from __future__ import annotations

import numpy as np

from .body import Scene
from .grid import hashed_uniform, over, tubes
from .tissues import Tissue as T

LUNG_LUT = over(T.LUNG, T.LUNG_VESSEL)
NEAR_HILUM = over(T.LUNG, T.LUNG_VESSEL, T.FAT, T.AIRWAY, T.AIRWAY_WALL, T.BLOOD_LEFT, T.BLOOD_RIGHT, T.MYOCARDIUM)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def grow(sc: Scene, key: int, starts, dirs, radii, r_min: float, max_gen: int = 14):
    """Segments (p0, p1, radius, side vector) of trees grown from the roots, inside the lungs."""
    p = np.asarray(starts, dtype=np.float64)
    d = _unit(np.asarray(dirs, dtype=np.float64))
    r = np.asarray(radii, dtype=np.float64)
    hil = p.copy()
    ids = (np.arange(len(p), dtype=np.uint64) + np.uint64(1)) << np.uint64(24)
    e = _unit(np.cross(d, np.array([0.0, 0.0, 1.0])) + np.array([1e-3, 0.0, 0.0]))
    out = []
    for gen in range(max_gen):
        if len(p) == 0:
            break
        length = r * (5.0 + 3.0 * hashed_uniform(key, ids, 0))
        lut = NEAR_HILUM if gen < 2 else LUNG_LUT
        ok = np.zeros(len(p), dtype=bool)
        for shrink in (1.0, 0.5):  # a branch about to leave the lung tries half its length first
            ln = length * np.where(ok, 1.0, shrink)
            inside = lut[sc.g.labels_at(sc.lab, p + d * ln[:, None])] & lut[sc.g.labels_at(sc.lab, p + 0.5 * d * ln[:, None])]
            length = np.where(ok, length, ln)
            ok |= inside
        end = p + d * length[:, None]
        p, d, r, e, ids, hil, end = p[ok], d[ok], r[ok], e[ok], ids[ok], hil[ok], end[ok]
        out.append((p, end, r, e))
        q = 0.55 + 0.45 * hashed_uniform(key, ids, 1)
        r1 = r * (1.0 + q**3) ** (-1.0 / 3.0)
        r2 = q * r1
        phi = 0.5 * np.pi + (hashed_uniform(key, ids, 2) - 0.5) * np.pi / 3.0
        e_new = np.cos(phi)[:, None] * e + np.sin(phi)[:, None] * np.cross(d, e)
        th1 = np.deg2rad(15.0 + 20.0 * hashed_uniform(key, ids, 3))[:, None]
        th2 = np.deg2rad(35.0 + 30.0 * hashed_uniform(key, ids, 4))[:, None]
        outward = _unit(end - hil)
        kids_d, kids_r, kids_id = [], [], []
        for th, sign, rr, c in ((th1, 1.0, r1, 0), (th2, -1.0, r2, 1)):
            dc = _unit(np.cos(th) * d + sign * np.sin(th) * e_new + 0.25 * outward)
            kids_d.append(dc)
            kids_r.append(rr)
            kids_id.append(ids * np.uint64(2) + np.uint64(c))
        dn = np.concatenate(kids_d)
        en = np.concatenate([e_new, e_new])
        en = _unit(en - (en * dn).sum(-1, keepdims=True) * dn)
        rn = np.concatenate(kids_r)
        keep = rn >= r_min
        p, d, r, e = np.concatenate([end, end])[keep], dn[keep], rn[keep], en[keep]
        ids, hil = np.concatenate(kids_id)[keep], np.concatenate([hil, hil])[keep]
    if not out:
        z3 = np.zeros((0, 3))
        return z3, z3, np.zeros(0), z3
    return tuple(np.concatenate([o[i] for o in out]) for i in range(4))


def paint_trees(sc: Scene) -> None:
    """Grow the lobar bronchovascular trees and the pulmonary veins; fill the vessel fractions."""
    g = sc.g
    h = g.h
    key = sc.p.vessels["tree_key"]
    roots = sc.tree_roots
    r_min = max(0.6, 0.25 * h)
    n_seg = 0
    for kind in ("airway", "vein"):
        sel = [rt for rt in roots if rt[3] == kind]
        if not sel:
            continue
        p0, p1, r, e = grow(sc, key + (0 if kind == "airway" else 1), [s[0] for s in sel], [s[1] for s in sel],
                            [s[2] for s in sel], r_min)
        n_seg += len(p0)
        if kind == "vein":
            idx, f = tubes(g, p0, p1, r)
            np.maximum.at(sc.vein.reshape(-1), idx, f)
            continue
        off = e * (2.1 * r)[:, None]  # artery beside its bronchus
        idx, f = tubes(g, p0 + off, p1 + off, r)
        np.maximum.at(sc.art.reshape(-1), idx, f)
        big = r >= max(1.0, 0.4 * h)
        if big.any():
            lab = sc.lab.reshape(-1)
            iw, fw = tubes(g, p0[big], p1[big], 1.2 * r[big])
            il, fl = tubes(g, p0[big], p1[big], r[big])
            wall = np.zeros(lab.shape, np.float32)
            np.maximum.at(wall, iw, fw)
            lum = np.zeros(lab.shape, np.float32)
            np.maximum.at(lum, il, fl)
            # the wall is the ring between the two radii: partial volume into the vessel fraction
            ring = np.clip(wall - lum, 0.0, 1.0)
            np.maximum(sc.wall.reshape(-1), ring, out=sc.wall.reshape(-1))
            air = (lum >= 0.5) & LUNG_LUT[lab]
            lab[air] = T.AIRWAY
    sc.info["lung_tree_segments"] = int(n_seg)

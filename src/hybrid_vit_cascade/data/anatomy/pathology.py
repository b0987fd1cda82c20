"""Pathologies painted into the lungs: nodules, pleural effusion, consolidation, atelectasis.

Supine physics: pleural fluid layers posteriorly (dependent), deepest at the bases, with a band of
compressive atelectasis above it; its drawn AP depth 1–8 cm spans small to moderate (Moy et al.
2013: < 3 cm small, 3–10 cm moderate). Consolidation is an airless region of irregular outline,
lower zones more often, keeping air bronchograms (airway lumen is never painted over).
Atelectasis: dependent (posterior basal band), plate-like (thin horizontal disc at a base) or a
collapsed left lower lobe (posteromedial wedge). Nodules: spheres (slightly ellipsoidal) of the drawn
diameter and type (solid, ground-glass, part-solid with a solid core, calcified) placed in the lung.
Cardiomegaly is the heart's size (see `mediastinum`). Positions are drawn from per-lesion random
streams and accepted where the label map holds lung, so they match the anatomy at any grid size.
"""
from __future__ import annotations

import numpy as np

from .body import Scene
from .grid import ellipsoid, over, paint, rotation, smooth_noise
from .tissues import Tissue as T

LUNG = over(T.LUNG, T.LUNG_VESSEL)


def _lung_point(sc: Scene, rng: np.random.Generator, side: str, z_lo: float, z_hi: float, margin: float):
    """A point (mm) inside the lung of `side` between heights z_lo..z_hi, `margin` mm from its edge."""
    A = sc.L.A_max
    sgn = 1.0 if side == "right" else -1.0
    ys = sc.s["y_post"][0, 0], sc.s["y_ant"][0, 0]
    offs = np.array([[0, 0, 0], [margin, 0, 0], [-margin, 0, 0], [0, margin, 0], [0, -margin, 0], [0, 0, margin], [0, 0, -margin]])
    for _ in range(300):
        pt = np.array([sgn * rng.uniform(10.0, A), rng.uniform(ys[0].min(), ys[1].max()), rng.uniform(z_lo, z_hi)])
        if LUNG[sc.g.labels_at(sc.lab, pt[None] + offs)].all():
            return pt
    return None


def paint_pathology(sc: Scene) -> None:
    """Paint the patient's pathologies and record what was drawn (positions, sizes, voxel counts)."""
    p, g, L, s, lab = sc.p, sc.g, sc.L, sc.s, sc.lab
    path = p.pathology
    rec = {"cardiomegaly": bool(path["cardiomegaly"]), "nodules": [], "effusion": None, "consolidation": None,
           "atelectasis": None}
    z_base, z_apex, z_car = L.z["dome_left"], L.z["apex"], L.z["carina"]
    right = (g.x > s["x_s"])
    # pleural effusion: posterior layer, deepest at the bases
    eff = path["effusion"]
    if eff:
        t_ap = g.y - (s["yc"] - s["B"] * np.sqrt(np.clip(1.0 - (g.x / np.maximum(s["A"], 1.0)) ** 2, 0.0, 1.0)))
        height = np.clip((z_apex - g.z) / max(z_apex - z_base, 1.0), 0.0, 1.0) ** 0.7
        n = 0
        for side, depth in eff["depth_mm"].items():
            on_side = right if side == "right" else ~right
            lung = LUNG[lab] & on_side
            fluid = lung & (t_ap < depth * height)
            lab[fluid] = T.EFFUSION
            lab[lung & ~fluid & (t_ap < depth * height + 6.0)] = T.ATELECTASIS  # compressive
            n += int(fluid.sum())
        rec["effusion"] = {"side": eff["side"], "depth_mm": {k: round(v, 1) for k, v in eff["depth_mm"].items()}, "voxels": n}
    con = path["consolidation"]
    if con:
        rng = np.random.default_rng([p.seed, 300, con["key"]])
        zl, zh = (z_base, z_car - 20.0) if con["zone"] == "lower" else (z_car, z_apex - 20.0)
        c = _lung_point(sc, rng, con["side"], zl, zh, 10.0)
        if c is not None:
            e = ellipsoid(g, c, con["size_mm"], rotation(rng.normal(size=3)))
            if e is not None:
                sl, q = e
                noise = smooth_noise(rng, q.shape, 4)
                m = (q + 0.35 * noise <= 1.0) & LUNG[lab[sl]]
                paint(lab, sl, m, T.CONSOLIDATION)
                rec["consolidation"] = {"side": con["side"], "zone": con["zone"], "centre_mm": [round(float(v), 1) for v in c],
                                        "voxels": int(m.sum())}
    atl = path["atelectasis"]
    if atl:
        rng = np.random.default_rng([p.seed, 301, atl["key"]])
        sides = ("right", "left") if atl["side"] == "both" else (atl["side"],)
        n = 0
        for side in sides:
            on_side = right if side == "right" else ~right
            if atl["kind"] == "dependent":
                t_ap = g.y - s["y_post"]
                m = LUNG[lab] & on_side & (t_ap < atl["thickness_mm"] + 15.0) & (g.z < z_base + 60.0)
                lab[m] = T.ATELECTASIS
                n += int(m.sum())
            elif atl["kind"] == "plate":
                c = _lung_point(sc, rng, side, z_base + 10.0, z_base + 60.0, 8.0)
                if c is not None:
                    e = ellipsoid(g, c, (rng.uniform(30.0, 50.0), rng.uniform(20.0, 35.0), max(2.0, atl["thickness_mm"] / 4.0)))
                    if e is not None:
                        sl, q = e
                        m = (q <= 1.0) & LUNG[lab[sl]]
                        paint(lab, sl, m, T.ATELECTASIS)
                        n += int(m.sum())
            else:  # lobar collapse: a posteromedial wedge against the spine, widest at the base
                grow = np.clip((z_car - 20.0 - g.z) / max(z_car - 20.0 - z_base, 1.0), 0.0, 1.0)
                reach = 0.55 * s["A"] * grow  # lateral extent of the wedge at this height
                depth = 0.9 * s["B"] * np.clip(1.0 - np.abs(g.x - s["x_s"]) / np.maximum(reach, 1e-3), 0.0, 1.0)
                m = LUNG[lab] & on_side & (g.y - s["y_post"] < depth)
                lab[m] = T.ATELECTASIS
                n += int(m.sum())
        rec["atelectasis"] = {"kind": atl["kind"], "side": atl["side"], "voxels": n}
    for nod in path["nodules"]:
        rng = np.random.default_rng([p.seed, 302, nod["key"]])
        r = nod["diameter_mm"] / 2.0
        c = _lung_point(sc, rng, nod["side"], z_base, z_apex - 10.0, r + 2.0)
        item = {"type": nod["type"], "diameter_mm": round(nod["diameter_mm"], 1), "side": nod["side"], "voxels": 0}
        if c is not None:
            e = ellipsoid(g, c, r * rng.uniform(0.85, 1.15, size=3))
            if e is not None:
                sl, q = e
                body = (q <= 1.0) & LUNG[lab[sl]]
                outer = {"solid": T.NODULE, "ground-glass": T.GROUND_GLASS, "part-solid": T.GROUND_GLASS,
                         "calcified": T.CALCIFIED}[nod["type"]]
                paint(lab, sl, body, outer)
                if nod["type"] == "part-solid":
                    paint(lab, sl, body & (q <= rng.uniform(0.2, 0.35)), T.NODULE)
                item.update(centre_mm=[round(float(v), 1) for v in c], voxels=int(body.sum()))
        rec["nodules"].append(item)
    sc.info["pathology"] = rec

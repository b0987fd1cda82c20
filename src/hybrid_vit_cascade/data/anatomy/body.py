"""The soft-tissue envelope: trunk (rib-cage ellipse + chest wall), neck, shoulders, arms, breasts.

Each part gives a depth below its own skin (mm) and a depth below its subcutaneous fat; the union
takes the maximum of each, so skin and fat run only along the outer surface of the whole body.
Chest-wall thicknesses: subcutaneous fat from the BMI (2.6 mm per BMI unit above 17: ≈ 5 mm when
thin, 20–35 mm overweight/obese, up to 65 mm, women ×1.15; generator mapping in the span CT shows), pectoral
10–25 mm, paraspinal 35–55 mm, lateral 8–18 mm (Gray's Anatomy). The back is flattened where the
patient lies on the table.
"""
from __future__ import annotations

import numpy as np

from .grid import Grid, capsule_distance, ellipsoid, smooth_noise
from .layout import Layout
from .patient import Patient
from .tissues import Tissue as T


class Scene:
    """Everything the painters share: patient, layout, grid, label map and a few fields."""

    def __init__(self, p: Patient, grid: Grid):
        self.p, self.g, self.L = p, grid, Layout(p)
        self.lab = np.zeros(grid.shape, dtype=np.uint8)
        sec = self.L.section(grid.axes[2].astype(np.float64))
        self.s = {k: np.asarray(v, dtype=np.float32)[None, None, :] for k, v in sec.items()}
        self.art = np.zeros(grid.shape, dtype=np.float32)  # pulmonary artery partial-volume fraction
        self.vein = np.zeros(grid.shape, dtype=np.float32)  # pulmonary vein fraction
        self.wall = np.zeros(grid.shape, dtype=np.float32)  # bronchial wall fraction
        self.info: dict = {}

    def stream(self, k: int) -> np.random.Generator:
        """An independent random stream of this patient (k names its purpose)."""
        return np.random.default_rng([self.p.seed, 200 + k])


def _cage_fields(sc: Scene):
    """Signed distance outside the rib-cage ellipse (mm) and the direction cosines of each voxel."""
    g, s = sc.g, sc.s
    A = np.maximum(s["A"], 0.5)
    dy = g.y - s["yc"]
    r = np.sqrt(g.x**2 + dy**2)
    rho = np.sqrt((g.x / A) ** 2 + (dy / s["B"]) ** 2)
    r_ell = np.where(rho > 1e-4, r / np.maximum(rho, 1e-4), np.minimum(A, s["B"]))
    d_out = r - r_ell
    rs = np.maximum(r, 1e-3)
    return d_out.astype(np.float32), (-dy / rs).astype(np.float32), (np.abs(g.x) / rs).astype(np.float32)


def paint_body(sc: Scene) -> None:
    """Paint skin, fat and muscle of the whole body, fill the rib cage with fat (refined later)."""
    p, g, L, s, b = sc.p, sc.g, sc.L, sc.s, sc.p.body
    f = b["fat"]
    d_out, cpost, slat = _cage_fields(sc)
    sc.d_out, sc.cpost = d_out, cpost
    z = g.z
    zl = L.z
    pec_z = np.clip((z - zl["xiphoid"] - 20.0) / 40.0, 0, 1) * np.clip((zl["notch"] + 40.0 - z) / 30.0, 0, 1)
    xa = np.abs(g.x)
    ant = np.maximum(-cpost, 0.0)
    muscle = (b["muscle_lat"] * slat**2 + b["muscle_post"] * np.maximum(cpost, 0) ** 2
              + b["muscle_para"] * np.exp(-((g.x / 70.0) ** 2)) * np.clip(2.0 * cpost - 0.6, 0.0, 1.0)
              + b["muscle_pec"] * ant**2 * np.exp(-(((xa - 0.45 * s["A"]) / (0.35 * s["A"] + 1.0)) ** 2)) * pec_z
              + 8.0 * ant * (z < zl["xiphoid"]))  # abdominal wall below the xiphoid
    belly = 1.0 + 0.4 * ant * np.clip((zl["xiphoid"] - z) / 80.0, 0, 1)
    fat = f * (1.0 + 0.3 * slat**2) * np.where(cpost > 0.5, 0.8, 1.0) * belly
    wall = b["rib_band"] + muscle + fat
    depth = wall - d_out
    below_apex = z < zl["apex"] + 10.0
    depth = np.where(below_apex, depth, -1.0).astype(np.float32)
    # supine: the back flattens on the table, about where the lateral back muscles end
    y_back = float(np.min(s["y_post"][0, 0])) - b["rib_band"] - b["muscle_post"] - 0.5 * b["muscle_para"] - 0.6 * f
    sc.y_back = y_back
    depth = np.minimum(depth, (g.y - y_back).astype(np.float32))
    D = depth
    M = (depth - fat).astype(np.float32)
    sc.trunk_wall = wall

    # breasts (women): hemi-ellipsoids on the anterior chest wall, fallen laterally when supine
    br = b.get("breast")
    gland_boxes = []
    if br:
        V = br["volume_ml"] * 1000.0
        R = (3.0 * V / (2.0 * np.pi * br["flatness"])) ** (1.0 / 3.0)
        h = br["flatness"] * R
        zc = zl["sternal_angle"] - br["below_angle"]
        sec = L.at(zc)
        for side in (1.0, -1.0):
            cx = side * (br["offset_x"] + br["fall"])
            x_on = min(abs(cx) / max(sec["A"], 1.0), 0.95)
            y_wall = sec["yc"] + sec["B"] * np.sqrt(1.0 - x_on**2) + b["rib_band"] + b["muscle_pec"] * 0.5 + f * 0.7
            e = ellipsoid(g, (cx, y_wall, zc), (R, h, R * 0.9))
            if e is None:
                continue
            sl, q = e
            dep = ((1.0 - np.sqrt(q)) * min(R, h)).astype(np.float32)
            gland_boxes.append((sl, q, M[sl].copy()))
            D[sl] = np.maximum(D[sl], dep)

    # neck, shoulders, arms: painted into the same depth fields
    sec_t1 = L.at(zl["T1"])
    fn = 0.6 * f
    na, nb = b["neck"]
    yn = sec_t1["y_vb"] + 0.55 * nb
    sl = g.box((-na - 5, yn - nb - 5, zl["T1"] - 40.0), (na + 5, yn + nb + 5, 1e4))
    if sl is not None:
        x, y, _ = g.sub(sl)
        rr = np.sqrt((x / (na + fn)) ** 2 + ((y - yn) / (nb + fn)) ** 2)
        dep = np.broadcast_to(((1.0 - rr) * min(na, nb)).astype(np.float32), D[sl].shape)
        D[sl] = np.maximum(D[sl], dep)
        M[sl] = np.maximum(M[sl], dep - fn)
    z_hh = zl["humeral_head"]
    sec_hh = L.at(z_hh)
    x_hh = b["shoulder_half"] - 0.8 * b["humeral_head"]
    y_hh = sec_hh["yc"] - 0.1 * sec_hh["B"]
    sc.humeral_head = (x_hh, y_hh, z_hh)
    for cx, sa in ((0.0, (b["shoulder_half"] - 30.0, sec_hh["B"] + 45.0 + fn, 55.0 + fn)),
                   (x_hh, (55.0 + fn, 60.0 + fn, 70.0 + fn)), (-x_hh, (55.0 + fn, 60.0 + fn, 70.0 + fn))):
        e = ellipsoid(g, (cx, y_hh - (10.0 if cx == 0 else 0.0), z_hh + 10.0), sa)
        if e is None:
            continue
        sl, q = e
        dep = ((1.0 - np.sqrt(q)) * min(sa)).astype(np.float32)
        D[sl] = np.maximum(D[sl], dep)
        M[sl] = np.maximum(M[sl], dep - fn)
    arm_segs = _arm_axes(sc, x_hh, y_hh, z_hh)
    sc.arm_axes = arm_segs
    ra = b["arm_radius"]
    for a0, a1 in zip(*arm_segs):  # depth below the arm's skin from the distance to its axis
        e = capsule_distance(g, a0, a1, ra)
        if e is not None:
            sl, dist = e
            dep = (ra - dist).astype(np.float32)
            D[sl] = np.maximum(D[sl], dep)
            M[sl] = np.maximum(M[sl], dep - 0.8 * f)

    body = D > 0
    lab = sc.lab
    lab[body] = T.FAT
    lab[body & (D <= 2.0)] = T.SKIN
    lab[body & (M > 0) & (D > 2.0)] = T.MUSCLE
    inside = (d_out < 0) & body & below_apex
    lab[inside] = T.FAT  # mediastinal / extrapleural fat until the chest painter refines it
    sc.body, sc.inside = body, inside
    # breast glandular tissue: smooth-noise pattern, denser toward the nipple [BIR]
    if br and gland_boxes:
        noise = smooth_noise(sc.stream(1), g.shape, 14)
        cand = [((q < 0.85) & (lab[sl] == T.FAT) & (trunk_m <= 0), noise[sl] + 0.5 * (0.6 - q), sl)
                for sl, q, trunk_m in gland_boxes]
        vals = np.concatenate([v[m] for m, v, _ in cand])
        if vals.size:  # threshold giving the drawn glandular fraction of the breast volume
            thr = float(np.quantile(vals, 1.0 - br["gland_fraction"]))
            for m, v, sl in cand:
                lab[sl][m & (v > thr)] = T.GLAND


def _arm_axes(sc: Scene, x_hh: float, y_hh: float, z_hh: float) -> tuple[np.ndarray, np.ndarray]:
    """Axis segments (p0, p1) of both upper arms + forearms: at the sides or raised beside the head."""
    b, L = sc.p.body, sc.L
    p0, p1 = [], []
    ang = np.deg2rad(b["arm_angle"])
    for side in (1.0, -1.0):
        head = np.array([side * x_hh, y_hh, z_hh])
        if sc.p.arms == "sides":
            x_side = L.A_max + b["rib_band"] + b["muscle_lat"] + 1.3 * b["fat"] + b["arm_radius"] + b["arm_gap"]
            elbow = np.array([side * max(x_side, x_hh), y_hh - 10.0 + 20.0 * np.sin(ang), z_hh - 300.0])
            hand = elbow + np.array([side * 10.0, 60.0 * np.sin(ang) + 20.0, -260.0])
        else:  # abducted ~160–180°: upper arms converge beside the head, elbows above the scan
            d = np.array([-side * np.sin(np.deg2rad(12.0)), np.sin(ang) * 0.5, 1.0])
            d /= np.linalg.norm(d)
            elbow = head + 300.0 * d
            hand = elbow + np.array([-side * 60.0, 0.0, 200.0])
        p0 += [head, elbow]
        p1 += [elbow, hand]
    return np.array(p0), np.array(p1)

"""Lungs, diaphragm and the upper abdomen (liver, stomach, spleen, kidneys, colon, visceral fat).

Diaphragm: two domes, the right 0.5–2.8 cm higher than the left (Felson), each falling 2–4 cm to
the lateral costophrenic recess and further to the posterior recess (T12–L1). Organ sizes:
liver's left lobe reaching 15–50 % of the half-width past the midline, stomach 7–11 × 6–9 ×
9–14 cm with supine gas anterior (non-dependent), spleen 9–12 cm long along the 10th rib (normal
< 12–13 cm; ICRP 89 mass 130–150 g), kidneys 10–12 cm (ICRP 89), upper poles T11–T12, the right
1–2.5 cm lower (Gray's Anatomy).
"""
from __future__ import annotations

import numpy as np

from .body import Scene
from .grid import ellipsoid, over, paint, paint_tubes, rotation, smooth_noise
from .tissues import Tissue as T

SOFT_INSIDE = over(T.FAT, T.SOFT_TISSUE, T.MUSCLE)


def diaphragm_height(sc: Scene) -> np.ndarray:
    """z (mm) of the diaphragm under each (x, y) column: (nx, ny, 1), both domes blended."""
    p, g, L = sc.p, sc.g, sc.L
    zs = []
    for side, key in ((1.0, "dome_right"), (-1.0, "dome_left")):
        sec = L.at(L.z[key])
        xc, yc = side * 0.45 * sec["A"], sec["yc"] + 0.1 * sec["B"]
        rho2 = ((g.x[:, :, 0] - xc) / (0.75 * sec["A"])) ** 2 + ((g.y[:, :, 0] - yc) / (0.9 * sec["B"])) ** 2
        rise = p.body["dome_rise"]
        extra = max(0.0, L.z[key] - L.z["recess"] - rise)
        post = np.clip(-(g.y[:, :, 0] - yc) / sec["B"], 0.0, 1.0) ** 1.5
        zs.append(L.z[key] - rise * np.minimum(rho2, 1.6) - extra * post)
    w = 1.0 / (1.0 + np.exp(-g.x[:, :, 0] / 20.0))
    return np.maximum(w * zs[0] + (1.0 - w) * zs[1], L.z["recess"]).astype(np.float32)[:, :, None]


def paint_lungs(sc: Scene) -> None:
    """Lungs inside the cage above the diaphragm, outside the mediastinal strip and the spine."""
    g, s, lab = sc.g, sc.s, sc.lab
    zd = diaphragm_height(sc)
    sc.zd = zd
    hw = sc.stream(2).uniform(15.0, 22.0)  # half-width of the mediastinal strip between the lungs
    t_ant = np.clip((g.y - s["y_vb"]) / np.maximum(s["y_ant"] - s["y_vb"], 1.0), 0.0, 1.0)
    strip = (np.abs(g.x - s["x_s"]) < hw * (1.0 - 0.6 * t_ant)) & (g.y > s["y_vb"] - s["dv"] / 2.0)
    spine = (np.abs(g.x - s["x_s"]) < s["wv"] / 2.0 + 6.0) & (g.y < s["y_vb"] + s["dv"] / 2.0 + 4.0)
    lung = sc.inside & (sc.d_out < -1.5) & (g.z > zd) & ~strip & ~spine
    lab[lung] = T.LUNG
    below = sc.inside & (g.z <= zd)
    lab[below & (g.z > zd - 4.0)] = T.MUSCLE  # the diaphragm sheet, 3–5 mm
    lab[below & (g.z <= zd - 4.0)] = T.SOFT_TISSUE
    sc.abdomen = below & (g.z <= zd - 4.0)


def paint_abdomen(sc: Scene) -> None:
    """Visceral fat, liver, stomach with gas, spleen, kidneys and colon gas below the diaphragm."""
    p, g, L, s, lab, o = sc.p, sc.g, sc.L, sc.s, sc.lab, sc.p.organs
    noise = smooth_noise(sc.stream(3), g.shape, 16)
    ab = sc.abdomen
    vf = p.body["visceral_fat"]
    if ab.any():
        thr = float(np.quantile(noise[ab], 1.0 - vf))
        lab[ab & (noise > thr)] = T.FAT
    zR, zL = L.z["dome_right"], L.z["dome_left"]
    secL = L.at(zL)
    # liver: right upper quadrant, left lobe across the midline anteriorly
    t = np.clip((g.y - s["y_post"]) / np.maximum(s["y_ant"] - s["y_post"], 1.0), 0.0, 1.0)
    edge = (1.0 - t) * 15.0 - t * o["liver_left_edge"] * s["A"]
    liver = ab & (g.x > edge) & ((g.x > 0) | (g.z > zR - o["liver_left_bottom"]))
    liver &= ~((np.abs(g.x - s["x_s"]) < s["wv"] / 2.0 + 8.0) & (g.y < s["y_vb"] + s["dv"] / 2.0 + 6.0))
    lab[liver] = T.LIVER
    # stomach under the left dome; supine gas rises anteriorly (+y) above a coronal fluid level
    a, b, c = o["stomach"]
    cst = (-o["stomach_x"] * secL["A"], secL["yc"] + o["stomach_y"] * secL["B"], zL - o["stomach_below"])
    e = ellipsoid(g, cst, (a, b, c), rotation((0.35, 0.25, -1.0), hint=(1.0, 0.0, 0.0)))
    if e is not None:
        sl, q = e
        inside = (q <= 1.0) & (sc.abdomen[sl] | (lab[sl] == T.LIVER))
        paint(lab, sl, inside, T.STOMACH)
        if o["stomach_gas"] > 0:
            y_level = cst[1] + b * (1.0 - 2.0 * o["stomach_gas"])
            gas = inside & (q < (1.0 - 4.0 / min(a, b)) ** 2) & (g.sub(sl)[1] > y_level)
            paint(lab, sl, gas, T.GAS)
    # spleen: posterolateral left, long axis along the 10th rib (postero-superior → antero-inferior)
    cs = (-(secL["A"] - 38.0), secL["yc"] - 0.45 * secL["B"], zL - o["spleen_below"])
    e = ellipsoid(g, cs, o["spleen"], rotation((0.25, 0.6, -0.75), hint=(1.0, 0.0, 0.0)))
    if e is not None:
        sl, q = e
        paint(lab, sl, (q <= 1.0) & sc.abdomen[sl], T.SPLEEN)
    # kidneys: paravertebral, upper poles T11–T12, the right lower
    for side, key in ((1.0, "kidney_right"), (-1.0, "kidney_left")):
        half = o["kidney"][0]
        zc = L.z[key] - half
        sec = L.at(zc)
        ck = (side * (sec["wv"] / 2.0 + 35.0), sec["y_vb"] - 5.0, zc)
        e = ellipsoid(g, ck, o["kidney"], rotation((-side * 0.2, -0.25, -1.0), hint=(1.0, 0.0, 0.0)))
        if e is not None:
            sl, q = e
            paint(lab, sl, (q <= 1.0) & sc.abdomen[sl], T.KIDNEY)
    # splenic flexure of the colon, gas-filled in half of the patients
    if o["colon_gas"]:
        p0 = (-0.72 * secL["A"], secL["yc"] + 0.1 * secL["B"], zL - 75.0)
        p1 = (-0.35 * secL["A"], secL["yc"] + 0.6 * secL["B"], zL - 100.0)
        ok = over(T.SOFT_TISSUE, T.FAT)
        paint_tubes(lab, g, T.SOFT_TISSUE, [p0], [p1], 20.0, over_lut=ok)
        paint_tubes(lab, g, T.GAS, [p0], [p1], 16.0, over_lut=over(T.SOFT_TISSUE))

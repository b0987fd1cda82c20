"""The mediastinum: heart, great vessels, trachea and main bronchi, oesophagus, thyroid.

Heart: its transverse diameter is the drawn cardiothoracic ratio × the cage width (normal 0.38–0.50,
cardiomegaly 0.51–0.65; PAMJ 2017), one quarter to 0.38 of it right of the midline (the right
atrium) and the rest left (ventricles, apex); the long axis points left-anterior-inferior, 35–60°
from the sagittal plane and 15–35° below the axial plane (Gray's Anatomy); LV wall 8–11 mm, RV
wall 3–5 mm; it rests on the diaphragm behind the sternum. Great vessels: ascending aorta up from
the aortic root, the arch over the left main bronchus and LEFT of the trachea, the descending aorta
at the left anterolateral side of the spine (Wolak 2008 diameters), the SVC right of the ascending
aorta, the pulmonary trunk anterior-left, bifurcating below the arch (Truong 2012). Trachea
anterior to the oesophagus (which may hold air), bifurcating at the carina (Breatnach 1984,
Haskin & Goodman 1982).
"""
from __future__ import annotations

import numpy as np

from .body import Scene
from .grid import ellipsoid, local_coords, over, paint, paint_tubes, polyline, rotation
from .tissues import Tissue as T

INSIDE_SOFT = over(T.FAT, T.LUNG, T.SOFT_TISSUE, T.MUSCLE, T.LIVER, T.STOMACH, T.GAS)
NECK_SOFT = over(T.FAT, T.LUNG, T.SOFT_TISSUE, T.MUSCLE, T.THYROID)


def _heart(sc: Scene) -> dict:
    """Paint pericardial fat, ventricles (LV, RV, myocardium) and atria; return key points."""
    p, g, L, lab, h = sc.p, sc.g, sc.L, sc.lab, sc.p.heart
    tcd = h["ctr"] * p.body["cage_width"]
    x_r = h["right_fraction"] * tcd
    x_l = x_r - tcd
    al, be = np.deg2rad(h["azimuth_deg"]), np.deg2rad(h["tilt_deg"])
    u = np.array([-np.sin(al) * np.cos(be), np.cos(al) * np.cos(be), -np.sin(be)])
    R = rotation(u)
    # axes: u long axis (apex), v horizontal ⟂ u (≈ the heart's thin AP dimension), w ≈ vertical (width)
    ratios = np.array([1.0, h["depth_ratio"], h["width_ratio"]])
    hx_unit = np.sqrt(((R[0, :] * ratios) ** 2).sum())
    aL = 0.36 * tcd / hx_unit
    semi = aL * ratios
    half = np.sqrt(((R * semi[None, :]) ** 2).sum(axis=1))  # projected half-extents (x, y, z)
    z_c = L.z["dome_left"] - h["sink"] + half[2]
    sec = L.at(z_c)
    y_min = sec["y_vb"] + sec["dv"] / 2.0 + 2.0 * p.vessels["oesophagus"] + 6.0  # keep clear of the oesophagus
    y_c = max(sec["y_ant"] - half[1] - 5.0, y_min + half[1] * 0.6)
    c_v = np.array([x_l + half[0], y_c, z_c])
    scale = tcd / 135.0
    r_ra, r_la = h["ra_radius"] * scale, h["la_radius"] * scale
    c_ra = np.array([x_r - r_ra, y_c - 0.15 * half[1], z_c + 0.15 * half[2]])
    c_la = np.array([-8.0, max(y_c - 0.75 * half[1], y_min + r_la), z_c + 0.6 * half[2]])
    fat = h["epicardial_fat"]
    parts = [(c_v, semi, R), (c_ra, (r_ra, 0.9 * r_ra, 1.1 * r_ra), None), (c_la, (1.2 * r_la, r_la, 0.9 * r_la), None)]
    ok = sc.inside
    for c, a, rot in parts:  # pericardial / epicardial fat around the whole heart
        e = ellipsoid(sc.g, c, np.asarray(a) + fat, rot)
        if e is not None:
            sl, q = e
            paint(lab, sl, (q <= 1.0) & ok[sl], T.FAT, INSIDE_SOFT)
    for (c, a, rot), blood in zip(parts[1:], (T.BLOOD_RIGHT, T.BLOOD_LEFT)):
        e = ellipsoid(g, c, a, rot)
        if e is not None:
            sl, q = e
            paint(lab, sl, (q <= 1.0) & ok[sl], T.MYOCARDIUM)
            paint(lab, sl, (q <= (1.0 - 2.0 / min(a)) ** 2) & ok[sl], blood)
    e = ellipsoid(g, c_v, semi, R)
    if e is not None:
        sl, q = e
        pu, pv, pw = local_coords(g, sl, c_v, R)
        heart = (q <= 1.0) & ok[sl]
        # LV toward +v (left-posterior), its cavity inside a wall of lv_wall; RV cavity the rest
        lv_c, lv_a = np.array([0.05, 0.3, 0.0]) * semi, np.array([0.92, 0.68, 0.9]) * semi
        qlv = ((pu - lv_c[0]) / lv_a[0]) ** 2 + ((pv - lv_c[1]) / lv_a[1]) ** 2 + ((pw - lv_c[2]) / lv_a[2]) ** 2
        lv_in = np.maximum(lv_a - h["lv_wall"], 2.0)
        qcav = ((pu - lv_c[0]) / lv_in[0]) ** 2 + ((pv - lv_c[1]) / lv_in[1]) ** 2 + ((pw - lv_c[2]) / lv_in[2]) ** 2
        rv_in = np.maximum(semi - h["rv_wall"], 2.0)
        qrv = (pu / rv_in[0]) ** 2 + (pv / rv_in[1]) ** 2 + (pw / rv_in[2]) ** 2
        paint(lab, sl, heart, T.MYOCARDIUM)
        paint(lab, sl, heart & (qrv <= 1.0) & (qlv > 1.0), T.BLOOD_RIGHT)
        paint(lab, sl, heart & (qcav <= 1.0), T.BLOOD_LEFT)
    sc.info["heart"] = {"transverse_mm": round(float(tcd), 1), "ctr": round(float(h["ctr"]), 3),
                        "centre_mm": [round(float(v), 1) for v in c_v]}
    base = c_v - 0.75 * aL * u
    return {"base": base, "c_v": c_v, "ra": c_ra, "r_ra": r_ra, "la": c_la, "r_la": r_la, "u": u}


def paint_mediastinum(sc: Scene) -> None:
    """Heart, great vessels, oesophagus, trachea and main bronchi, thyroid; sets the lung-tree roots."""
    p, g, L, lab, v = sc.p, sc.g, sc.L, sc.lab, sc.p.vessels
    hp = _heart(sc)
    z_top = L.half_z + 20.0
    z_bot = -L.half_z - 20.0
    z_car, z_arch = L.z["carina"], L.z["arch_top"]
    car = L.at(z_car)
    r_tr, r_oe = v["trachea"], v["oesophagus"]

    def y_oes(z):
        s = L.at(z)
        return s["y_vb"] + s["dv"] / 2.0 + r_oe + 1.0

    def y_tra(z):
        return y_oes(z) + r_oe + r_tr + 3.0

    def xs(z):
        return L.at(z)["x_s"]

    # oesophagus: behind the trachea, drifting left and anterior to pass the hiatus into the stomach
    zL = L.z["dome_left"]
    secL = L.at(zL)
    oes = [(xs(z_top) + 3.0, y_oes(z_top), z_top), (xs(z_car) + 2.0, y_oes(z_car), z_car),
           (xs(zL + 20.0) - 15.0, y_oes(zL + 20.0) + 12.0 + v["descending"], zL + 20.0),
           (-30.0, secL["yc"] + 0.1 * secL["B"], zL - 25.0)]
    # descending aorta at the left anterolateral side of the vertebral bodies, midline below the hiatus
    def desc(z, dx):
        s = L.at(z)
        return (s["x_s"] - dx, s["y_vb"] + 0.2 * s["dv"] + 0.6 * v["descending"], z)
    da = [desc(z_car + 5.0, car["wv"] / 2.0 + 0.5 * v["descending"]),
          desc(0.5 * (z_car + zL), L.at(zL)["wv"] / 2.0 + 0.3 * v["descending"]), desc(zL, 8.0), desc(z_bot, 5.0)]
    ao0 = hp["base"] + np.array([v["aortic_root_x"] * 0.3, 0.0, 5.0])
    ytr_car = y_tra(z_car)
    arch = [tuple(ao0), (v["aortic_root_x"] + 10.0, ao0[1] + 5.0, z_car - 10.0),
            (4.0, ytr_car + 12.0, z_arch - v["ascending"]), (-v["arch_left"], ytr_car - 2.0, z_arch - v["ascending"] - 8.0),
            da[0]]
    svc_top = (v["svc_x"], ao0[1] + 5.0, z_arch + 20.0)
    ra, r_ra = hp["ra"], hp["r_ra"]
    # fat sleeve around the mediastinal tubes, then the tubes (later paints win)
    lines = [  # (points, radius, label)
        (oes, r_oe, T.OESOPHAGUS),
        (da, v["descending"], T.BLOOD_LEFT),
        (arch, np.linspace(v["ascending"], v["descending"], len(arch)), T.BLOOD_LEFT),
        ([arch[2], (20.0, ytr_car + 14.0, z_top)], 1.3 * v["branch"], T.BLOOD_LEFT),  # brachiocephalic trunk
        ([arch[2], (-22.0, ytr_car + 8.0, z_top)], v["branch"], T.BLOOD_LEFT),  # left common carotid
        ([arch[3], (-45.0, ytr_car - 5.0, z_top)], v["branch"], T.BLOOD_LEFT),  # left subclavian
        ([(v["svc_x"] + 15.0, ao0[1], z_top), svc_top], 0.7 * v["svc"], T.BLOOD_RIGHT),  # right brachiocephalic v.
        ([(-60.0, L.at(z_arch + 25.0)["y_ant"] - 20.0, z_arch + 25.0), svc_top], 0.6 * v["svc"], T.BLOOD_RIGHT),
        ([svc_top, (ra[0], ra[1], ra[2] + 0.6 * r_ra)], v["svc"], T.BLOOD_RIGHT),
        ([(ra[0], ra[1] - 10.0, ra[2] - 0.6 * r_ra), (L.at(z_bot)["x_s"] + 25.0, L.at(z_bot)["y_vb"] + 25.0, z_bot)],
         v["ivc"], T.BLOOD_RIGHT),
    ]
    pt0 = (ao0[0] - 25.0, ao0[1] + 15.0, ao0[2] - 5.0)
    bif = (-20.0, ytr_car + 25.0, z_car - 15.0)
    hil_r = (car["A"] * 0.35 + 15.0, ytr_car - 5.0, z_car - 25.0)
    hil_l = (-(car["A"] * 0.35 + 15.0), ytr_car - 5.0, z_car - 15.0)  # left hilum higher [FEL]
    r_pa = 0.75 * v["pulmonary_trunk"]
    lines += [([pt0, bif], v["pulmonary_trunk"], T.BLOOD_RIGHT),
              ([bif, (10.0, ytr_car + 18.0, z_car - 20.0), hil_r], r_pa, T.BLOOD_RIGHT),
              ([bif, (-35.0, ytr_car, z_car - 5.0), hil_l], r_pa, T.BLOOD_RIGHT)]
    def batch(items, pad):
        return [np.concatenate(c) for c in zip(*[polyline(pts, np.asarray(r) + pad) for pts, r, _ in items])]

    paint_tubes(lab, g, T.FAT, *batch(lines, 4.0), over_lut=over(T.LUNG))
    for label in (T.OESOPHAGUS, T.BLOOD_RIGHT, T.BLOOD_LEFT):  # later labels win where tubes touch
        paint_tubes(lab, g, label, *batch([ln for ln in lines if ln[2] == label], 0.0),
                    over_lut=INSIDE_SOFT | over(T.OESOPHAGUS, T.BLOOD_LEFT, T.BLOOD_RIGHT))
    if v["oesophagus_air"] > 0:
        a, b, r0, r1 = polyline(oes[:3], v["oesophagus_air"])
        paint_tubes(lab, g, T.GAS, a, b, r0, r1, over_lut=over(T.OESOPHAGUS))

    # trachea and main bronchi: wall, then air
    tra = [(xs(z_top) + 2.0, y_tra(z_top), z_top), (xs(z_car) + 2.0, ytr_car, z_car)]
    car_pt = np.array(tra[-1])
    ar, al = np.deg2rad(v["angle_right_deg"]), np.deg2rad(v["angle_left_deg"])
    rmb = car_pt + 22.0 * np.array([np.sin(ar), -0.15, -np.cos(ar)])
    lmb = car_pt + 45.0 * np.array([-np.sin(al), -0.15, -np.cos(al)])
    airways = [(tra, r_tr), ([tra[-1], tuple(rmb)], v["bronchus_right"]), ([tra[-1], tuple(lmb)], v["bronchus_left"])]
    for pts, r in airways:
        a, b, r0, r1 = polyline(pts, r + 2.0)
        paint_tubes(lab, g, T.AIRWAY_WALL, a, b, r0, r1, over_lut=NECK_SOFT)
    for pts, r in airways:
        a, b, r0, r1 = polyline(pts, r)
        paint_tubes(lab, g, T.AIRWAY, a, b, r0, r1, over_lut=NECK_SOFT | over(T.AIRWAY_WALL))
    # thyroid lobes either side of the trachea, below the cricoid (only the lower poles are scanned)
    for side in (1.0, -1.0):
        zt = L.z["T1"] + 25.0
        e = ellipsoid(g, (side * (r_tr + 12.0) + xs(zt), y_tra(zt) + 4.0, zt), p.organs["thyroid"])
        if e is not None:
            sl, q = e
            paint(lab, sl, q <= 1.0, T.THYROID, over(T.MUSCLE, T.FAT, T.SOFT_TISSUE))

    # roots of the lobar bronchovascular trees (upper, middle/lingula, lower) and pulmonary veins
    # segmental roots: apical, posterior, anterior (upper lobe), lateral/medial (middle lobe or
    # lingula), superior, and three basal (lower lobe) — directions from the hilum (Gray's Anatomy)
    seg_dirs = ((0.3, 0.0, 1.0), (0.5, -0.6, 0.6), (0.6, 0.7, 0.4), (0.7, 0.6, -0.3), (0.3, 0.8, -0.5),
                (0.4, -0.9, 0.0), (0.6, 0.2, -0.8), (0.7, -0.4, -0.6), (0.3, -0.6, -0.8))
    roots = []
    for side, mb, r_b in ((1.0, rmb, v["bronchus_right"]), (-1.0, lmb, v["bronchus_left"])):
        start = mb + np.array([side * 8.0, 0.0, -5.0])
        for d in seg_dirs:
            dd = np.array([side * d[0], d[1], d[2]])
            roots.append((start, dd / np.linalg.norm(dd), 0.55 * r_b, "airway"))
        for d, dz in (((0.8, 0.1, 0.6), 8.0), ((0.8, -0.3, 0.2), 4.0), ((0.7, -0.2, -0.6), -10.0), ((0.6, 0.3, -0.7), -6.0)):
            start = hp["la"] + np.array([side * hp["r_la"], 0.0, dz])
            dd = np.array([side * d[0], d[1], d[2]])
            roots.append((start, dd / np.linalg.norm(dd), 0.4 * r_pa, "vein"))
    sc.tree_roots = roots
    sc.info["landmarks_mm"] = {"carina_z": round(z_car, 1), "arch_top_z": round(z_arch, 1),
                               "aortic_arch_left_x": round(-v["arch_left"], 1),
                               "hilum_right": [round(c, 1) for c in hil_r], "hilum_left": [round(c, 1) for c in hil_l]}

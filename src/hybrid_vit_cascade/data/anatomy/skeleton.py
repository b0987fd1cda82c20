"""Bones: vertebrae (bodies, discs, canal, posterior elements), ribs and costal cartilage, sternum,
clavicles, scapulae and humeri.

Vertebral bodies per level from Panjabi 1991 (widths 27→40 mm, depths 16→30 mm, heights 15→23 mm
T1→T12; discs 4–7 mm thoracic), spinal canal 14–18 mm (AP), thoracic spinous processes 30–45 mm
long sloping down, transverse processes reaching the rib tubercles. Ribs: 12 pairs leaving the spine
at their vertebra's level and descending 6–9 cm toward their anterior end (Gray's), 6–8 mm thick and
10–13 mm high, ribs 1–7 joining the sternum by cartilage, 8–10 the costal margin, 11–12 floating.
Sternum: manubrium 50–60 mm wide from the jugular notch to the sternal angle, body 25–35 mm wide to
the xiphisternal joint, 10–14 mm thick. Clavicle 13–16 cm, 12–16 mm thick, from the manubrium to the
acromion; scapula from T2 to T7–T8, its medial border 4.5–6.5 cm from the spinous processes
(upward-rotated with raised arms); humeral head radius 19–26 mm (Iannotti 1992), shaft 9–13 mm.
"""
from __future__ import annotations

import numpy as np

from .body import Scene
from .grid import ellipsoid, over, paint, paint_tubes, polyline
from .patient import LEVELS, T1
from .tissues import Tissue as T

SOFT = over(T.FAT, T.MUSCLE, T.SOFT_TISSUE, T.SKIN, T.LUNG, T.LIVER, T.KIDNEY, T.GLAND, T.CSF_CORD)


def _bone_tubes(sc: Scene, pts, r: float, shell: float = 2.0, core=T.CANCELLOUS, lut=SOFT) -> None:
    a, b, r0, r1 = polyline(pts, r)
    paint_tubes(sc.lab, sc.g, T.CORTICAL, a, b, r0, r1, over_lut=lut)
    if r - shell > 0:
        a, b, r0, r1 = polyline(pts, r - shell)
        paint_tubes(sc.lab, sc.g, core, a, b, r0, r1, over_lut=over(T.CORTICAL))


def paint_spine(sc: Scene) -> None:
    """Vertebral bodies with discs, spinal canal, laminae, spinous and transverse processes."""
    g, s, L, lab = sc.g, sc.s, sc.L, sc.lab
    rng = sc.stream(4)
    rc, lam = rng.uniform(7.0, 9.0), rng.uniform(5.0, 7.0)
    zmax = float(np.max(s["y_vb"]))
    sl = g.box((-90.0, float(np.min(s["y_post"])) - 90.0, -1e4), (90.0, zmax + 40.0, 1e4))
    if sl is None:
        return
    x, y, _ = g.sub(sl)
    zz = g.axes[2][sl[2]].astype(np.float64)
    k, frac = L.vertebra(zz)
    in_body = (frac < L.body_fraction(k))[None, None, :]
    ss = {n: v[:, :, sl[2]] for n, v in s.items()}
    q = ((x - ss["x_s"]) / (ss["wv"] / 2.0)) ** 2 + ((y - ss["y_vb"]) / (ss["dv"] / 2.0)) ** 2
    view = lab[sl]
    ok = SOFT[view] | (view == T.FAT)
    vb = (q <= 1.0) & ok
    near_plate = (np.minimum(frac, L.body_fraction(k) - frac) * L.pitch[k] < 1.5)[None, None, :]
    view[vb & in_body] = T.CANCELLOUS
    if g.h <= 3.0:  # the ≈ 1.5–2 mm cortex and end plates only where voxels can resolve them (else partial volume)
        view[vb & in_body & ((q > (1.0 - 2.0 / (ss["dv"] / 2.0)) ** 2) | near_plate)] = T.CORTICAL
    view[vb & ~in_body] = T.DISC
    yc = ss["y_vb"] - ss["dv"] / 2.0 - rc - 1.5
    rr = np.sqrt((x - ss["x_s"]) ** 2 + (y - yc) ** 2)
    arch = (rr > rc) & (rr <= rc + lam) & (y < ss["y_vb"] - ss["dv"] / 2.0 + 2.0) & (frac < 0.65)[None, None, :]
    view[arch & SOFT[view]] = T.CORTICAL
    view[(rr <= rc) & (SOFT[view] | (view == T.CORTICAL))] = T.CSF_CORD
    # processes per level: spinous (sloping down in the thoracic spine) and transverse
    p0s, p1s, t0s, t1s = [], [], [], []
    for i, name in enumerate(LEVELS):
        zm = L.tops[i] - 0.4 * L.pitch[i]
        sec = L.at(zm)
        ycl = sec["y_vb"] - sec["dv"] / 2.0 - rc - 1.5
        thoracic = name.startswith("T")
        drop = rng.uniform(15.0, 25.0) if thoracic else 5.0
        p0s.append((sec["x_s"], ycl - rc - lam / 2.0, zm))
        p1s.append((sec["x_s"], ycl - rc - rng.uniform(30.0, 45.0), zm - drop))
        for side in (1.0, -1.0):
            t0s.append((sec["x_s"] + side * (rc + 3.0), ycl, zm))
            t1s.append((sec["x_s"] + side * (sec["wv"] / 2.0 + 22.0), ycl - 8.0, zm + 3.0))
    paint_tubes(lab, g, T.CORTICAL, np.array(p0s), np.array(p1s), 4.5, over_lut=SOFT)
    paint_tubes(lab, g, T.CORTICAL, np.array(t0s), np.array(t1s), 5.0, over_lut=SOFT)


def paint_ribs(sc: Scene) -> None:
    """12 rib pairs in the chest-wall band outside the cage, costal cartilages, and the sternum."""
    g, L, lab, b = sc.g, sc.L, sc.lab, sc.p.body
    rng = sc.stream(5)
    band = (sc.d_out > -2.0) & (sc.d_out < b["rib_band"] + 2.0) & sc.body
    idx = np.flatnonzero(band)
    ny, nz = g.shape[1], g.shape[2]
    zz = g.axes[2][idx % nz].astype(np.float64)
    xx = g.axes[0][idx // (ny * nz)]
    dr = sc.d_out.reshape(-1)[idx] - b["rib_band"] / 2.0
    phi = np.arccos(np.clip(sc.cpost.reshape(-1)[idx], -1.0, 1.0)) / np.pi  # 0 posterior .. 1 anterior
    drop = rng.uniform(70.0, 95.0) * sc.p.levels["pitch"][T1] / 20.0
    flat = lab.reshape(-1)
    for k in range(1, 13):
        lv = T1 + k - 1
        z_post = L.tops[lv] - 0.3 * L.pitch[lv]
        dk = drop * (0.35 if k == 1 else 0.5 + 0.5 * min(k, 7) / 7.0 if k <= 7 else 1.1)
        zr = z_post - dk * phi**1.2
        rd = (dr / 3.5) ** 2 + ((zz - zr) / 6.0) ** 2
        bone_end = rng.uniform(0.72, 0.78) if k <= 7 else 0.7 if k <= 10 else 0.5 if k == 11 else 0.4
        cart_end = 0.93 if k <= 7 else 0.85 if k <= 10 else bone_end
        on = (rd <= 1.0) & (phi > 0.06)
        bone = on & (phi < bone_end)
        sel = idx[bone]
        flat[sel] = np.where(rd[bone] > 0.45, T.CORTICAL, T.CANCELLOUS)
        flat[idx[on & (phi >= bone_end) & (phi < cart_end)]] = T.CARTILAGE
    # sternum: manubrium, body, xiphoid at the anterior midline of the band
    zl = L.z
    zx, za, zn = zl["xiphoid"], zl["sternal_angle"], zl["notch"]
    w = np.where(zz > za, np.interp(zz, [za, zn], [38.0, 55.0]), np.where(zz > zx, rng.uniform(25.0, 35.0), 15.0))
    st = (np.abs(xx) < w / 2.0) & (phi > 0.85)
    st &= (zz < zn) & (zz > zx - 35.0) & (sc.d_out.reshape(-1)[idx] > -1.0) & (sc.d_out.reshape(-1)[idx] < rng.uniform(10.0, 14.0))
    core = st & (np.abs(dr) < b["rib_band"] / 2.0 - 1.5)
    flat[idx[st]] = T.CORTICAL if g.h <= 3.0 else T.CANCELLOUS  # thin cortex: resolved only on fine grids
    flat[idx[core]] = T.CANCELLOUS


def paint_shoulders(sc: Scene) -> None:
    """Clavicles, scapulae (body plate, spine, acromion, glenoid neck) and humeri."""
    g, L, lab, b = sc.g, sc.L, sc.lab, sc.p.body
    rng = sc.stream(6)
    x_hh, y_hh, z_hh = sc.humeral_head
    raised = sc.p.arms == "raised"
    zn = L.z["notch"]
    sec_n = L.at(zn)
    rh = b["humeral_head"]
    for side in (1.0, -1.0):
        # clavicle: sternoclavicular joint → anterior bow → acromioclavicular joint
        sc_j = (side * rng.uniform(18.0, 25.0), sec_n["y_ant"] + 8.0, zn + 3.0)
        ac = (side * (b["shoulder_half"] - 15.0), y_hh - 5.0, z_hh + 30.0 + (20.0 if raised else 0.0))
        mid = (0.5 * (sc_j[0] + ac[0]), sec_n["y_ant"] + 18.0, 0.5 * (sc_j[2] + ac[2]) + 5.0)
        _bone_tubes(sc, [sc_j, mid, ac], b["clavicle_radius"])
        # scapula body: a thin plate on the posterolateral chest wall
        z_top, z_bot = L.z["scapula_top"], L.z["scapula_bottom"]
        x_med = rng.uniform(45.0, 65.0) + (30.0 if raised else 0.0)
        x_gl = x_hh - rh - 5.0
        s0 = rng.uniform(5.0, 10.0)
        sl = g.box((min(side * x_med, side * x_gl) - 5, -1e4, z_bot), (max(side * x_med, side * x_gl) + 5, 1e4, z_top))
        if sl is not None:
            x, y, z = g.sub(sl)
            t = np.clip((z - z_bot) / max(z_top - z_bot, 1.0), 0.0, 1.0)
            x_lat = x_med + (x_gl - x_med) * t**0.7
            ax = side * x
            dd = sc.d_out[sl] - b["rib_band"] - s0
            plate = (ax >= x_med) & (ax <= x_lat) & (dd >= 0.0) & (dd <= 3.5) & (sc.cpost[sl] > 0.2)
            paint(lab, sl, plate, T.CORTICAL, SOFT)
        sec_t = L.at(z_top - 25.0)
        y_pl = sec_t["yc"] - sec_t["B"] * np.sqrt(max(0.0, 1.0 - (x_med / max(sec_t["A"], 1.0)) ** 2)) - b["rib_band"] - 12.0
        spine_end = (side * (x_hh - 10.0), y_hh - 35.0, z_hh + 25.0)
        _bone_tubes(sc, [(side * x_med, y_pl, z_top - 25.0), spine_end, (side * (x_hh + 5.0), y_hh - 10.0, z_hh + 30.0)], 5.5)
        _bone_tubes(sc, [(side * x_gl, y_pl + 10.0, z_top - 15.0), (side * (x_hh - 0.9 * rh), y_hh - 5.0, z_hh)], 9.0)
        # humerus: head (cortical shell over cancellous bone) and shaft (fatty marrow)
        e = ellipsoid(g, (side * x_hh, y_hh, z_hh), (rh, rh, rh))
        if e is not None:
            sl, q = e
            paint(lab, sl, q <= 1.0, T.CORTICAL, SOFT)
            paint(lab, sl, q <= (1.0 - 2.0 / rh) ** 2, T.CANCELLOUS, over(T.CORTICAL))
        a0, a1 = sc.arm_axes
        i = 0 if side > 0 else 2  # upper-arm segment of this side
        _bone_tubes(sc, [a0[i], a1[i]], b["humerus_radius"], shell=3.5, core=T.MARROW)

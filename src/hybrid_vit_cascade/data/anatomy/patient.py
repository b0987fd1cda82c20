"""One synthetic patient drawn from a seed: habitus, skeleton landmarks, organ sizes, pose, pathologies.

Everything here is independent of the voxel grid, so a seed is the same patient at any size and the
sidecar JSON can record it. Sources of the ranges (docs/PHANTOMS.md has the full table):
  [ICRP]  ICRP Publication 89 (2002), reference adult male/female organ masses and sizes.
  [GRAY]  Gray's Anatomy (41st ed.): thoracic inlet ≈ 10–12 × 5 cm, heart ≈ 12 × 8.5 × 6 cm,
          vertebral levels of the carina (T4–T5), sternal angle (T4–T5), jugular notch (T2–T3).
  [PJ]    Panjabi et al., Spine 1991;16:888: thoracic vertebral body heights 15–23 mm, widths
          27–40 mm, depths 16–30 mm (T1→T12).
  [PAMJ]  Pan African Med J 2017;27:201 (1047 adult PA radiographs): internal thoracic diameter
          29.7 ± 2.7 cm (men), 27.1 ± 2.6 cm (women); cardiothoracic ratio 46.6 ± 3.9 % / 47.8 ± 4.8 %,
          > 50 % = cardiomegaly.
  [HAL]   Haller et al., J Pediatr Surg 1987;22:904: transverse / sternovertebral depth ≈ 2.5 (normal).
  [FEL]   Felson, Principles of Chest Roentgenology: right hemidiaphragm 1–2 cm (up to 3 cm) higher
          than the left; domes at the 10th posterior rib (T10–T11 level) at inspiration; left hilum higher.
  [BRE]   Breatnach et al., AJR 1984;142:903: tracheal coronal diameter 13–25 mm (men), 10–21 mm (women).
  [HG]    Haskin & Goodman, AJR 1982;139:879: tracheal bifurcation angle 61 ± 12°, right bronchus steeper.
  [WOL]   Wolak et al., JACC Cardiovasc Imaging 2008;1:200: ascending aorta ≈ 30–37 mm, descending
          ≈ 22–28 mm in adults.
  [TRU]   Truong et al., Circ Cardiovasc Imaging 2012;5:147 (Framingham): pulmonary trunk normal
          ≤ 29 mm (men), ≤ 27 mm (women).
  [IAN]   Iannotti et al., JBJS Am 1992;74:491: humeral head radius of curvature 19–28 mm.
  [ANS]   ANSUR II anthropometric survey (2012): biacromial breadth ≈ 40 cm (men), 36 cm (women).
  [WHO]   WHO BMI classes (< 18.5 thin, 18.5–25 normal, 25–30 overweight, ≥ 30 obese); adult BMI
          ≈ 27 ± 5 in Europe/North America (NCD-RisC, Lancet 2016).
  [BIR]   ACR BI-RADS Atlas 5th ed.; Sprague et al., JNCI 2014;106:dju255: breast density categories
          a/b/c/d in ≈ 10/43/39/8 % of women.
  [LI]    Li et al., AJR 2007;188:547: most patients are off the isocentre, on average 2–3 cm low.
  [BTS]   Callister et al., BTS nodule guideline, Thorax 2015;70 suppl 2, table 6: nodules in 13 % (2–24 %)
          of incidental CTs and 33 % (17–53 %) of screening CTs.
  [FLS]   MacMahon et al., Fleischner 2017, Radiology 2017;284:228: nodule size classes < 6, 6–8, > 8 mm;
          subsolid (ground-glass, part-solid) nodules a minority.
  [MOY]   Moy et al., Chest 2013;143:1054: effusion AP depth < 3 cm small, 3–10 cm moderate, > 10 large.
Rates of effusion, consolidation, atelectasis and cardiomegaly are the generator's choice for a mixed
in- and outpatient chest-CT population (common enough to be learnt); they are not a cited prevalence.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .tissues import PHASE_WEIGHTS, PHASES, draw_tissue_hu

# Vertebral levels from the neck to the upper lumbar spine, and each level's pitch (body height +
# disc, mm) for a reference adult man [PJ], [GRAY]; scaled per patient by sex and stature.
LEVELS = ("C6", "C7") + tuple(f"T{i}" for i in range(1, 13)) + ("L1", "L2", "L3")
PITCH_MM = np.array([19, 20, 20, 21, 21, 21.5, 22.5, 23, 24, 24.5, 25, 26.5, 28, 30, 34, 36, 37], dtype=float)
BODY_FRACTION = np.array([0.74, 0.75] + [0.8] * 12 + [0.72] * 3)  # body height / pitch (rest is disc)
BODY_WIDTH_MM = np.interp(np.arange(17), [0, 2, 13, 16], [23, 27, 40, 47])  # [PJ]
BODY_DEPTH_MM = np.interp(np.arange(17), [0, 2, 13, 16], [16, 16, 30, 34])  # [PJ]
T1 = LEVELS.index("T1")

RATES = {"nodules": 0.25, "effusion": 0.12, "consolidation": 0.10, "atelectasis": 0.20, "cardiomegaly": 0.12}
TABLE_KINDS, TABLE_WEIGHTS = ("curved", "flat", "none"), (0.55, 0.25, 0.20)  # generator choice
NODULE_TYPES, NODULE_WEIGHTS = ("solid", "ground-glass", "part-solid", "calcified"), (0.70, 0.12, 0.10, 0.08)


@dataclass
class Patient:
    """A drawn patient: scalar parameters (mm, degrees, HU) grouped by topic; see `draw_patient`."""

    seed: int
    sex: str
    bmi: float
    arms: str
    table: str
    phase: str
    hu: dict
    body: dict = field(default_factory=dict)
    heart: dict = field(default_factory=dict)
    vessels: dict = field(default_factory=dict)
    organs: dict = field(default_factory=dict)
    pose: dict = field(default_factory=dict)
    levels: dict = field(default_factory=dict)  # depth (mm below the scan top) of landmarks
    pathology: dict = field(default_factory=dict)
    extent: tuple = (400.0, 400.0, 340.0)

    @property
    def habitus(self) -> str:
        """WHO class of the BMI [WHO]."""
        return "thin" if self.bmi < 18.5 else "normal" if self.bmi < 25 else "overweight" if self.bmi < 30 else "obese"


def _clipped_normal(rng, mean, sd, lo, hi):
    return float(np.clip(rng.normal(mean, sd), lo, hi))


def draw_patient(seed: int, reference_pose: bool = False) -> Patient:
    """Draw every grid-independent parameter of phantom `seed` (fixed draw order: reproducible).

    `reference_pose`: the same patient centred on the isocentre, unrotated, arms raised (the standard
    chest-CT position; every draw is still made, so nothing else changes), for checks that need a known pose.
    """
    rng = np.random.default_rng([int(seed), 101])
    u = lambda a, b: float(rng.uniform(a, b))  # noqa: E731
    male = bool(rng.uniform() < 0.5)
    sex = "M" if male else "F"
    bmi = _clipped_normal(rng, 27.0, 5.0, 16.0, 48.0)  # [WHO]
    drawn_arms = "raised" if rng.uniform() < 0.75 else "sides"  # chest CT is done arms up unless the patient can't
    arms = "raised" if reference_pose else drawn_arms
    table = str(rng.choice(TABLE_KINDS, p=TABLE_WEIGHTS))
    phase = str(rng.choice(PHASES, p=PHASE_WEIGHTS))
    hu = draw_tissue_hu(rng, phase)

    # --- skeleton and landmarks: depth below the scan's top edge, mm
    stature = _clipped_normal(rng, 1.0, 0.04, 0.9, 1.1) * (0.96 if male else 0.9)
    pitch = PITCH_MM * stature
    d_apex = u(10.0, 35.0)  # scan starts a little above the lung apices
    d_t1 = d_apex + u(5.0, 20.0)  # apex rises above T1 inside the first rib [GRAY]
    tops = d_t1 + np.concatenate([[0.0], np.cumsum(pitch)])[:-1] - np.sum(pitch[:T1])

    def level(pos: float) -> float:  # depth of a fractional level, e.g. T4.5 → pos = index(T4) + 0.5
        return float(np.interp(pos, np.arange(len(LEVELS)), tops))

    lv = {"apex": d_apex, "T1": d_t1}
    lv["carina"] = level(T1 + 4 + float(np.clip(rng.normal(0.0, 0.4), -1, 1)))  # T4–T5 disc [GRAY]
    lv["dome_right"] = level(T1 + 9 + float(np.clip(rng.normal(0.5, 0.5), -0.5, 1.5)))  # T10–T11 [FEL]
    lv["dome_left"] = lv["dome_right"] + _clipped_normal(rng, 15.0, 5.0, 5.0, 28.0)  # right 1–2 cm higher [FEL]
    lv["recess"] = lv["dome_left"] + u(45.0, 75.0)  # posterior costophrenic sulcus ≈ T12–L1
    lv["bottom"] = lv["recess"] + u(30.0, 60.0)  # chest CT covers the adrenals, 3–6 cm below the sulcus
    lv["notch"] = level(T1 + 1.6 + u(-0.3, 0.3))  # jugular notch T2–T3 [GRAY]
    lv["sternal_angle"] = level(T1 + 3.8 + u(-0.3, 0.3))  # T4–T5 [GRAY]
    lv["xiphoid"] = level(T1 + 8.3 + u(-0.4, 0.4))  # xiphisternal joint ≈ T9
    head = level(T1 + 0.5 + u(-0.4, 0.4))
    # drawn only if the seed raises the arms, so later draws stay aligned; a reference pose that raises
    # arms the seed keeps down takes the range's middle
    lift = u(20.0, 40.0) if drawn_arms == "raised" else 30.0
    lv["humeral_head"] = head - (lift if arms == "raised" else 0.0)
    lv["scapula_top"] = level(T1 + 1.0 + u(-0.3, 0.3)) - (15.0 if arms == "raised" else 0.0)
    lv["scapula_bottom"] = level(T1 + 6.5 + u(-0.4, 0.4)) - (20.0 if arms == "raised" else 0.0)
    lv["kidney_left"] = level(T1 + 10.5 + u(-0.5, 0.5))  # upper pole T11–T12
    lv["kidney_right"] = lv["kidney_left"] + u(10.0, 25.0)
    lv["arch_top"] = lv["carina"] - u(15.0, 35.0)  # arch above the carina (T4) [GRAY]
    lv["tops"] = [float(t) for t in tops]
    lv["pitch"] = [float(p) for p in pitch]
    extent_z = float(lv["bottom"])

    # --- habitus: rib cage, chest wall, fat [PAMJ], [HAL], [WHO]
    # internal rib-to-rib width: the radiographic 29.7 / 27.1 cm over the ≈ 1.065 magnification of a
    # 180 cm PA film at the lateral rib margins (≈ 11 cm from the detector)
    width = _clipped_normal(rng, 279.0 if male else 254.0, 25.0 if male else 24.0, 205.0, 330.0)
    fat = float(np.clip((2.6 * (bmi - 17.0) + rng.normal(0.0, 3.0)) * (1.0 if male else 1.15), 2.0, 65.0))
    body = {
        "cage_width": width, "haller": _clipped_normal(rng, 2.56, 0.3, 1.9, 3.3),
        "inlet_ratio": u(0.36, 0.44), "inlet_depth": u(45.0, 60.0),  # inlet ≈ 10–12 × 5 cm [GRAY]
        "widest_above_dome": u(0.0, 30.0), "gutter": u(18.0, 30.0), "kyphosis": u(5.0, 18.0),
        "scoliosis": _clipped_normal(rng, 0.0, 3.0, -10.0, 10.0), "scoliosis_phase": u(0.0, np.pi),
        "rib_band": u(9.0, 12.0), "fat": fat, "muscle_pec": u(10.0, 25.0) * (1.0 if male else 0.75),
        "muscle_lat": u(8.0, 18.0), "muscle_para": u(35.0, 55.0), "muscle_post": u(12.0, 25.0),
        "visceral_fat": float(np.clip((bmi - 18.0) / 25.0, 0.05, 0.6)) * (1.0 if male else 0.7),
        "shoulder_half": _clipped_normal(rng, 203.0 if male else 183.0, 10.0, 160.0, 230.0),  # [ANS]
        "neck": (u(50.0, 65.0) * (1.0 if male else 0.9), u(48.0, 60.0) * (1.0 if male else 0.9)),
        "arm_radius": float(np.clip(rng.normal(45.0 if male else 41.0, 4.0) + 0.5 * fat, 35.0, 80.0)),
        "humerus_radius": u(10.0, 13.0) if male else u(9.0, 11.5),
        "humeral_head": u(22.0, 26.0) if male else u(19.0, 23.0),  # [IAN]
        "clavicle_radius": u(6.0, 8.0), "arm_gap": u(0.0, 25.0), "arm_angle": u(-15.0, 20.0),
        "dome_rise": u(20.0, 40.0),
    }
    if not male:  # supine breasts: volume, BI-RADS density, flattening, lateral fall [BIR]
        cat = str(rng.choice(("a", "b", "c", "d"), p=(0.10, 0.43, 0.39, 0.08)))
        body["breast"] = {
            "volume_ml": float(np.clip(np.exp(rng.normal(np.log(450.0) + 0.04 * (bmi - 24.0), 0.45)), 120.0, 2000.0)),
            "density": cat, "gland_fraction": {"a": u(0.02, 0.2), "b": u(0.2, 0.45), "c": u(0.45, 0.7), "d": u(0.7, 0.9)}[cat],
            "offset_x": u(60.0, 90.0), "fall": u(5.0, 25.0), "flatness": u(0.45, 0.8), "below_angle": u(60.0, 100.0),
        }

    # --- heart [PAMJ], [GRAY], [ICRP]
    cardiomegaly = bool(rng.uniform() < RATES["cardiomegaly"])
    ctr = u(0.51, 0.65) if cardiomegaly else _clipped_normal(rng, 0.466 if male else 0.478, 0.04, 0.38, 0.50)
    heart = {"ctr": ctr, "right_fraction": u(0.25, 0.38), "azimuth_deg": u(35.0, 60.0), "tilt_deg": u(15.0, 35.0),
             "width_ratio": u(0.72, 0.85), "depth_ratio": u(0.55, 0.7), "lv_wall": u(8.0, 11.0), "rv_wall": u(3.0, 5.0),
             "epicardial_fat": u(2.0, 5.0) + 0.15 * fat, "sink": u(0.0, 15.0), "ra_radius": u(24.0, 32.0),
             "la_radius": u(18.0, 25.0)}

    # --- vessels and airways: diameters halved to radii [WOL], [TRU], [BRE], [HG]
    vessels = {
        "ascending": _clipped_normal(rng, 16.5 if male else 15.5, 1.5, 13.0, 20.0),
        "descending": _clipped_normal(rng, 12.5 if male else 11.5, 1.2, 9.5, 15.0),
        "pulmonary_trunk": _clipped_normal(rng, 12.5 if male else 12.0, 1.2, 9.5, 14.5),
        "svc": u(7.5, 12.0), "ivc": u(9.0, 13.0), "branch": u(4.0, 6.5),
        "trachea": (u(7.5, 11.0) if male else u(6.0, 9.5)), "bronchus_right": u(6.0, 8.0), "bronchus_left": u(5.0, 7.0),
        "angle_right_deg": u(20.0, 35.0), "angle_left_deg": u(35.0, 50.0),
        "oesophagus": u(7.5, 11.0), "oesophagus_air": u(2.0, 6.0) if rng.uniform() < 0.6 else 0.0,
        "aortic_root_x": u(-5.0, 10.0), "arch_left": u(15.0, 30.0), "svc_x": u(25.0, 35.0),
        "tree_key": int(rng.integers(1 << 62)),
    }
    organs = {
        "liver_left_edge": u(0.15, 0.5), "liver_left_bottom": u(70.0, 110.0),
        "stomach": (u(35.0, 55.0), u(30.0, 45.0), u(45.0, 70.0)), "stomach_x": u(0.35, 0.55),
        "stomach_y": u(-0.1, 0.3), "stomach_below": u(40.0, 70.0),
        "stomach_gas": u(0.05, 0.5) if rng.uniform() < 0.85 else 0.0,
        "spleen": (u(45.0, 60.0), u(30.0, 40.0), u(18.0, 25.0)), "spleen_below": u(45.0, 70.0),
        "kidney": (u(50.0, 60.0), u(27.0, 32.0), u(17.0, 22.0)), "colon_gas": bool(rng.uniform() < 0.5),
        "thyroid": (u(8.0, 12.0), u(8.0, 12.0), u(20.0, 28.0)),
    }

    # --- field and pose [LI]
    outer = width + 2.0 * (body["rib_band"] + body["muscle_lat"] + 1.3 * fat)
    if arms == "sides":
        extent_xy = float(np.clip((outer + 4.0 * body["arm_radius"] + 2 * body["arm_gap"]) * u(0.88, 1.05), 380.0, 500.0))
    else:
        extent_xy = float(np.clip(outer + u(40.0, 110.0), 340.0, 480.0))
    pose = {"offset_x": _clipped_normal(rng, 0.0, 15.0, -40.0, 40.0), "offset_y": _clipped_normal(rng, -15.0, 15.0, -50.0, 25.0),
            "roll_deg": _clipped_normal(rng, 0.0, 2.5, -6.0, 6.0), "yaw_deg": _clipped_normal(rng, 0.0, 1.5, -4.0, 4.0),
            "noise_sd": float(np.clip(u(5.0, 12.0) * (outer / 340.0) ** 1.5, 4.0, 25.0))}
    if reference_pose:
        pose.update(offset_x=0.0, offset_y=0.0, roll_deg=0.0, yaw_deg=0.0)

    # --- pathologies at the RATES above [BTS], [FLS], [MOY]
    path = {"cardiomegaly": cardiomegaly}
    nodules = []
    if rng.uniform() < RATES["nodules"]:
        for _ in range(1 + int(rng.binomial(3, 0.3))):
            nodules.append({"diameter_mm": float(np.clip(np.exp(rng.normal(np.log(6.0), 0.5)), 3.0, 30.0)),
                            "type": str(rng.choice(NODULE_TYPES, p=NODULE_WEIGHTS)),
                            "side": "right" if rng.uniform() < 0.55 else "left", "key": int(rng.integers(1 << 31))})
    path["nodules"] = nodules
    path["effusion"] = None
    if rng.uniform() < RATES["effusion"]:
        side = str(rng.choice(("both", "right", "left"), p=(0.4, 0.35, 0.25)))
        path["effusion"] = {"side": side, "depth_mm": {s: u(10.0, 80.0) for s in ("right", "left")
                                                     if side in (s, "both")}}
    path["consolidation"] = None
    if rng.uniform() < RATES["consolidation"]:
        path["consolidation"] = {"side": "right" if rng.uniform() < 0.55 else "left",
                                 "zone": "lower" if rng.uniform() < 0.65 else "upper",
                                 "size_mm": (u(20.0, 55.0), u(20.0, 50.0), u(25.0, 60.0)), "key": int(rng.integers(1 << 31))}
    path["atelectasis"] = None
    if rng.uniform() < RATES["atelectasis"]:
        path["atelectasis"] = {"kind": str(rng.choice(("dependent", "plate", "lobar"), p=(0.6, 0.3, 0.1))),
                               "side": str(rng.choice(("both", "right", "left"), p=(0.4, 0.3, 0.3))),
                               "thickness_mm": u(5.0, 15.0), "key": int(rng.integers(1 << 31))}
    return Patient(seed=int(seed), sex=sex, bmi=bmi, arms=arms, table=table, phase=phase, hu=hu, body=body,
                   heart=heart, vessels=vessels, organs=organs, pose=pose, levels=lv, pathology=path,
                   extent=(extent_xy, extent_xy, extent_z))

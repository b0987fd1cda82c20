"""Tissue labels of the phantoms and the CT numbers (HU) each is drawn from, with their sources.

Each phantom draws one value per tissue uniformly inside the range below (per contrast phase for
tissues that enhance), so HU vary between patients as they do between scanners and people. Ranges
are for ~120 kVp CT; sources:
  [P]  Prokop & Galanski, Spiral and Multislice Computed Tomography of the Body (Thieme 2003), tables
       of CT numbers (fat −100 ± 20 / −50…−150, muscle 40 ± 10, liver 55–65 (≈ 8–10 HU above spleen),
       spleen 45–55, kidney 30–45, thyroid ≈ 100 ± 20 (iodine), bone, fluids 0–20).
  [B]  Buzug, Computed Tomography (Springer 2008) p. 475: lung parenchyma at inspiration −850…−910.
  [NA] New & Aronow, Radiology 1976;121:635: unclotted whole blood ≈ 40 HU (35–50 with haematocrit).
  [BA] Bae, Radiology 2010;256:32 (contrast timing): aortic/cardiac blood 150–350 HU during
       enhancement, liver +50–60 HU and spleen/kidney/myocardium enhancing in the portal venous phase.
  [PK] Pickhardt et al., Ann Intern Med 2013;158:588: vertebral trabecular bone 130–300 HU in adults
       (< 110 HU osteoporotic).
  [FL] Hansell et al., Fleischner glossary, Radiology 2008;246:697 and MacMahon et al., Fleischner
       2017 nodule guidelines: ground-glass −750…−300, solid nodules soft-tissue density.
  [SI] Siegelman et al., AJR 1980;135:1: calcified (benign) nodules > 200 HU.
  [AB] Abramowitz et al., AJR 2009;192:618 (CT attenuation of effusions): transudates ≈ 0–20 HU.
  [W]  Webb, Müller & Naidich, High-Resolution CT of the Lung: consolidation and atelectasis are
       airless lung of soft-tissue density; atelectatic lung enhances strongly.
Table and mattress values are not tissue: measured couch tops are carbon-fibre skins (a few hundred
HU) over foam cores/pads near −900 HU; those are the generator's choice, not a literature table.
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np


class Tissue(IntEnum):
    """Label values of a phantom's label map (uint8)."""

    AIR = 0
    TABLE = 1  # carbon-fibre skin of the couch
    TABLE_FOAM = 2  # foam core of the couch
    MATTRESS = 3
    SKIN = 4
    FAT = 5  # subcutaneous, mediastinal, epicardial, visceral fat
    MUSCLE = 6  # skeletal muscle (chest wall, arms, paraspinal, diaphragm)
    GLAND = 7  # fibroglandular breast tissue
    LUNG = 8  # lung parenchyma
    LUNG_VESSEL = 9  # pulmonary vessels (voxels at least half vessel)
    AIRWAY = 10  # air in the trachea and bronchi
    AIRWAY_WALL = 11
    OESOPHAGUS = 12  # oesophageal wall
    GAS = 13  # gas in the oesophagus, stomach and colon
    MYOCARDIUM = 14
    BLOOD_RIGHT = 15  # systemic veins, right heart, pulmonary arteries
    BLOOD_LEFT = 16  # pulmonary veins, left heart, aorta and its branches
    LIVER = 17
    SPLEEN = 18
    STOMACH = 19  # stomach wall and contents
    KIDNEY = 20
    SOFT_TISSUE = 21  # bowel, neck and other unspecified soft tissue
    THYROID = 22
    CORTICAL = 23  # cortical bone
    CANCELLOUS = 24  # trabecular bone with red marrow
    MARROW = 25  # fatty (yellow) marrow of the humeral shaft
    CARTILAGE = 26  # costal cartilage
    DISC = 27  # intervertebral disc
    CSF_CORD = 28  # spinal cord and CSF
    NODULE = 29  # solid lung nodule (and the solid core of part-solid ones)
    GROUND_GLASS = 30
    CALCIFIED = 31  # calcified nodule
    EFFUSION = 32  # pleural fluid
    CONSOLIDATION = 33
    ATELECTASIS = 34


T = Tissue
# Non-contrast CT numbers (HU) per tissue: (low, high) of the per-patient draw, with the source.
HU_RANGES: dict[Tissue, tuple[float, float]] = {
    T.AIR: (-1000.0, -1000.0),  # definition of the HU scale
    T.TABLE: (200.0, 500.0),  # generator choice (couch-top carbon fibre)
    T.TABLE_FOAM: (-950.0, -850.0),  # generator choice
    T.MATTRESS: (-950.0, -800.0),  # generator choice (foam pad with cover)
    T.SKIN: (20.0, 60.0),  # dermis: soft-tissue density [P]
    T.FAT: (-120.0, -80.0),  # [P]
    T.MUSCLE: (35.0, 55.0),  # [P]
    T.GLAND: (20.0, 50.0),  # fibroglandular tissue: soft-tissue density [P]
    T.LUNG: (-900.0, -840.0),  # mean at full inspiration [B]; a supine gravity gradient is added
    T.LUNG_VESSEL: (35.0, 50.0),  # the blood it carries [NA] (mixed with parenchyma by partial volume)
    T.AIRWAY: (-1000.0, -980.0),  # air
    T.AIRWAY_WALL: (20.0, 60.0),  # soft tissue / cartilage rings [P]
    T.OESOPHAGUS: (30.0, 50.0),  # muscular wall [P]
    T.GAS: (-1000.0, -980.0),  # air
    T.MYOCARDIUM: (35.0, 55.0),  # muscle [P]
    T.BLOOD_RIGHT: (35.0, 50.0),  # [NA]
    T.BLOOD_LEFT: (35.0, 50.0),  # [NA]
    T.LIVER: (55.0, 65.0),  # [P]
    T.SPLEEN: (45.0, 55.0),  # [P]
    T.STOMACH: (0.0, 40.0),  # water/food contents and wall [P]
    T.KIDNEY: (30.0, 45.0),  # [P]
    T.SOFT_TISSUE: (20.0, 45.0),  # bowel wall/contents, neck soft tissue [P]
    T.THYROID: (80.0, 120.0),  # iodine-rich gland [P]
    T.CORTICAL: (800.0, 1200.0),  # cortical bone at 1–5 mm voxels (1200–1900 at full resolution) [P]
    T.CANCELLOUS: (130.0, 300.0),  # vertebral trabecular bone [PK]
    T.MARROW: (-100.0, -40.0),  # fatty marrow of long-bone shafts: close to fat [P]
    T.CARTILAGE: (80.0, 200.0),  # costal cartilage, partly calcified [P]
    T.DISC: (70.0, 100.0),  # intervertebral disc [P]
    T.CSF_CORD: (10.0, 35.0),  # CSF 0–15, cord 30–40, unresolved together [P]
    T.NODULE: (10.0, 60.0),  # solid nodule: soft-tissue density [FL]
    T.GROUND_GLASS: (-750.0, -400.0),  # [FL]
    T.CALCIFIED: (200.0, 800.0),  # [SI]
    T.EFFUSION: (0.0, 20.0),  # simple (transudative) effusion [AB]
    T.CONSOLIDATION: (20.0, 50.0),  # airless lung [W]
    T.ATELECTASIS: (20.0, 60.0),  # collapsed lung [W]
}

PHASES = ("non-contrast", "pulmonary-arterial", "arterial", "venous")
# Share of each phase among the phantoms (generator choice: chest CT is done with and without
# contrast about equally often; CT pulmonary angiograms are a sizeable minority).
PHASE_WEIGHTS = (0.45, 0.10, 0.15, 0.30)
# Enhanced CT numbers per phase [BA]: blood 150–300 HU while contrast is in it (the right heart and
# pulmonary arteries peak in a pulmonary angiogram, the left heart and aorta in the arterial phase,
# both are ≈ 150–200 HU in the venous phase); organs enhance less and later.
ENHANCED: dict[str, dict[Tissue, tuple[float, float]]] = {
    "pulmonary-arterial": {T.BLOOD_RIGHT: (220.0, 300.0), T.BLOOD_LEFT: (150.0, 220.0),
                           T.LUNG_VESSEL: (180.0, 260.0), T.MYOCARDIUM: (60.0, 90.0), T.LIVER: (60.0, 75.0),
                           T.SPLEEN: (60.0, 80.0), T.KIDNEY: (70.0, 100.0), T.THYROID: (120.0, 160.0)},
    "arterial": {T.BLOOD_RIGHT: (150.0, 250.0), T.BLOOD_LEFT: (220.0, 300.0), T.LUNG_VESSEL: (170.0, 260.0),
                 T.MYOCARDIUM: (90.0, 140.0), T.LIVER: (65.0, 85.0), T.SPLEEN: (100.0, 140.0),
                 T.KIDNEY: (150.0, 200.0), T.THYROID: (140.0, 200.0)},
    "venous": {T.BLOOD_RIGHT: (150.0, 200.0), T.BLOOD_LEFT: (150.0, 200.0), T.LUNG_VESSEL: (150.0, 200.0),
               T.MYOCARDIUM: (90.0, 130.0), T.LIVER: (100.0, 130.0), T.SPLEEN: (110.0, 130.0),
               T.KIDNEY: (150.0, 200.0), T.THYROID: (130.0, 180.0)},
}
# Lesions that enhance with contrast: HU added to their non-contrast value [W], [FL].
ENHANCEMENT_GAIN = {T.CONSOLIDATION: (30.0, 60.0), T.ATELECTASIS: (50.0, 80.0), T.NODULE: (15.0, 40.0)}

# Labels the lungs' texture (parenchyma + vessels) may be replaced by (pathology, airways).
LUNG_LABELS = (T.LUNG, T.LUNG_VESSEL)


def hu_range(tissue: Tissue, phase: str) -> tuple[float, float]:
    """The documented HU range of `tissue` in contrast `phase` (lesion enhancement included)."""
    lo, hi = ENHANCED.get(phase, {}).get(tissue, HU_RANGES[tissue])
    if phase != "non-contrast" and tissue in ENHANCEMENT_GAIN:
        g0, g1 = ENHANCEMENT_GAIN[tissue]
        lo, hi = lo + g0, hi + g1
    return lo, hi


def draw_tissue_hu(rng: np.random.Generator, phase: str) -> dict[Tissue, float]:
    """One patient's CT number per tissue: uniform inside each documented range (fixed draw order)."""
    out = {}
    for tissue in Tissue:  # every tissue draws, so later draws do not depend on the phase
        lo, hi = HU_RANGES[tissue]
        v = float(rng.uniform(lo, hi))
        if phase != "non-contrast":
            if tissue in ENHANCED.get(phase, {}):
                lo, hi = ENHANCED[phase][tissue]
                v = lo + (v - HU_RANGES[tissue][0]) / max(HU_RANGES[tissue][1] - HU_RANGES[tissue][0], 1e-6) * (hi - lo)
            elif tissue in ENHANCEMENT_GAIN:
                g0, g1 = ENHANCEMENT_GAIN[tissue]
                v += g0 + (v - HU_RANGES[tissue][0]) / (HU_RANGES[tissue][1] - HU_RANGES[tissue][0]) * (g1 - g0)
        out[tissue] = v
    return out


def lookup_table(values: dict[Tissue, float]) -> np.ndarray:
    """A 256-entry float32 table label → HU for `values` (unused labels: air)."""
    lut = np.full(256, -1000.0, dtype=np.float32)
    for tissue, v in values.items():
        lut[int(tissue)] = v
    return lut

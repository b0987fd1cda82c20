"""Synthetic thorax CT phantoms that look like patients: procedural, deterministic by seed, fast.

`make_phantom` draws a patient (`anatomy.patient.draw_patient`: sex, habitus from thin to obese,
arms at the sides or raised, pose, organ sizes, contrast phase, pathologies at set rates), paints
a tissue label map in the patient frame (`anatomy.body`, `chest`, `mediastinum`, `vessels`,
`skeleton`, `pathology`), turns it into HU, places the patient off-centre and slightly rotated in
the field, adds a table and the scanner's blur and noise (`anatomy.scanner`). Arrays have RAS+
axes (x → patient right, y → anterior, z → superior), sizes in mm, so the anatomy does not depend
on the voxel size. Every number comes from the literature or is a documented generator choice
(docs/PHANTOMS.md); none is fitted to a real CT. `write_phantom` stores a phantom as NIfTI, sometimes in LPS or another axis order and with
anisotropic slices, so the reading pipeline's reorientation is exercised, with a JSON sidecar that
records the anatomy and pathologies.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..files import write_json_atomic
from .anatomy import body, chest, mediastinum, pathology, scanner, skeleton, vessels
from .anatomy.grid import Grid
from .anatomy.patient import draw_patient
from .anatomy.tissues import Tissue
from .ct_sanity import SPACING_RANGE_MM
from .io import sidecar_path, write_nifti

# Orientations `write_phantom` picks from (weights): mostly RAS/LPS as scanners write them.
ORIENTATIONS = (("RAS", 4), ("LPS", 3), ("LAS", 1), ("RPI", 1), ("PRS", 1))
PHANTOM_VERSION = 2  # bump when the generator's anatomy changes: cached phantom sets are then regenerated


def phantom_seed(seed: int, index: int) -> int:
    """Seed of case `index` of a set generated with `seed` (sets with different seeds don't overlap)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


@dataclass
class Phantom:
    """A generated phantom: HU and tissue labels (RAS+ arrays), voxel spacing (mm), sidecar facts."""

    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    info: dict


def build_phantom(seed: int, size: int = 128, anisotropic: bool = False, with_table: bool | None = None,
                  reference_pose: bool = False) -> Phantom:
    """Generate phantom `seed` on a size² × (size or fewer thick) slices grid; see the module docstring.

    `reference_pose`: centred, unrotated, arms raised (anatomy.patient.draw_patient); default: as drawn.
    """
    if size < 8:
        raise ValueError(f"phantom size must be at least 8 voxels, got {size}")
    p = draw_patient(seed, reference_pose=reference_pose)
    if with_table is False:
        p.table = "none"
    elif with_table and p.table == "none":
        p.table = "flat"
    ext_xy, _, ext_z = p.extent
    sxy, sz, nz = ext_xy / size, ext_z / size, size
    if anisotropic:  # thick slices, as older or low-dose protocols write them
        # capped: at 8–13 voxels per edge 2.5× the in-plane size would exceed what read_ct accepts
        sz = min(sxy * np.random.default_rng([seed, 103]).uniform(1.6, 2.5), SPACING_RANGE_MM[1])
        nz = max(8, int(round(ext_z / sz)))
    shape, spacing = (size, size, nz), (sxy, sxy, sz)
    origin = -(np.array(shape) - 1) / 2.0 * np.array(spacing)  # scanner frame: field centred on the isocentre
    offset = np.array([p.pose["offset_x"], p.pose["offset_y"], 0.0])
    sc = body.Scene(p, Grid(shape, spacing, origin - offset))  # patient frame: the patient's centre at 0
    body.paint_body(sc)
    chest.paint_lungs(sc)
    chest.paint_abdomen(sc)
    mediastinum.paint_mediastinum(sc)
    vessels.paint_trees(sc)
    skeleton.paint_spine(sc)
    skeleton.paint_ribs(sc)
    skeleton.paint_shoulders(sc)
    pathology.paint_pathology(sc)
    hu = scanner.tissue_hu(sc)
    hu, labels = scanner.pose(sc, hu, spacing, origin)
    table = scanner.add_table(sc, hu, labels, spacing, origin)
    hu = scanner.acquire(sc, hu, spacing)
    return Phantom(hu=hu, labels=labels, spacing=(float(sxy), float(sxy), float(sz)), info=_describe(sc, table))


def _describe(sc, table: dict | None) -> dict:
    """The sidecar's anatomy and pathology fields (mm in the patient frame unless named otherwise)."""
    p, L = sc.p, sc.L
    r = lambda v: round(float(v), 1)  # noqa: E731
    anatomy = {
        "sex": p.sex, "bmi": r(p.bmi), "habitus": p.habitus, "arms": p.arms, "contrast_phase": p.phase,
        "blood_hu": {"right": r(p.hu[Tissue.BLOOD_RIGHT]), "left": r(p.hu[Tissue.BLOOD_LEFT])},
        "cage_width_mm": r(p.body["cage_width"]), "subcutaneous_fat_mm": r(p.body["fat"]),
        "breasts": ({k: (r(v) if isinstance(v, float) else v) for k, v in p.body["breast"].items()}
                    if "breast" in p.body else None),
        "dome_z_mm": {"right": r(L.z["dome_right"]), "left": r(L.z["dome_left"])},
        "pose": {"offset_mm": [r(p.pose["offset_x"]), r(p.pose["offset_y"])], "roll_deg": r(p.pose["roll_deg"]),
                 "yaw_deg": r(p.pose["yaw_deg"])},
        "table": table or {"kind": "none"},
        "field_mm": [r(e) for e in p.extent],
    }
    anatomy.update({k: v for k, v in sc.info.items() if k != "pathology"})
    return {"anatomy": anatomy, "pathology": sc.info["pathology"]}


def make_phantom(
    seed: int, size: int = 128, anisotropic: bool = False, with_table: bool | None = None, return_labels: bool = False,
    reference_pose: bool = False,
):
    """A thorax phantom: (HU float32 array with RAS+ axes, voxel spacing (x, y, z) mm) [+ uint8 labels]."""
    ph = build_phantom(seed, size, anisotropic=anisotropic, with_table=with_table, reference_pose=reference_pose)
    return (ph.hu, ph.spacing, ph.labels) if return_labels else (ph.hu, ph.spacing)


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
    ph = build_phantom(seed, size, anisotropic=anisotropic)
    hu, spacing = ph.hu, ph.spacing
    arr, aff = reorient(np.rint(hu).astype(np.int16), phantom_affine(hu.shape, spacing, offset), axcodes)
    path = Path(path)
    write_nifti(path, arr, aff, dtype=np.int16)
    meta = {"patient_id": path.name.split(".")[0], "generator": "hvc phantoms", "phantom_version": PHANTOM_VERSION,
            "seed": seed, "size": size, "orientation": axcodes, "spacing_mm": [round(s, 4) for s in spacing], **ph.info}
    write_json_atomic(sidecar_path(path), meta)
    return meta

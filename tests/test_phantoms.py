"""Synthetic thorax phantoms: deterministic by seed, HU per tissue, orientation, variety, rates."""
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from hybrid_vit_cascade.data.anatomy.patient import RATES, draw_patient
from hybrid_vit_cascade.data.anatomy.tissues import PHASES, Tissue, hu_range
from hybrid_vit_cascade.data.io import read_ct
from hybrid_vit_cascade.data.phantoms import build_phantom, make_phantom, write_phantom

T = Tissue


def test_deterministic_by_seed():
    a, sa, la = make_phantom(11, 24, return_labels=True)
    b, sb, lb = make_phantom(11, 24, return_labels=True)
    c, _ = make_phantom(12, 24)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert sa == sb and la.dtype == np.uint8 and la.shape == a.shape
    assert build_phantom(11, 24).info == build_phantom(11, 24).info
    assert np.abs(a - c).mean() > 10.0  # another seed is another patient


def test_same_patient_at_every_size():
    """The drawn patient (and so the sidecar's anatomy) does not depend on the grid."""
    small, large = build_phantom(5, 16).info, build_phantom(5, 40).info
    for key in ("sex", "bmi", "arms", "contrast_phase", "cage_width_mm", "dome_z_mm", "pose", "heart"):
        assert small["anatomy"][key] == large["anatomy"][key], key


def _seed_with(pred, start=0):
    return next(s for s in range(start, start + 500) if pred(draw_patient(s)))


def test_reference_pose_is_the_same_patient_centred_and_unrotated():
    """reference_pose: centred, unrotated, arms raised; every other draw as the seed's (a seed drawn arms down)."""
    seed = _seed_with(lambda p: p.arms == "sides" and abs(p.pose["offset_x"]) > 10.0 and abs(p.pose["roll_deg"]) > 1.0)
    drawn, ref = draw_patient(seed), draw_patient(seed, reference_pose=True)
    placement = ("offset_x", "offset_y", "roll_deg", "yaw_deg")
    assert ref.arms == "raised" and [ref.pose[k] for k in placement] == [0.0] * 4
    assert [drawn.pose[k] for k in placement] != [0.0] * 4
    for key in ("sex", "bmi", "table", "phase", "hu", "body", "heart", "vessels", "organs", "pathology"):
        assert getattr(ref, key) == getattr(drawn, key), key
    assert ref.pose["noise_sd"] == drawn.pose["noise_sd"] and ref.levels["carina"] == drawn.levels["carina"]
    assert ref.levels["humeral_head"] < drawn.levels["humeral_head"]  # raised: the humeral heads ride higher
    anatomy = build_phantom(seed, 16, reference_pose=True).info["anatomy"]
    assert anatomy["arms"] == "raised" and anatomy["pose"] == {"offset_mm": [0.0, 0.0], "roll_deg": 0.0, "yaw_deg": 0.0}


def _hu_seeds():
    """A non-contrast, an arterial and a venous/pulmonary patient, one of them a woman."""
    return sorted({_seed_with(lambda p: p.phase == "non-contrast"), _seed_with(lambda p: p.phase == "arterial"),
                   _seed_with(lambda p: p.phase == "venous" and p.sex == "F")})


@pytest.mark.parametrize("seed", _hu_seeds())
def test_tissue_hu_ranges(seed):
    """Each tissue's interior voxels sit at its drawn value, inside the documented range for the phase."""
    p = draw_patient(seed)
    hu, spacing, lab = make_phantom(seed, 48, return_labels=True)
    assert hu.dtype == np.float32 and hu.shape[:2] == (48, 48)
    tol = max(20.0, 2.0 * p.pose["noise_sd"])
    checked = set()
    for t in Tissue:
        core = ndimage.binary_erosion(lab == t)  # away from partial-volume edges
        if core.sum() < 10:
            continue
        lo, hi = hu_range(t, p.phase)
        assert lo <= p.hu[t] <= hi, (t.name, p.phase, p.hu[t])
        med = float(np.median(hu[core]))
        assert abs(med - p.hu[t]) <= tol, (t.name, med, p.hu[t])
        checked.add(t)
    assert {T.AIR, T.FAT, T.MUSCLE, T.LUNG, T.LIVER} <= checked
    # literature values, independent of the generator's own table
    med = {t: float(np.median(hu[ndimage.binary_erosion(lab == t)])) for t in (T.LUNG, T.FAT, T.MUSCLE, T.LIVER)}
    assert -920.0 < med[T.LUNG] < -780.0 and -140.0 < med[T.FAT] < -60.0 and 20.0 < med[T.MUSCLE] < 80.0
    assert 40.0 < med[T.LIVER] < 150.0
    blood = hu[lab == T.BLOOD_LEFT]
    assert (140.0 < np.median(blood) < 320.0) if p.phase != "non-contrast" else (20.0 < np.median(blood) < 65.0)
    assert np.median(hu[lab == T.CORTICAL]) > 300.0  # bone, even where partial volume thins it


def test_hu_range_table_is_consistent():
    for phase in PHASES:
        for t in Tissue:
            lo, hi = hu_range(t, phase)
            assert -1000.0 <= lo <= hi <= 1500.0, (t.name, phase)
    assert hu_range(T.BLOOD_LEFT, "non-contrast") == (35.0, 50.0)
    assert hu_range(T.BLOOD_LEFT, "arterial")[1] <= 300.0 and hu_range(T.BLOOD_LEFT, "arterial")[0] >= 150.0
    assert hu_range(T.LUNG, "venous") == (-900.0, -840.0)


def _centroid_x(lab, spacing, mask):
    idx = np.argwhere(mask)
    return float(idx[:, 0].mean() * spacing[0]), idx


@pytest.mark.parametrize("seed", [0, 3, 7, 12])
def test_orientation(seed):
    """Heart on the patient's left (−x), liver on the right (+x), arch left of the trachea, right dome higher."""
    ph = build_phantom(seed, 64)
    sp, lab, info = ph.spacing, ph.labels, ph.info["anatomy"]
    body = (lab != T.AIR) & (lab != T.TABLE) & (lab != T.TABLE_FOAM) & (lab != T.MATTRESS)
    trunk = np.isin(lab, [T.LUNG, T.LUNG_VESSEL, T.LIVER, T.CANCELLOUS, T.DISC, T.CSF_CORD])
    xc, _ = _centroid_x(lab, sp, trunk)
    heart_x, _ = _centroid_x(lab, sp, lab == T.MYOCARDIUM)
    liver_x, _ = _centroid_x(lab, sp, lab == T.LIVER)
    assert heart_x < xc - 10.0 and liver_x > xc + 10.0, (heart_x, liver_x, xc)
    assert body.any()
    # aorta posterior to the trachea, between the carina and the arch: left of the trachea
    k_car = int(round(info["landmarks_mm"]["carina_z"] / sp[2] + (lab.shape[2] - 1) / 2.0))
    slab = slice(k_car + 1, k_car + 1 + max(2, int(25.0 / sp[2])))  # just above the carina
    air = np.argwhere(lab[:, :, slab] == T.AIRWAY)
    tr_x, tr_y = air[:, 0].mean(), air[:, 1].mean()
    ao = np.argwhere(lab[:, :, slab] == T.BLOOD_LEFT)
    ao = ao[ao[:, 1] < tr_y]  # posterior to the trachea: the descending aorta
    assert ao.size and ao[:, 0].mean() < tr_x, (ao[:, 0].mean(), tr_x)
    assert info["landmarks_mm"]["aortic_arch_left_x"] < 0
    # diaphragm domes: the highest abdominal voxel (under the dome) on each side of the body centre
    abdomen = np.isin(lab, [T.LIVER, T.STOMACH, T.SPLEEN, T.SOFT_TISSUE, T.KIDNEY])
    i_c = int(round(xc / sp[0]))
    dome = {side: int(np.flatnonzero(abdomen[cols].any(axis=(0, 1))).max())
            for side, cols in (("right", slice(i_c + 3, None)), ("left", slice(None, i_c - 3)))}
    assert dome["right"] > dome["left"] >= 0, dome


def test_variety_and_rates():
    """Over 400 patients each pathology occurs near its rate; habitus, arms, tables, phases all vary."""
    ps = [draw_patient(s) for s in range(400)]
    n = len(ps)
    observed = {"nodules": sum(bool(p.pathology["nodules"]) for p in ps),
                "effusion": sum(p.pathology["effusion"] is not None for p in ps),
                "consolidation": sum(p.pathology["consolidation"] is not None for p in ps),
                "atelectasis": sum(p.pathology["atelectasis"] is not None for p in ps),
                "cardiomegaly": sum(p.pathology["cardiomegaly"] for p in ps)}
    for name, k in observed.items():
        rate = RATES[name]
        assert abs(k / n - rate) < 4.0 * np.sqrt(rate * (1 - rate) / n), (name, k / n, rate)
    assert all(p.heart["ctr"] > 0.5 for p in ps if p.pathology["cardiomegaly"])
    assert all(0.38 <= p.heart["ctr"] <= 0.5 for p in ps if not p.pathology["cardiomegaly"])
    assert {p.habitus for p in ps} == {"thin", "normal", "overweight", "obese"}
    assert {p.arms for p in ps} == {"raised", "sides"} and {p.sex for p in ps} == {"M", "F"}
    assert {p.table for p in ps} == {"curved", "flat", "none"} and {p.phase for p in ps} == set(PHASES)
    fats = [p.body["fat"] for p in ps]
    assert min(fats) < 6.0 and max(fats) > 40.0  # thin to obese subcutaneous fat, mm
    assert all(p.levels["dome_left"] - p.levels["dome_right"] >= 4.99 for p in ps)  # right dome higher


def test_generated_phantoms_show_what_the_sidecar_records():
    """40 small phantoms: tables, breasts, arms and recorded pathologies appear in the label map."""
    seen_tables = set()
    for seed in range(40):
        ph = build_phantom(seed, 24)
        a, path, lab = ph.info["anatomy"], ph.info["pathology"], ph.labels
        has_table = np.isin(lab, [T.TABLE, T.TABLE_FOAM, T.MATTRESS]).any()
        assert has_table == (a["table"]["kind"] != "none"), seed
        seen_tables.add(a["table"]["kind"])
        assert (a["breasts"] is not None) == (a["sex"] == "F")
        for kind, label in (("effusion", T.EFFUSION), ("consolidation", T.CONSOLIDATION), ("atelectasis", T.ATELECTASIS)):
            rec = path[kind]
            if rec is not None and rec["voxels"] > 0:
                assert (lab == label).sum() > 0, (seed, kind)
        if path["effusion"] is None and path["atelectasis"] is None:
            assert not (lab == T.ATELECTASIS).any() and not (lab == T.EFFUSION).any()
        drawn = sum(n["voxels"] for n in path["nodules"])  # counted in the patient frame, before the pose
        shown = int(np.isin(lab, [T.NODULE, T.GROUND_GLASS, T.CALCIFIED]).sum())
        assert (shown > 0) == (drawn > 0) or drawn < 3, (seed, drawn, shown)
    assert seen_tables == {"curved", "flat", "none"}


def test_arms_and_breasts():
    """Arms at the sides lie lateral to the chest at mid-lung height; raised arms do not; women have breasts."""
    sides, raised = _seed_with(lambda p: p.arms == "sides"), _seed_with(lambda p: p.arms == "raised")
    woman = _seed_with(lambda p: p.sex == "F" and p.body["breast"]["volume_ml"] > 500)
    widths = {}
    for seed in (sides, raised):
        hu, sp, lab = make_phantom(seed, 48, with_table=False, return_labels=True)
        k = int(np.argmax((lab == T.LUNG).sum(axis=(0, 1))))  # the level with the most lung
        xs = np.flatnonzero((lab[:, :, k] != T.AIR).any(axis=1))
        lung = np.flatnonzero((lab[:, :, k] == T.LUNG).any(axis=1))
        widths[seed] = ((xs.max() - xs.min()) - (lung.max() - lung.min())) * sp[0]  # body width beyond the lungs
    assert widths[sides] > widths[raised] + 80.0, widths
    assert (make_phantom(sides, 48, return_labels=True)[2] == T.MARROW).any()  # humeral shafts in the field
    _, _, lab = make_phantom(woman, 48, return_labels=True)
    assert (lab == T.GLAND).sum() > 20


def test_anisotropic_spacing():
    hu, spacing = make_phantom(4, 32, anisotropic=True)
    assert spacing[2] > 1.5 * spacing[0] and hu.shape[2] < 32


def test_table_is_separate_from_body():
    with_t, _ = make_phantom(6, 32, with_table=True)
    without, _ = make_phantom(6, 32, with_table=False)
    diff = np.abs(with_t - without) > 100
    # the table lies entirely below (posterior to) the body
    ys = np.nonzero(diff)[1]
    assert ys.size and ys.max() < 16


def test_write_phantom_varied_orientations(tmp_path):
    seen = set()
    for seed in range(12):
        meta = write_phantom(tmp_path / f"ph{seed}.nii.gz", seed, size=16)
        img = nib.load(tmp_path / f"ph{seed}.nii.gz")
        assert "".join(nib.aff2axcodes(img.affine)) == meta["orientation"]
        side = json.loads((tmp_path / f"ph{seed}.json").read_text())
        assert side["seed"] == seed and {"anatomy", "pathology", "phantom_version"} <= set(side)
        seen.add(meta["orientation"])
        ct = read_ct(tmp_path / f"ph{seed}.nii.gz")  # always back to RAS+
        assert nib.aff2axcodes(ct.affine) == ("R", "A", "S")
        expected, _ = make_phantom(seed, 16, anisotropic=meta["spacing_mm"][2] > 1.5 * meta["spacing_mm"][0])
        np.testing.assert_allclose(ct.hu, np.rint(expected), atol=0.5)
    assert len(seen) >= 3  # orientation really varies across cases

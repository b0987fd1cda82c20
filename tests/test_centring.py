"""`body_center` on thoraxes built unlike our phantoms: bowel gas beside one lung, a table or blanket touching the body, no lungs."""
import numpy as np

from hybrid_vit_cascade.config import DataConfig
from hybrid_vit_cascade.data.io import CTVolume, write_nifti
from hybrid_vit_cascade.data.prepare import prepare_dataset
from hybrid_vit_cascade.data.preprocessing import body_center

N, SP = 48, np.array([8.0, 8.0, 10.0])  # 384 × 384 × 480 mm, neck to pelvis; world origin at the array's centre
LUNG_Z = 135.0  # mm: centre of the lungs along z (they span 40–230 mm)


def _xyz():
    i, j, k = np.indices((N, N, N), dtype=float)
    return [(a - (N - 1) / 2) * s for a, s in zip((i, j, k), SP)]


def thorax(dx: float = 0.0, lungs: tuple[bool, bool] = (True, True)) -> np.ndarray:
    """HU: an elliptic trunk (±150 × ±110 mm, centred at x = dx) with two lungs and a heart; a missing lung is fluid."""
    x, y, z = _xyz()
    x = x - dx
    hu = np.full((N, N, N), -1000.0, np.float32)
    hu[(x / 150) ** 2 + (y / 110) ** 2 <= 1] = 30.0
    for side, aerated in zip((1, -1), lungs):
        hu[((x - side * 65) / 50) ** 2 + ((y + 5) / 70) ** 2 + ((z - LUNG_Z) / 95) ** 2 <= 1] = -850.0 if aerated else 40.0
    hu[((x + 20) / 50) ** 2 + ((y - 30) / 45) ** 2 + ((z - 95) / 50) ** 2 <= 1] = 45.0
    return hu


def ct(hu: np.ndarray) -> CTVolume:
    aff = np.diag([*SP, 1.0])
    aff[:3, 3] = -(N - 1) / 2 * SP
    return CTVolume(hu, aff, "synthetic")


def test_bowel_gas_beside_a_single_lung_does_not_pull_the_cube_down():
    hu = thorax(lungs=(True, False))  # the left lung collapsed / fluid-filled
    x, y, z = _xyz()
    hu[((x - 20) / 60) ** 2 + (y / 50) ** 2 + ((z + 180) / 50) ** 2 <= 1] = -1000.0  # ~750 ml of colon gas in the pelvis
    notes = []
    c = body_center(ct(hu), notes=notes)
    assert abs(c[2] - LUNG_Z) < SP[2] and notes == []


def test_table_touching_the_back_is_cut_off_before_centring():
    hu = thorax(dx=40.0)  # the patient lies 40 mm right of the table's centre
    x, y, _ = _xyz()
    hu[(y < -110) & (y >= -140) & (np.abs(x) < 185)] = 300.0  # a dense 30 mm board under the back, touching it
    notes = []
    c = body_center(ct(hu), notes=notes)
    assert abs(c[0] - 40.0) < SP[0] and abs(c[2] - LUNG_Z) < SP[2]
    assert len(notes) == 1 and "touches the body" in notes[0]


def test_air_under_a_blanket_along_the_whole_scan_is_not_a_lung():
    hu = thorax()
    x, y, _ = _xyz()
    hu[(y < -112) & (y >= -140) & (np.abs(x) < 190)] = 300.0  # table
    r = np.sqrt((x / 170) ** 2 + ((y + 22) / 132) ** 2)
    hu[(r >= 1.0) & (r < 1.1) & (y > -140)] = 0.0  # a blanket lying on the chest and reaching the table
    c = body_center(ct(hu))
    assert abs(c[2] - LUNG_Z) < SP[2]


def test_a_lung_in_every_slice_of_a_scan_cropped_to_the_lungs_still_counts():
    hu = thorax()
    x, y, z = _xyz()
    hu[((x + 65) / 50) ** 2 + ((y + 5) / 70) ** 2 <= 1] = -850.0  # the left lung reaches both ends of the scan
    notes = []
    c = body_center(ct(hu), notes=notes)  # both lungs: the whole z range (the right lung alone: 40–230 mm)
    assert abs(c[2] - 0.0) < SP[2] and notes == []


def test_an_arm_beside_the_pelvis_does_not_move_the_chest_cube():
    hu = thorax()
    x, y, z = _xyz()
    hu[(((x - 230) / 45) ** 2 + (y / 45) ** 2 <= 1) & (z < -50)] = 30.0  # the right arm down, beside the pelvis
    hu[(np.abs(x - 180) < 40) & (np.abs(y) < 30) & (z < -50) & (z > -70)] = 30.0  # its hand on the hip
    assert body_center(ct(hu))[0] > 15.0  # the whole body's box: the arm pulls the cube right
    notes = []
    c = body_center(ct(hu), notes=notes, fov_mm=360.0)  # only the slices a 360 mm cube sees count
    assert abs(c[0]) < SP[0] and abs(c[2] - LUNG_Z) < SP[2]
    assert len(notes) == 1 and "beyond the cube's slices" in notes[0]


def test_lungs_cut_by_a_small_field_of_view_are_still_found():
    x, y, z = _xyz()
    hu = np.full((N, N, N), -1000.0, np.float32)
    hu[(x / 260) ** 2 + (y / 110) ** 2 <= 1] = 30.0  # wider than the 384 mm field: both flanks cut off
    for side in (1, -1):  # lungs reaching past the field's edge, open to the border in-plane
        hu[((x - side * 150) / 60) ** 2 + ((y + 5) / 70) ** 2 + ((z - LUNG_Z) / 95) ** 2 <= 1] = -850.0
    notes = []
    c = body_center(ct(hu), notes=notes)
    assert abs(c[2] - LUNG_Z) < SP[2]
    assert len(notes) == 1 and "cut by the field of view" in notes[0]


def test_no_lungs_centres_on_the_body_with_a_note(tmp_path):
    path = write_nifti(tmp_path / "fluid.nii", thorax(lungs=(False, False)), ct(thorax()).affine)
    logged = []
    cfg = DataConfig(geometry={"det_pixels": 16}, fov_mm=400.0)
    manifest = prepare_dataset([path], tmp_path / "ds", [16], None, cfg, progress=False, log=logged.append)
    (case,) = manifest["cases"]
    np.testing.assert_allclose(case["body_center_mm"][2], 0.0, atol=SP[2])  # the body's middle: all there is
    assert [m for m in logged if m.startswith("note: ")] == [f"note: fluid: {case['centring_notes'][0]}"]
    assert "no lungs found" in case["centring_notes"][0]

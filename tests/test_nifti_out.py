"""NIfTI output: spacing, orientation and handedness as nibabel and SimpleITK (LPS) report them."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from hybrid_vit_cascade.inference.nifti_out import cube_affine, write_cube_nifti


@pytest.mark.parametrize("res,fov", [(16, 360.0), (20, 250.0)])
def test_cube_nifti_geometry(tmp_path, res, fov):
    vol = np.full((res, res, res), -1000.0, np.float32)
    # Marker on the patient's right (array axis 0 ↑ = Right), anterior, superior of centre.
    i, j, k = res - 3, res // 2 + 2, res // 2 + 4
    vol[i, j, k] = 1000.0
    f = write_cube_nifti(tmp_path / "out.nii.gz", vol, fov, description="test", display_window=(-1024, 1476))
    sp = fov / res

    img = nib.load(str(f))
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 2
    np.testing.assert_allclose(img.get_qform(), img.get_sform())
    assert img.header.get_xyzt_units()[0] == "mm"
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    np.testing.assert_allclose(img.header.get_zooms(), (sp, sp, sp))
    np.testing.assert_array_equal(np.asarray(img.dataobj), vol)
    # Centre of the cube at the world origin; the marker at +x (Right), +y (Anterior), +z (Superior).
    c = (res - 1) / 2
    np.testing.assert_allclose(img.affine @ [c, c, c, 1], [0, 0, 0, 1], atol=1e-9)
    world = img.affine @ [i, j, k, 1]
    np.testing.assert_allclose(world[:3], [(i - c) * sp, (j - c) * sp, (k - c) * sp])
    assert world[0] > 0 and world[1] > 0 and world[2] > 0

    s = sitk.ReadImage(str(f))
    np.testing.assert_allclose(s.GetSpacing(), (sp, sp, sp), rtol=1e-6)
    np.testing.assert_allclose(np.reshape(s.GetDirection(), (3, 3)), np.diag([-1.0, -1.0, 1.0]), atol=1e-6)
    arr = sitk.GetArrayFromImage(s)  # (k, j, i)
    kk, jj, ii = np.unravel_index(np.argmax(arr), arr.shape)
    assert (ii, jj, kk) == (i, j, k)
    lps = s.TransformIndexToPhysicalPoint((int(ii), int(jj), int(kk)))
    # ITK's LPS: the patient's right is −x, anterior is −y.
    np.testing.assert_allclose(lps, [-world[0], -world[1], world[2]], atol=1e-4)
    assert lps[0] < 0 and lps[1] < 0 and lps[2] > 0


def test_affine_and_bad_input(tmp_path):
    aff = cube_affine(4, 8.0)
    np.testing.assert_allclose(aff, [[2, 0, 0, -3], [0, 2, 0, -3], [0, 0, 2, -3], [0, 0, 0, 1]])
    with pytest.raises(ValueError, match="cube"):
        write_cube_nifti(tmp_path / "x.nii.gz", np.zeros((4, 4, 5)), 10.0)
    bad = np.zeros((4, 4, 4))
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_cube_nifti(tmp_path / "x.nii.gz", bad, 10.0)
    assert not list(tmp_path.iterdir())

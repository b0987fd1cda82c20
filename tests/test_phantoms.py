"""Synthetic thorax phantoms: deterministic by seed, realistic HU per tissue, varied layouts."""
import json

import nibabel as nib
import numpy as np
import pytest

from hybrid_vit_cascade.data.io import read_ct
from hybrid_vit_cascade.data.phantoms import make_phantom, write_phantom


def test_deterministic_by_seed():
    a, sa = make_phantom(11, 24)
    b, sb = make_phantom(11, 24)
    c, _ = make_phantom(12, 24)
    np.testing.assert_array_equal(a, b)
    assert sa == sb
    assert np.abs(a - c).mean() > 10.0  # another seed is another patient


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tissue_hu_ranges(seed):
    hu, spacing = make_phantom(seed, 48, with_table=False)
    assert hu.dtype == np.float32 and hu.shape == (48, 48, 48)
    assert all(5.5 < s < 10.0 for s in spacing)  # mm: 48 voxels over a ~30–43 cm field of view
    # air outside the body (corner voxels), with noise
    assert abs(float(np.median(hu[:3, :3, :]) + 1000.0)) < 30.0
    # lungs: a large share of voxels near -850 HU
    lung = (hu > -920) & (hu < -780)
    assert lung.mean() > 0.03
    # fat and soft tissue present
    assert ((hu > -130) & (hu < -70)).mean() > 0.005
    assert ((hu > 20) & (hu < 70)).mean() > 0.05
    # bone: cortical values in 400..1200 HU exist but are a small fraction
    bone = hu > 400
    assert 0.0005 < bone.mean() < 0.05
    assert 700.0 < hu.max() < 1300.0


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
        assert json.loads((tmp_path / f"ph{seed}.json").read_text())["seed"] == seed
        seen.add(meta["orientation"])
        ct = read_ct(tmp_path / f"ph{seed}.nii.gz")  # always back to RAS+
        assert nib.aff2axcodes(ct.affine) == ("R", "A", "S")
        expected, _ = make_phantom(seed, 16, anisotropic=meta["spacing_mm"][2] > 1.5 * meta["spacing_mm"][0])
        np.testing.assert_allclose(ct.hu, np.rint(expected), atol=0.5)
    assert len(seen) >= 3  # orientation really varies across cases

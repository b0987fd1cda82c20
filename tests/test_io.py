"""CT readers: NIfTI / DICOM series / MHA / NRRD give the same HU in RAS+, and bad inputs fail by name."""
import gzip

import nibabel as nib
import numpy as np
import pytest

from hybrid_vit_cascade.data.dicom_series import find_dicom_series
from hybrid_vit_cascade.data.io import (
    CTReadError, file_stem, has_dicom_preamble, read_ct, sidecar_path, write_dicom_series, write_nifti,
)
from hybrid_vit_cascade.data.phantoms import make_phantom, phantom_affine, reorient


@pytest.fixture(scope="module")
def phantom():
    """A small RAS+ phantom with anisotropic spacing and an off-centre scanner origin."""
    hu, spacing = make_phantom(5, 20, anisotropic=True)
    return hu, phantom_affine(hu.shape, spacing, np.array([12.0, -7.0, -150.0]))


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "PRS", "LAI"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_any_orientation_reads_canonical(tmp_path, phantom, axcodes, suffix):
    hu, aff = phantom
    arr, arr_aff = reorient(hu, aff, axcodes)
    assert nib.aff2axcodes(arr_aff) == tuple(axcodes)
    ct = read_ct(write_nifti(tmp_path / f"ct{suffix}", arr, arr_aff))
    assert nib.aff2axcodes(ct.affine) == ("R", "A", "S")
    np.testing.assert_array_equal(ct.hu, hu)
    np.testing.assert_allclose(ct.affine, aff, atol=1e-5)
    assert ct.hu.dtype == np.float32


@pytest.mark.parametrize("slope,intercept", [(0.5, -1000.0), (2.0, -1024.0)])
def test_dicom_lidc_layout_shuffled_with_rescale(tmp_path, phantom, slope, intercept):
    hu, aff = phantom
    arr, arr_aff = reorient(hu, aff, "LPS")  # how scanners store axial slices
    series = tmp_path / "LIDC-IDRI-0007" / "01-01-2000-CT" / "3000566-series"
    # random file names: slice order must come from ImagePositionPatient, not from names
    write_dicom_series(series, arr, arr_aff, patient_id="LIDC-IDRI-0007", slope=slope, intercept=intercept, seed=3)
    found = find_dicom_series(tmp_path)
    assert len(found) == 1 and found[0][0] == series and len(found[0][2]) == hu.shape[2]
    ct = read_ct(series)
    assert np.abs(ct.hu - hu).max() <= slope / 2 + 1e-3  # rescale quantisation only
    np.testing.assert_allclose(ct.affine, aff, atol=1e-4)
    assert ct.meta["patient_id"] == "LIDC-IDRI-0007"
    # a single slice file also reads its whole series
    ct2 = read_ct(found[0][2][0])
    np.testing.assert_array_equal(ct2.hu, ct.hu)


def test_dicom_missing_middle_slice_is_named(tmp_path, phantom):
    hu, aff = phantom
    names = [f"slice{k:03d}.dcm" for k in range(hu.shape[2])]
    files = write_dicom_series(tmp_path / "s", hu, aff, file_names=names)
    mid = hu.shape[2] // 2
    files[mid].unlink()
    with pytest.raises(CTReadError, match="missing slice") as err:
        read_ct(tmp_path / "s")
    assert names[mid - 1] in err.value.reason and names[mid + 1] in err.value.reason
    assert err.value.path == str(tmp_path / "s")


def test_truncated_nifti_gz(tmp_path, phantom):
    hu, aff = phantom
    path = write_nifti(tmp_path / "ct.nii.gz", hu, aff)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CTReadError, match="unreadable NIfTI") as err:
        read_ct(path)
    assert err.value.path == str(path)


@pytest.mark.parametrize("shape", [(16, 16), (16, 16, 1)])
def test_2d_image_rejected(tmp_path, shape):
    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), path)
    with pytest.raises(CTReadError, match="2D"):
        read_ct(path)


def test_nan_voxels_rejected(tmp_path, phantom):
    hu, aff = phantom
    bad = hu.copy()
    bad[3, 4, 5] = np.nan
    bad[1, 1, 1] = np.inf
    with pytest.raises(CTReadError, match="2 NaN/Inf"):
        read_ct(write_nifti(tmp_path / "nan.nii", bad, aff))


def test_unreadable_and_unknown_files(tmp_path):
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(gzip.compress(b"not a nifti header at all"))
    with pytest.raises(CTReadError, match="unreadable"):
        read_ct(junk)
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(CTReadError, match="unknown file type"):
        read_ct(txt)
    with pytest.raises(CTReadError, match="no such file"):
        read_ct(tmp_path / "missing.nii")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CTReadError, match="no DICOM"):
        read_ct(tmp_path / "empty_dir")
    bad_mha = tmp_path / "bad.mha"
    bad_mha.write_text("ObjectType = Image\nNDims = 3\n")
    with pytest.raises(CTReadError, match="unreadable"):
        read_ct(bad_mha)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_simpleitk_formats(tmp_path, phantom, suffix):
    import SimpleITK as sitk

    hu, aff = phantom
    arr, arr_aff = reorient(hu, aff, "LPS")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ arr_aff
    sp = np.linalg.norm(lps[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))  # sitk wants (z, y, x)
    img.SetSpacing(sp.tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    img.SetDirection((lps[:3, :3] / sp).ravel().tolist())
    sitk.WriteImage(img, str(tmp_path / f"ct{suffix}"))
    ct = read_ct(tmp_path / f"ct{suffix}")
    np.testing.assert_array_equal(ct.hu, hu)
    np.testing.assert_allclose(ct.affine, aff, atol=1e-4)


def test_dicom_duplicate_position_and_localizer(tmp_path, phantom):
    import pydicom

    hu, aff = phantom
    files = write_dicom_series(tmp_path / "s", hu, aff, file_names=[f"im{k:02d}.dcm" for k in range(hu.shape[2])])
    # a scout (LOCALIZER) image in the same folder is ignored
    scout = pydicom.dcmread(files[0])
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    scout.save_as(tmp_path / "s" / "scout.dcm")
    np.testing.assert_allclose(read_ct(tmp_path / "s").hu, hu, atol=0.5)
    # a slice written twice under another name is an error naming both files
    dup = pydicom.dcmread(files[3])
    dup.SOPInstanceUID = dup.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    dup.save_as(tmp_path / "s" / "zz_dup.dcm")
    with pytest.raises(CTReadError, match="same position") as err:
        read_ct(tmp_path / "s")
    assert "zz_dup.dcm" in err.value.reason


def test_dicom_reader_agrees_with_simpleitk(tmp_path, phantom):
    """An independent reader (ITK/GDCM) sees the same voxels at the same LPS positions."""
    import SimpleITK as sitk

    hu, aff = phantom
    hu = hu[:, 2:18, :]  # non-square slices and pixels catch row/column mix-ups
    aff = aff @ np.diag([1.0, 1.4, 1.0, 1.0])
    arr, arr_aff = reorient(hu, aff, "LPS")
    write_dicom_series(tmp_path / "s", arr, arr_aff, slope=1.0, intercept=-1024.0, seed=1)
    ours = read_ct(tmp_path / "s")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    img = reader.Execute()
    ref = sitk.GetArrayFromImage(img).astype(np.float32).transpose(2, 1, 0)  # (x, y, z) index order
    lps = np.eye(4)
    lps[:3, :3] = np.array(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    ref_ct = read_ct(write_nifti(tmp_path / "ref.nii", ref, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps))
    np.testing.assert_allclose(ours.affine, ref_ct.affine, atol=1e-4)
    np.testing.assert_allclose(ours.hu, ref_ct.hu, atol=0.5)
    np.testing.assert_allclose(ours.hu, hu, atol=0.5)


@pytest.mark.parametrize("name,stem", [
    ("ct.nii.gz", "ct"), ("CT.NII", "CT"), ("scan.v2.mha", "scan.v2"), ("x.nrrd", "x"), ("1.2.840.113654", "1.2.840.113654"),
])
def test_file_stem_and_sidecar(name, stem):
    assert file_stem(f"/data/{name}") == stem
    assert sidecar_path(f"/data/{name}").name == stem + ".json"


def test_dicom_preamble(tmp_path):
    (tmp_path / "part10").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    (tmp_path / "short").write_bytes(b"\0" * 130)
    assert has_dicom_preamble(tmp_path / "part10")
    assert not has_dicom_preamble(tmp_path / "short")
    assert not has_dicom_preamble(tmp_path / "missing")


def test_nifti_without_orientation_refused(tmp_path, phantom):
    """qform_code = sform_code = 0: nibabel would guess a mirrored (LAS) frame; refuse instead."""
    hu, aff = phantom
    img = nib.Nifti1Image(hu, aff)
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, tmp_path / "noform.nii.gz")
    with pytest.raises(CTReadError, match="no orientation"):
        read_ct(tmp_path / "noform.nii.gz")


def test_dicom_slice_without_position_is_named(tmp_path, phantom):
    """A slice lacking ImagePositionPatient is reported by name, not as a 'missing slice' between others."""
    import pydicom

    hu, aff = phantom
    files = write_dicom_series(tmp_path / "s", hu, aff, file_names=[f"im{k:02d}.dcm" for k in range(hu.shape[2])])
    ds = pydicom.dcmread(files[4])
    del ds.ImagePositionPatient
    ds.save_as(files[4])
    with pytest.raises(CTReadError, match="im04.dcm: missing DICOM tag ImagePositionPatient"):
        read_ct(tmp_path / "s")



def _series_with_one_slice_changed(tmp_path, phantom, change):
    import pydicom

    hu, aff = phantom
    files = write_dicom_series(tmp_path / "s", hu, aff, file_names=[f"im{k:02d}.dcm" for k in range(hu.shape[2])])
    ds = pydicom.dcmread(files[-1])
    change(ds)
    ds.save_as(files[-1])
    return tmp_path / "s"


def test_dicom_slice_with_other_pixel_spacing_is_named(tmp_path, phantom):
    """Was stacked silently with the first slice's spacing."""
    def change(ds):
        ds.PixelSpacing = [f"{float(v) * 1.5:.6f}" for v in ds.PixelSpacing]
    folder = _series_with_one_slice_changed(tmp_path, phantom, change)
    with pytest.raises(CTReadError, match="im.*dcm: pixel spacing differs from the rest of the series"):
        read_ct(folder)


def test_dicom_slice_shifted_in_plane_is_named(tmp_path, phantom):
    """An end slice 30 mm off the others' line (a mixed series) was stacked as if aligned."""
    def change(ds):
        ds.ImagePositionPatient = [f"{float(v) + d:.6f}" for v, d in zip(ds.ImagePositionPatient, (30.0, 0.0, 0.0))]
    folder = _series_with_one_slice_changed(tmp_path, phantom, change)
    name = sorted(folder.iterdir())[-1].name
    with pytest.raises(CTReadError, match=f"slice {name} lies .* off the line of the other slices"):
        read_ct(folder)

def _marker_ct() -> tuple[np.ndarray, np.ndarray]:
    """A RAS+ water cylinder in air with bone blocks on the patient's left (−x) and toward the head (+z)."""
    sp = np.array([12.0, 12.0, 15.0])
    shape = (24, 20, 16)
    aff = np.diag([*sp, 1.0])
    aff[:3, 3] = -(np.array(shape) - 1) / 2 * sp
    x, y, z = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, sp)], indexing="ij")
    hu = np.where((x / 120) ** 2 + (y / 90) ** 2 < 1, 0.0, -1000.0)
    hu[(np.abs(x + 70) < 20) & (np.abs(y) < 20) & (np.abs(z) < 20)] = 1400.0  # patient's left
    hu[(np.abs(x) < 20) & (np.abs(y) < 20) & (np.abs(z - 70) < 20)] = 1400.0  # superior, centred in x
    return hu.astype(np.float32), aff


def test_same_xrays_from_any_storage_and_anatomy_upright(tmp_path):
    """NIfTI / DICOM in other axis orders, feet-first or sagittal, give identical DRRs in the display frame."""
    from hybrid_vit_cascade.config import DataConfig
    from hybrid_vit_cascade.data.render import render_xrays

    cfg = DataConfig(geometry={"det_pixels": 32}, fov_mm=400.0)
    hu, aff = _marker_ct()
    paths = [write_nifti(tmp_path / "ras.nii", hu, aff)]
    arr, arr_aff = reorient(hu, aff, "PSR")  # sagittal-major storage
    img = nib.Nifti2Image(np.rint((arr + 1024) / 0.5).astype(np.int16), arr_aff)
    img.header.set_slope_inter(0.5, -1024.0)  # integer storage with scl_slope / scl_inter
    nib.save(img, tmp_path / "psr.nii.gz")
    paths.append(tmp_path / "psr.nii.gz")
    for code in ("RPI", "LSA"):  # feet-first axial (IOP −1,0,0,0,1,0) and coronal slices
        arr, arr_aff = reorient(hu, aff, code)
        write_dicom_series(tmp_path / code, arr, arr_aff)
        paths.append(tmp_path / code)
    li = [render_xrays(read_ct(p), cfg, 16, ["ap", "lateral"], center_mm=np.zeros(3))[0].numpy() for p in paths]
    for other in li[1:]:
        np.testing.assert_allclose(other, li[0], atol=1e-4)
    ap = li[0][0] - li[0][0][:, ::-1]  # left minus right half: positive where the image's right is denser
    assert ap[:, 16:].sum() > 0  # the patient's left block shows on the image's right (viewer facing the patient)
    assert li[0][0][:16].sum() > li[0][0][16:].sum()  # the superior block: head up

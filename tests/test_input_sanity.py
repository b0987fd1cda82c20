"""Input sanity where a CT or an X-ray enters: degenerate inputs are refused with a one-line reason."""
from __future__ import annotations

import types

import numpy as np
import pytest

from hybrid_vit_cascade.cli import main
from hybrid_vit_cascade.config import DataConfig
from hybrid_vit_cascade.data.discover import discover_inputs
from hybrid_vit_cascade.data.io import CTReadError, read_ct, write_dicom_series, write_nifti
from hybrid_vit_cascade.data.phantoms import reorient, write_phantom
from hybrid_vit_cascade.inference import xray_io as X


def _body(shape=(16, 16, 16)) -> np.ndarray:
    """Air with a water-and-bone cylinder along z, plus a little noise (a minimal plausible CT)."""
    x, y = np.mgrid[0:shape[0], 0:shape[1]]
    r = np.hypot(x - (shape[0] - 1) / 2, y - (shape[1] - 1) / 2)
    hu = np.where(r < 0.35 * min(shape[:2]), 40.0, -1000.0)[:, :, None] * np.ones(shape[2])
    hu[r < 2] = 700.0
    return (hu + np.random.default_rng(0).normal(0, 5, shape)).astype(np.float32)


def _nifti(tmp_path, hu, spacing=4.0, name="ct.nii") -> str:
    return write_nifti(tmp_path / name, hu, np.diag([spacing, spacing, spacing, 1.0]))


# ---------------------------------------------------------------- CTs that pass


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "PIR", "ASL"])  # axial, coronal and sagittal storage orders
def test_plausible_ct_passes_in_any_orientation(tmp_path, axcodes):
    hu = _body((16, 20, 12))
    arr, aff = reorient(hu, np.diag([4.0, 3.0, 5.0, 1.0]), axcodes)
    ct = read_ct(write_nifti(tmp_path / "ct.nii", arr, aff))
    np.testing.assert_allclose(ct.hu, hu)


def test_tiny_phantoms_pass(tmp_path):
    """The coarsest phantoms `hvc phantoms --size 8` writes (thick slices capped) are readable CTs."""
    for seed in range(8):
        write_phantom(tmp_path / f"p{seed}.nii.gz", seed, size=8)
        assert max(read_ct(tmp_path / f"p{seed}.nii.gz").spacing) <= 80.0


# ---------------------------------------------------------------- CTs that are refused


@pytest.mark.parametrize("shape", [(3, 3, 3), (2, 20000, 2)])
def test_degenerate_shape_refused(tmp_path, shape):
    hu = np.random.default_rng(0).normal(0, 300, shape).astype(np.float32)
    with pytest.raises(CTReadError, match="degenerate volume"):
        read_ct(_nifti(tmp_path, hu))


@pytest.mark.parametrize("spacing", [0.001, 100.0])
def test_implausible_spacing_refused(tmp_path, spacing):
    with pytest.raises(CTReadError, match="implausible voxel spacing"):
        read_ct(_nifti(tmp_path, _body(), spacing))


def test_too_small_extent_refused(tmp_path):
    with pytest.raises(CTReadError, match="spans only 16 × 16 × 16 mm"):
        read_ct(_nifti(tmp_path, _body(), 1.0))


def test_constant_volume_refused(tmp_path):
    with pytest.raises(CTReadError, match="constant volume"):
        read_ct(_nifti(tmp_path, np.zeros((16, 16, 16), np.float32)))


def test_huge_values_refused(tmp_path):
    hu = _body()
    hu[5, 5, 5] = 1e30
    with pytest.raises(CTReadError, match="not Hounsfield units"):
        read_ct(_nifti(tmp_path, hu))


def test_raw_stored_values_refused(tmp_path):
    raw = _body() + 1024.0  # stored pixel values, the rescale intercept never applied
    with pytest.raises(CTReadError, match="raw stored values without the rescale"):
        read_ct(_nifti(tmp_path, raw))


@pytest.mark.parametrize("scale", ["mu", "minus_one_to_one"])
def test_non_hu_units_refused(tmp_path, scale):
    """μ (1/mm) was called a 'constant volume'; [-1, 1]-normalised values were read as water."""
    hu = _body()
    arr = (hu + 1000.0) / 1000.0 * 0.02 if scale == "mu" else np.clip(hu, -1000.0, 1000.0) / 1000.0
    with pytest.raises(CTReadError, match="not Hounsfield units .*normalised intensities"):
        read_ct(_nifti(tmp_path, arr.astype(np.float32)))


def test_mostly_metal_refused(tmp_path):
    hu = _body()
    hu[:, :, :4] = 6000.0  # a quarter of the scan denser than bone: a wrong slope, not a patient
    with pytest.raises(CTReadError, match="denser than bone"):
        read_ct(_nifti(tmp_path, hu))


def test_all_air_refused(tmp_path):
    air = (-1000.0 + np.random.default_rng(0).normal(0, 20, (16, 16, 16))).astype(np.float32)
    with pytest.raises(CTReadError, match="no body"):
        read_ct(_nifti(tmp_path, air))


def test_dicom_all_air_refused(tmp_path):
    """The same checks apply to DICOM series (every reader ends in read_ct's validation)."""
    air = (-1000.0 + np.random.default_rng(0).normal(0, 20, (16, 16, 16))).astype(np.float32)
    write_dicom_series(tmp_path / "s", air, np.diag([4.0, 4.0, 4.0, 1.0]))
    with pytest.raises(CTReadError, match="no body"):
        read_ct(tmp_path / "s")


# ---------------------------------------------------------------- hvc prepare: reasons per file


def _mr_series(folder):
    import pydicom

    for f in write_dicom_series(folder, _body(), np.diag([4.0, 4.0, 4.0, 1.0])):
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)


def test_mr_series_read_says_not_a_ct(tmp_path):
    _mr_series(tmp_path / "mr")
    with pytest.raises(CTReadError, match="modality MR: not a CT"):
        read_ct(tmp_path / "mr")


def test_mr_series_is_a_skip_reason_in_discovery(tmp_path):
    _mr_series(tmp_path / "study" / "mr")
    found, skipped = discover_inputs([tmp_path / "study"])
    assert found == [] and [s["source"] for s in skipped] == [str(tmp_path / "study" / "mr")]
    assert skipped[0]["reason"].startswith("modality MR: not a CT")


def test_folder_without_ct_is_a_skip_reason(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    _, skipped = discover_inputs([tmp_path / "notes"])
    assert skipped == [{"source": str(tmp_path / "notes"),
                        "reason": "no CT in this folder (no NIfTI/MHA/NRRD file or DICOM series)"}]


def test_prepare_summary_lists_each_skip_reason(tmp_path, capsys):
    _mr_series(tmp_path / "in" / "mr")
    air = (-1000.0 + np.random.default_rng(0).normal(0, 20, (16, 16, 16))).astype(np.float32)
    _nifti(tmp_path / "in", air, name="air.nii")
    rc = main(["prepare", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "ds"), "--size", "8",
               "--det-pixels", "8", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"skipped {tmp_path / 'in' / 'mr'}: modality MR: not a CT" in err
    assert f"skipped {tmp_path / 'in' / 'air.nii'}: no body" in err


def test_zero_split_fails_before_any_work(tmp_path):
    """A DataConfig built in code is not validated: prepare_dataset checks the split before rendering."""
    from hybrid_vit_cascade.data.prepare import prepare_dataset

    write_phantom(tmp_path / "ph.nii.gz", seed=0, size=16)
    cfg = DataConfig().model_copy(update={"split": (0.0, 0.0, 0.0)})
    with pytest.raises(ValueError, match=r"split fractions must be 3 finite numbers ≥ 0"):
        prepare_dataset([tmp_path / "ph.nii.gz"], tmp_path / "ds", [8], ["ap"], cfg, progress=False)
    assert not (tmp_path / "ds").exists()  # nothing was created, nothing rendered


# ---------------------------------------------------------------- X-rays at hvc infer


def _li(n: int = 16) -> np.ndarray:
    y, x = np.mgrid[0:n, 0:n]
    return 4.0 * np.clip(1 - ((x - n / 2) / (0.4 * n)) ** 2 - ((y - n / 2) / (0.45 * n)) ** 2, 0, None)


def test_constant_line_integrals_refused(tmp_path):
    np.save(tmp_path / "flat.npy", np.full((16, 16), 2.0))
    with pytest.raises(X.XrayReadError, match=r"flat\.npy: constant image"):
        X.load_xrays([tmp_path / "flat.npy"], ["ap"], 8.0, 16)


def test_huge_line_integrals_refused(tmp_path):
    np.save(tmp_path / "huge.npy", _li() * 1e30)  # would overflow deep inside the sampler
    with pytest.raises(X.XrayReadError, match=r"huge\.npy: line integrals up to 4e\+30, more than 4 × the model's li_max"):
        X.load_xrays([tmp_path / "huge.npy"], ["ap"], 8.0, 16)


def test_non_finite_display_image_refused(tmp_path):
    from PIL import Image

    img = _li().astype(np.float32)
    img[3, 3] = np.nan
    Image.fromarray(img, mode="F").save(tmp_path / "nan.tiff")
    with pytest.raises(X.XrayReadError, match=r"nan\.tiff: 1 NaN/Inf pixel"):
        X.load_xrays([tmp_path / "nan.tiff"], ["ap"], 8.0, 16)


@pytest.mark.parametrize("li_max", ["-2.5", "nan", "inf"])
def test_invalid_png_li_max_refused(tmp_path, li_max):
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(X.PNG_ENCODING_KEY, X.PNG_ENCODING)
    info.add_text(X.PNG_LI_MAX_KEY, li_max)
    Image.fromarray((_li() / 4 * 65535).astype(np.uint16)).save(tmp_path / "bad.png", pnginfo=info)
    with pytest.raises(X.XrayReadError, match=r"bad\.png: hvc PNG with an invalid 'hvc-li-max'"):
        X.read_xray(tmp_path / "bad.png")


# ---------------------------------------------------------------- hvc drr and hvc evaluate


@pytest.mark.parametrize("flag,value", [("--size", "4000"), ("--det-pixels", "4096")])
def test_drr_refuses_sizes_beyond_memory(tmp_path, capsys, monkeypatch, flag, value):
    from hybrid_vit_cascade.commands import drr

    monkeypatch.setattr(drr, "_memory_bytes", lambda: 8 << 30)  # the same answer on any machine
    write_phantom(tmp_path / "ph.nii.gz", seed=0, size=16)
    assert main(["drr", str(tmp_path / "ph.nii.gz"), "--out", str(tmp_path / "o"), flag, value]) == 2
    assert "GiB of memory, more than this machine's 8 GiB" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_evaluate_on_the_fly_prepare_honours_no_progress(tmp_path, monkeypatch):
    from hybrid_vit_cascade.data import prepare
    from hybrid_vit_cascade.inference.evaluate import prepare_on_the_fly

    seen = {}

    def fake_prepare(inputs, out, sizes, views, data_cfg, progress=True, log=None, **kw):
        seen["progress"] = progress
        return {"cases": [{"case_id": "a"}], "skipped": []}

    monkeypatch.setattr(prepare, "prepare_dataset", fake_prepare)
    rec = types.SimpleNamespace(cfg=types.SimpleNamespace(data=DataConfig(), stages=[types.SimpleNamespace(resolution=8)]),
                                render_size=8, data_info={"render_size": 8}, views=["ap"])
    prepare_on_the_fly(str(tmp_path), rec, tmp_path / "prep", log=lambda m: None, progress=False)
    assert seen == {"progress": False}

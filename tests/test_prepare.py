"""Canonical resampling, splits, and `prepare_dataset`: manifest, X-ray consistency, incremental re-runs."""
import json
import os

import numpy as np
import pytest
import torch

from hybrid_vit_cascade.config import DataConfig
from hybrid_vit_cascade.data.io import CTVolume, read_ct, write_dicom_series, write_nifti
from hybrid_vit_cascade.data.phantoms import make_phantom, phantom_affine, reorient, write_phantom
from hybrid_vit_cascade.data.prepare import assign_splits, ensure_default_dataset, prepare_dataset
from hybrid_vit_cascade.data.preprocessing import body_center, canonicalize, resize_cube
from hybrid_vit_cascade.geometry.physics import normalize_xray, unit_to_mu
from hybrid_vit_cascade.geometry.projector import Projector

CFG = DataConfig(geometry={"det_pixels": 24}, fov_mm=400.0)


# ---------------------------------------------------------------- canonical resampling

def test_canonicalize_same_cube_from_any_orientation(tmp_path):
    hu, sp = make_phantom(2, 32, anisotropic=True, with_table=True)
    aff = phantom_affine(hu.shape, sp, np.array([25.0, -30.0, 480.0]))  # far from the scanner origin
    cubes = []
    for code in ("RAS", "LPS", "SPL"):
        arr, arr_aff = reorient(hu, aff, code)
        cubes.append(canonicalize(read_ct(write_nifti(tmp_path / f"{code}.nii", arr, arr_aff)), 400.0, 24))
    for c in cubes[1:]:
        np.testing.assert_allclose(c, cubes[0], atol=1e-3)


def test_canonicalize_centres_body_and_pads_air():
    hu, sp = make_phantom(3, 32, with_table=True)
    offset = np.array([40.0, -25.0, 300.0])
    ct = CTVolume(hu, phantom_affine(hu.shape, sp, offset), "mem")
    # the body's box centre, not the table: within a voxel of the phantom's own centre in-plane
    c = body_center(ct)
    assert abs(c[0] - offset[0]) < 2 * sp[0]
    out = canonicalize(ct, 600.0, 30)  # larger than the scan: padded with air
    assert out.shape == (30, 30, 30) and out.dtype == np.float32
    assert np.all(out[:, :, 0] == -1024.0) and np.all(out[0] == -1024.0)
    body = out > -500
    idx = np.nonzero(body)
    # the largest body component's box is centred in x (the table lies below, in -y)
    assert abs((idx[0].min() + idx[0].max()) / 2 - 14.5) <= 1.0


def test_cube_centred_on_lungs_along_z():
    hu, sp = make_phantom(2, 32, with_table=False)  # no bowel gas in the lowest slices (repeated 12× below)
    aff = phantom_affine(hu.shape, sp, np.zeros(3))
    chest = body_center(CTVolume(hu, aff, "chest"))
    # the same chest with 60 slices of lung-free "abdomen" below it: the cube must not move down
    ext = np.concatenate([np.repeat(hu[:, :, :5], 12, axis=2), hu], axis=2)
    ext_aff = aff.copy()
    ext_aff[2, 3] -= 60 * sp[2]
    np.testing.assert_allclose(body_center(CTVolume(ext, ext_aff, "chest+abdomen")), chest, atol=1e-6)
    # and the lungs lie inside the prepared cube
    lungs_z = np.flatnonzero(((hu > -900) & (hu < -780)).sum(axis=(0, 1)) > 20) * sp[2] + aff[2, 3]
    assert chest[2] - 180 < lungs_z.min() and lungs_z.max() < chest[2] + 180


def test_canonicalize_antialiases():
    # a 1-voxel checkerboard has no content below Nyquist: downsampling must give its mean
    n = 48
    i, j, k = np.indices((n, n, n))
    hu = np.where((i + j + k) % 2 == 0, 1000.0, -1000.0).astype(np.float32)
    ct = CTVolume(hu, np.diag([1.0, 1.0, 1.0, 1.0]), "mem")
    out = canonicalize(ct, 48.0, 20, center_mm=np.full(3, 23.5))  # factor 2.4: block mean + Gaussian
    assert np.abs(out[3:-3, 3:-3, 3:-3]).max() < 30.0


def test_resize_cube():
    x = np.random.default_rng(0).normal(size=(32, 32, 32)).astype(np.float32)
    y = resize_cube(x, 16)
    np.testing.assert_allclose(y[0, 0, 0], x[:2, :2, :2].mean(), rtol=1e-5)  # area averaging
    assert resize_cube(x, 32) is not x and np.array_equal(resize_cube(x, 32), x)
    c = np.full((24, 24, 24), 0.3, np.float32)
    for size in (16, 10, 48):
        np.testing.assert_allclose(resize_cube(c, size), 0.3, atol=1e-6)
    t = torch.from_numpy(x)[None, None]
    assert resize_cube(t, 12).shape == (1, 1, 12, 12, 12)
    with pytest.raises(ValueError, match="cube"):
        resize_cube(np.zeros((4, 4, 5)), 2)


# ---------------------------------------------------------------- splits

def test_splits_deterministic_and_tiny_sets_get_val_and_test():
    pids = [f"p{i}" for i in range(24)]
    a = assign_splits(pids, (0.8, 0.1, 0.1), seed=0)
    assert a == assign_splits(list(reversed(pids)), (0.8, 0.1, 0.1), seed=0)
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 20, "val": 2, "test": 2}
    assert a != assign_splits(pids, (0.8, 0.1, 0.1), seed=1)
    for n in (3, 4, 5):
        s = assign_splits([f"q{i}" for i in range(n)], (0.8, 0.1, 0.1))
        vals = list(s.values())
        assert vals.count("val") >= 1 and vals.count("test") >= 1 and vals.count("train") >= 1
    assert set(assign_splits(["a", "b"], (0.8, 0.1, 0.1)).values()) == {"train"}  # too few to hold out
    assert set(assign_splits(["a", "b", "c", "d"], (0.0, 0.0, 1.0)).values()) == {"test"}
    assert set(assign_splits(["a", "b", "c"], (1.0, 0.0, 0.0)).values()) == {"train"}


# ---------------------------------------------------------------- prepare_dataset

@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    for i in range(4):
        write_phantom(root / "nifti" / f"ph{i}.nii.gz", seed=100 + i, size=24)
    hu, sp = make_phantom(7, 24)
    arr, aff = reorient(hu, phantom_affine(hu.shape, sp, np.zeros(3)), "LPS")
    write_dicom_series(root / "dicom" / "LIDC-IDRI-0042" / "study" / "series", arr, aff,
                       patient_id="LIDC-IDRI-0042", slope=1.0, intercept=-1024.0)
    (root / "nifti" / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 definitely truncated")
    return root


def test_prepare_manifest_and_cases(tmp_path, inputs):
    out = tmp_path / "ds"
    m = prepare_dataset([inputs], out, [8, 16], ["ap", "lateral"], CFG, progress=False)
    assert len(m["cases"]) == 5
    assert [s["source"] for s in m["skipped"]] == [str(inputs / "nifti" / "corrupt.nii.gz")]
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["cases"] == m["cases"]
    for key in ("sizes", "views", "hu_window", "geometry", "xray_scale", "mu_water", "fov_mm", "spacing_mm"):
        assert key in on_disk
    assert on_disk["xray_scale"]["li_max"] == pytest.approx(CFG.mu_water * CFG.fov_mm * 1.5)
    assert on_disk["spacing_mm"] == {"8": 50.0, "16": 25.0}
    dicom = next(c for c in m["cases"] if c["kind"] == "dicom")
    assert dicom["patient_id"] == "LIDC-IDRI-0042" and dicom["case_id"] == "LIDC-IDRI-0042"
    for c in m["cases"]:
        assert len(c["source_sha256"]) == 64 and c["split"] in ("train", "val", "test")
        assert len(c["original_spacing_mm"]) == 3
    splits = [c["split"] for c in m["cases"]]
    assert splits.count("val") >= 1 and splits.count("test") >= 1
    # arrays: shapes, ranges, and xray = normalize(li) with the ONE dataset constant
    with np.load(out / m["cases"][0]["file"]) as z:
        assert z["ct_8"].shape == (8, 8, 8) and z["ct_16"].shape == (16, 16, 16)
        assert z["ct_16"].dtype == np.float32 and z["ct_16"].min() >= -1 and z["ct_16"].max() <= 1
        assert z["xray"].shape == z["li"].shape == (2, 24, 24)
        li_max = m["xray_scale"]["li_max"]
        np.testing.assert_allclose(z["xray"], 2 * z["li"] / li_max - 1, atol=1e-6)
        # the stored DRR is the projection of the stored highest-resolution target
        proj = Projector(CFG.geometry, ["ap", "lateral"])
        mu = unit_to_mu(torch.from_numpy(z["ct_16"])[None, None], tuple(CFG.hu_window), CFG.mu_water)
        np.testing.assert_allclose(proj(mu, CFG.fov_mm / 16)[0].numpy(), z["li"], rtol=1e-4, atol=1e-5)
        assert normalize_xray(torch.tensor(0.0), li_max) == -1
    assert not [p for p in (out / "cases").iterdir() if p.name.startswith(".")]  # no temp files left


def test_prepare_incremental(tmp_path, inputs):
    out = tmp_path / "ds"
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        os.link(inputs / "nifti" / f"ph{i}.nii.gz", src / f"ph{i}.nii.gz")
    m1 = prepare_dataset([src], out, [8], ["ap"], CFG, progress=False)
    assert len(m1["last_run"]["prepared"]) == 3
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "cases").iterdir()}
    m2 = prepare_dataset([src], out, [8], ["ap"], CFG, progress=False)
    assert m2["last_run"]["prepared"] == [] and len(m2["last_run"]["reused"]) == 3
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cases").iterdir()} == mtimes
    assert [c["split"] for c in m2["cases"]] == [c["split"] for c in m1["cases"]]
    # one input changes -> only it is redone
    (src / "ph1.nii.gz").unlink()
    write_phantom(src / "ph1.nii.gz", seed=999, size=24)
    m3 = prepare_dataset([src], out, [8], ["ap"], CFG, progress=False)
    assert m3["last_run"]["prepared"] == ["ph1"]
    # settings change -> everything is redone
    m4 = prepare_dataset([src], out, [8], ["ap", "lateral"], CFG, progress=False)
    assert sorted(m4["last_run"]["prepared"]) == ["ph0", "ph1", "ph2"]
    with np.load(out / "cases" / "ph0.npz") as z:
        assert z["xray"].shape[0] == 2


def test_ensure_default_dataset_builds_once(tmp_path):
    cfg = DataConfig(cache_dir=str(tmp_path / "cache"), phantoms={"n": 3, "size": 16}, geometry={"det_pixels": 16})
    root = ensure_default_dataset(cfg, [8], progress=False)
    m = json.loads((root / "manifest.json").read_text())
    assert len(m["cases"]) == 3 and m["sizes"] == [8]
    stamp = (root / "manifest.json").stat().st_mtime_ns
    assert ensure_default_dataset(cfg, [8], progress=False) == root
    assert (root / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    other = ensure_default_dataset(cfg, [8, 16], progress=False)
    assert other != root
    named = DataConfig(dataset=str(root))
    assert ensure_default_dataset(named, [8]) == root
    with pytest.raises(ValueError, match="missing \\[16\\]"):
        ensure_default_dataset(named, [8, 16])


def test_interrupted_run_keeps_finished_cases(tmp_path, inputs, monkeypatch):
    import hybrid_vit_cascade.data.prepare as prep

    real = prep.render_case
    calls = []

    def flaky(ct, *rest):
        calls.append(ct.source)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user hits Ctrl-C during the third case
        return real(ct, *rest)

    monkeypatch.setattr(prep, "render_case", flaky)
    (tmp_path / "ds" / "cases").mkdir(parents=True)
    (tmp_path / "ds" / "cases" / ".ph9.npz.tmp").write_bytes(b"half")  # debris of a killed write
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset([inputs / "nifti"], tmp_path / "ds", [8], ["ap"], CFG, progress=False)
    m = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert len(m["cases"]) == 2
    monkeypatch.setattr(prep, "render_case", real)
    m2 = prepare_dataset([inputs / "nifti"], tmp_path / "ds", [8], ["ap"], CFG, progress=False)
    assert len(m2["last_run"]["reused"]) == 2 and len(m2["last_run"]["prepared"]) == 2
    assert sorted(p.name for p in (tmp_path / "ds" / "cases").iterdir()) == [f"ph{i}.npz" for i in range(4)]


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's complaints about the broken file
def test_dicom_folder_with_a_corrupt_file(tmp_path):
    hu, sp = make_phantom(8, 16)
    series = tmp_path / "in" / "PAT-1" / "st" / "se"
    write_dicom_series(series, hu, phantom_affine(hu.shape, sp, np.zeros(3)), patient_id="PAT-1")
    (series / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    m = prepare_dataset([tmp_path / "in"], tmp_path / "ds", [8], ["ap"], CFG, progress=False)
    assert [c["case_id"] for c in m["cases"]] == ["PAT-1"]  # the good series, once
    assert len(m["skipped"]) == 1 and m["skipped"][0]["source"].endswith("broken.dcm")

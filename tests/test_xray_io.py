"""X-ray readers: each format written to tmp and read back into the model's normalisation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _dicomkit import radiograph_dataset

from hybrid_vit_cascade.inference import xray_io as X

P = 16  # det_pixels


def _li(h: int = 24, w: int = 24, seed: int = 0) -> np.ndarray:
    """A smooth positive line-integral image (a bright 'body' on zero air)."""
    y, x = np.mgrid[0:h, 0:w]
    body = np.clip(1 - ((x - w / 2) / (0.4 * w)) ** 2 - ((y - h / 2) / (0.45 * h)) ** 2, 0, None)
    return 4.0 * body + np.random.default_rng(seed).uniform(0, 0.01, (h, w))


def _dicom(path, pixels: np.ndarray, photometric="MONOCHROME2", slope=1.0, intercept=0.0, modality="DX"):
    ds = radiograph_dataset(modality, photometric, *pixels.shape)
    ds.SamplesPerPixel = 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def test_hvc_png_inverts_line_integrals(tmp_path):
    li = _li()
    f = tmp_path / "ap.png"
    X.write_drr_png(f, li, view="ap")
    raw = X.read_xray(f)
    assert raw.kind == "line_integral" and raw.view == "ap"
    np.testing.assert_allclose(raw.pixels, li, atol=li.max() / 65535)
    li_max = 5.0
    x, _ = X.load_xrays([f], ["ap"], li_max, det_pixels=24)
    np.testing.assert_allclose(x[0].numpy(), 2 * li / li_max - 1, atol=1e-4)


@pytest.mark.parametrize("suffix", [".npy", ".nii.gz"])
def test_array_line_integrals(tmp_path, suffix):
    li = _li(seed=1)
    f = tmp_path / f"lat{suffix}"
    if suffix == ".npy":
        np.save(f, li)
    else:
        import nibabel as nib

        # As `hvc drr` writes it: x = image column, y = row counted from the bottom.
        nib.save(nib.Nifti1Image(li.T[:, ::-1, None].astype(np.float32), np.eye(4)), str(f))
    x, raws = X.load_xrays([f], ["lateral"], li_max=4.0, det_pixels=24)
    assert raws[0].kind == "line_integral"
    np.testing.assert_allclose(x[0].numpy(), 2 * li / 4.0 - 1, atol=1e-5)


def test_stacked_views_in_one_file_and_resize(tmp_path):
    li = np.stack([_li(32, 32, 0), _li(32, 32, 1)])
    f = tmp_path / "both.npy"
    np.save(f, li)
    x, raws = X.load_xrays([f], ["ap", "lateral"], li_max=4.0, det_pixels=P)
    assert x.shape == (2, P, P) and x.dtype == torch.float32
    # 32 -> 16 by area averaging = 2×2 block average of a linear map.
    expect = (2 * li / 4.0 - 1).reshape(2, P, 2, P, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(x.numpy(), expect, atol=1e-5)
    assert [r.view for r in raws] == ["ap", "lateral"]


@pytest.mark.parametrize("fmt,dtype", [("png", np.uint8), ("png", np.uint16), ("tiff", np.uint8),
                                       ("tiff", np.uint16), ("jpeg", np.uint8)])
def test_display_images_percentile_mapped(tmp_path, fmt, dtype):
    from PIL import Image

    li = _li(40, 40)
    img = (li / li.max() * np.iinfo(dtype).max).astype(dtype)
    f = tmp_path / f"ap.{fmt}"
    Image.fromarray(img).save(str(f))
    raw = X.read_xray(f)
    assert raw.kind == "intensity"
    x, _ = X.load_xrays([f], ["ap"], li_max=4.0, det_pixels=40)
    x = x[0].numpy()
    assert x.min() == pytest.approx(-1.0) and x.max() == pytest.approx(1.0)
    ref = X.percentile_normalize(img.astype(np.float64))
    np.testing.assert_allclose(x, ref, atol=0.1 if fmt == "jpeg" else 1e-5)
    # Bright (attenuating) stays bright: the body centre is high, the air corner low.
    assert x[20, 20] > 0.5 and x[0, 0] < -0.9


def test_grey_saved_as_rgb_is_accepted_colour_rejected(tmp_path):
    from PIL import Image

    li = _li(40, 40)
    g = (li / li.max() * 255).astype(np.uint8)
    Image.fromarray(np.stack([g, g, g], -1)).save(str(tmp_path / "grey.jpg"), quality=90)
    x, _ = X.load_xrays([tmp_path / "grey.jpg"], ["ap"], 4.0, det_pixels=40)
    assert x.shape == (1, 40, 40)
    rgb = np.stack([g, np.flipud(g), np.zeros_like(g)], -1)
    Image.fromarray(rgb).save(str(tmp_path / "colour.png"))
    with pytest.raises(X.XrayReadError, match=r"colour\.png.*colour image"):
        X.read_xray(tmp_path / "colour.png")


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_rescale_and_polarity(tmp_path, photometric):
    li = _li(32, 32)
    stored = (li / li.max() * 4000).astype(np.uint16)
    if photometric == "MONOCHROME1":  # stored inverted: attenuating displays bright after inversion
        stored = (4000 - stored).astype(np.uint16)
    f = tmp_path / "cr.dcm"
    _dicom(f, stored, photometric, slope=0.5, intercept=-100.0, modality="CR")
    raw = X.read_xray(f)
    expect = stored * 0.5 - 100.0
    np.testing.assert_allclose(raw.pixels, -expect if photometric == "MONOCHROME1" else expect)
    x, _ = X.load_xrays([f], ["ap"], 4.0, det_pixels=32)
    assert x[0, 16, 16] > 0.5 and x[0, 0, 0] < -0.9  # body bright in both polarities
    # A DICOM without the .dcm suffix is found by its preamble.
    g = tmp_path / "IMG0001"
    g.write_bytes(f.read_bytes())
    assert X.read_xray(g).note.startswith("DICOM CR")


def test_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(X.XrayReadError, match=r"broken\.png.*not a readable image"):
        X.read_xray(bad)
    with pytest.raises(X.XrayReadError, match=r"missing\.png.*not found"):
        X.read_xray(tmp_path / "missing.png")
    baddcm = tmp_path / "broken.dcm"
    baddcm.write_bytes(b"\x00" * 50)
    with pytest.raises(X.XrayReadError, match=r"broken\.dcm"):
        X.read_xray(baddcm)
    ct = tmp_path / "ct.dcm"
    _dicom(ct, np.zeros((8, 8)), modality="CT")
    with pytest.raises(X.XrayReadError, match="--ct"):
        X.read_xray(ct)
    neg = tmp_path / "norm.npy"
    np.save(neg, np.linspace(-1, 1, 64).reshape(8, 8))
    with pytest.raises(X.XrayReadError, match=r"norm\.npy.*≥ 0"):
        X.read_xray(neg)
    const = tmp_path / "flat.png"
    from PIL import Image

    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(str(const))
    with pytest.raises(X.XrayReadError, match=r"flat\.png.*constant"):
        X.load_xrays([const], ["ap"], 4.0, det_pixels=P)


def test_view_count_and_names(tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, _li(seed=0))
    np.save(b, _li(seed=1))
    with pytest.raises(ValueError, match=r"1 X-ray image\(s\) \(.*a\.npy\).*name the view of each with --views"):
        X.load_xrays([a], ["ap", "lateral"], 4.0, P)
    # One view of two: its slot filled, the absent view's slot zeros (masked out by the model).
    x, raws = X.load_xrays([a], ["ap", "lateral"], 4.0, P, views=["lateral"])
    assert [r.view for r in raws] == ["lateral"] and x.shape == (2, P, P)
    assert torch.count_nonzero(x[0]) == 0 and torch.count_nonzero(x[1]) > 0
    with pytest.raises(ValueError, match=r"trained on 2 view\(s\).*3 X-ray image\(s\).*at most one per view"):
        X.load_xrays([a, b, a], ["ap", "lateral"], 4.0, P)
    with pytest.raises(ValueError, match="do not match"):
        X.load_xrays([a, b], ["ap", "lateral"], 4.0, P, views=["ap", "pa"])
    # Given in the other order with names: reordered to the model's order.
    x, raws = X.load_xrays([a, b], ["ap", "lateral"], 4.0, P, views=["lateral", "ap"])
    assert [r.path for r in raws] == [str(b), str(a)]
    # An hvc PNG knows its view; a contradiction is an error.
    f = tmp_path / "lat.png"
    X.write_drr_png(f, _li(), view="lateral")
    with pytest.raises(X.XrayReadError, match="rendered as view 'lateral'"):
        X.load_xrays([f], ["ap"], 4.0, P, views=["ap"])


def test_non_square_is_centre_cropped():
    img = np.zeros((20, 30))
    img[:, 5:25] = np.arange(20)[:, None]
    out = X.resample_square(img, 20)
    np.testing.assert_allclose(out, img[:, 5:25])


def test_reads_what_hvc_drr_writes(tmp_path):
    """`hvc drr` output (PNG per view, NIfTI per view, stacked .npy) all read back to the same line integrals."""
    from hybrid_vit_cascade.cli import main as hvc
    from hybrid_vit_cascade.data.phantoms import write_phantom

    write_phantom(tmp_path / "ct.nii.gz", seed=0, size=24)
    assert hvc(["drr", str(tmp_path / "ct.nii.gz"), "--out", str(tmp_path / "drr"), "--size", "24",
                "--det-pixels", "20"]) == 0
    d = tmp_path / "drr"
    li = np.load(d / "ct_li.npy")  # (V, H, W), the reference
    for v, name in enumerate(["ap", "lateral"]):
        np.testing.assert_allclose(X.read_xray(d / f"ct_{name}_li.nii.gz").pixels, li[v], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(X.read_xray(d / f"ct_{name}.png").pixels, li[v], atol=li[v].max() / 65535)
    x, _ = X.load_xrays([d / "ct_lateral.png", d / "ct_ap_li.nii.gz"], ["ap", "lateral"], 8.0, 20,
                        views=["lateral", "ap"])
    np.testing.assert_allclose(x.numpy(), 2 * li / 8.0 - 1, atol=1e-4)

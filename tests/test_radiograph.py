"""Clinical DICOM films: each header rule (values, view, orientation, scale, collimation, field, intensities)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from _dicomkit import radiograph_dataset

from hybrid_vit_cascade.config import GeometryConfig
from hybrid_vit_cascade.data import xray_stats as XS
from hybrid_vit_cascade.inference import xray_io as X
from hybrid_vit_cascade.data.radiograph import read_radiograph
from hybrid_vit_cascade.data.radiograph_fit import ModelField, describe, radiograph_to_model
from hybrid_vit_cascade.runtime.checkpoint import make_data_info

FIELD = ModelField(GeometryConfig(det_pixels=16), 360.0)  # 16 px of 360·1.05/16 = 23.625 mm: 378 mm at the isocentre


def write_film(path, stored: np.ndarray, modality="DX", photometric="MONOCHROME2", **tags) -> str:
    """A single-frame 12-bit greyscale DICOM radiograph with the given header attributes."""
    ds = radiograph_dataset(modality, photometric, *stored.shape)
    ds.SamplesPerPixel = 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(stored.astype("<u2")).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


def _texture(h=24, w=32, seed=0) -> np.ndarray:
    """Distinct, non-flat stored values (no border line is flat)."""
    return np.random.default_rng(seed).integers(200, 3800, (h, w)).astype(np.uint16)


def _chest(h=120, w=120, body=(20, 100, 25, 95), seed=0) -> np.ndarray:
    """Stored values of a 'film': dark noisy air, a bright noisy body box with two darker 'lungs'."""
    rng = np.random.default_rng(seed)
    img = 300 + rng.normal(0, 40, (h, w))
    t, b, l, r = body
    img[t:b, l:r] = 2600 + rng.normal(0, 40, (b - t, r - l))
    mid = (l + r) // 2
    for a, c in ((l + 6, mid - 4), (mid + 4, r - 6)):
        img[t + 10:b - 20, a:c] = 1500 + rng.normal(0, 40, (b - t - 30, c - a))
    return np.clip(img, 0, 4095).astype(np.uint16)


# ------------------------------------------------------------------------------------- pixel values


def test_rescale_and_monochrome1(tmp_path):
    s = _texture()
    f = write_film(tmp_path / "m1.dcm", s, photometric="MONOCHROME1", RescaleSlope=2, RescaleIntercept=-10,
                   PresentationIntentType="FOR PROCESSING")
    rad = read_radiograph(f)
    np.testing.assert_allclose(rad.pixels, -(2.0 * s - 10.0))  # rescaled, then negated: bright = attenuating
    assert rad.info["inverted"] and rad.info["modality_lut"] == {"slope": 2.0, "intercept": -10.0}
    assert rad.info.get("voi") is None
    m2 = read_radiograph(write_film(tmp_path / "m2.dcm", s, RescaleSlope=2, RescaleIntercept=-10))
    np.testing.assert_allclose(m2.pixels, 2.0 * s - 10.0)
    assert not m2.info["inverted"]


def test_voi_window_for_presentation_only(tmp_path):
    s = np.tile([[1000, 1499, 1500, 2000], [2499, 2500, 3000, 4095]], (8, 4)).astype(np.uint16)  # 16 × 16
    tags = dict(RescaleSlope=1, RescaleIntercept=0, WindowCenter=2000, WindowWidth=1001)
    rad = read_radiograph(write_film(tmp_path / "p.dcm", s, PresentationIntentType="FOR PRESENTATION", **tags))
    # DICOM LINEAR window by hand (PS3.3 C.11.2.1.2.1): c' = 1999.5, w' = 1000, output 0…4095 (12 bits)
    expect = np.clip(((s - 1999.5) / 1000 + 0.5) * 4095, 0, 4095)
    expect[s <= 1499.5], expect[s > 2499.5] = 0, 4095
    np.testing.assert_allclose(rad.pixels, expect)
    assert rad.info["voi"] == {"window_center": 2000.0, "window_width": 1001.0, "function": "LINEAR"}
    raw = read_radiograph(write_film(tmp_path / "q.dcm", s, PresentationIntentType="FOR PROCESSING", **tags))
    np.testing.assert_allclose(raw.pixels, s)  # for processing: no VOI
    cr = read_radiograph(write_film(tmp_path / "cr.dcm", s, modality="CR", **tags))
    np.testing.assert_allclose(cr.pixels, expect)  # CR (no intent attribute) is for presentation


def test_linear_exposure_is_logged(tmp_path):
    s = _texture()
    rad = read_radiograph(write_film(tmp_path / "lin.dcm", s, PixelIntensityRelationship="LIN",
                                     PixelIntensityRelationshipSign=1, PhotometricInterpretation="MONOCHROME1",
                                     PresentationIntentType="FOR PROCESSING"))
    np.testing.assert_allclose(rad.pixels, -np.log(s.astype(float)))  # −log(intensity): the line integral + const
    assert rad.info["log_applied"]


# -------------------------------------------------------------------------------- scale at the isocentre


@pytest.mark.parametrize("tags,iso,mag,defaulted", [
    (dict(ImagerPixelSpacing=[0.2, 0.2], EstimatedRadiographicMagnificationFactor=1.25), (0.16, 0.16), 1.25, False),
    (dict(ImagerPixelSpacing=[0.2, 0.3], DistanceSourceToDetector=1800, DistanceSourceToPatient=1500),
     (0.2 / 1.2, 0.3 / 1.2), 1.2, False),
    (dict(ImagerPixelSpacing=[0.175, 0.175], ViewPosition="PA"), (0.175 * 1650 / 1800,) * 2, 1800 / 1650, True),
    (dict(ImagerPixelSpacing=[0.175, 0.175], ViewPosition="AP"), (0.175 * 850 / 1000,) * 2, 1000 / 850, True),
    (dict(ImagerPixelSpacing=[0.175, 0.175], ViewPosition="LL"), (0.175 * 1600 / 1800,) * 2, 1800 / 1600, True),
    (dict(ImagerPixelSpacing=[0.2, 0.2], DistanceSourceToDetector=1000, ViewPosition="AP"),
     (0.2 * 850 / 1000,) * 2, 1000 / 850, False),
    (dict(PixelSpacing=[0.15, 0.15], ImagerPixelSpacing=[0.18, 0.18]), (0.15, 0.15), 1.2, None),
    (dict(PixelSpacing=[0.15, 0.15], PixelSpacingCalibrationType="GEOMETRY"), (0.15, 0.15), None, None),
    (dict(PixelSpacing=[0.2, 0.2], ViewPosition="PA"), (0.2 * 1650 / 1800,) * 2, 1800 / 1650, True),
])
def test_spacing_and_magnification(tmp_path, tags, iso, mag, defaulted):
    rad = read_radiograph(write_film(tmp_path / "s.dcm", _texture(), **tags))
    np.testing.assert_allclose(rad.spacing_mm, iso, rtol=1e-6)
    assert rad.info["magnification"] == (pytest.approx(mag, rel=1e-5) if mag else None)
    if defaulted is not None:
        assert rad.info["source_detector_defaulted"] is defaulted
    if defaulted:
        assert "defaults for a" in rad.info["magnification_source"]


def test_implausible_magnification(tmp_path):
    f = write_film(tmp_path / "m.dcm", _texture(), ImagerPixelSpacing=[0.2, 0.2],
                   EstimatedRadiographicMagnificationFactor=5)
    with pytest.raises(X.XrayReadError, match=r"magnification 5 .*EstimatedRadiographicMagnificationFactor"):
        read_radiograph(f)


def test_no_spacing_is_an_error_when_fitting(tmp_path):
    rad = read_radiograph(write_film(tmp_path / "n.dcm", _chest(), ViewPosition="PA"))
    with pytest.raises(X.XrayReadError, match=r"n\.dcm.*no ImagerPixelSpacing or PixelSpacing"):
        radiograph_to_model(rad, FIELD)


# ------------------------------------------------------------------------------- view and orientation


@pytest.mark.parametrize("view,po,expect", [
    ("AP", ["L", "F"], lambda a: a),
    ("AP", ["R", "F"], lambda a: a[:, ::-1]),
    ("PA", ["L", "H"], lambda a: a[::-1]),
    ("AP", ["F", "L"], lambda a: a.T),
    ("PA", ["H", "R"], lambda a: a.T[::-1, ::-1]),
    ("PA", None, lambda a: a),  # hung as read: L\F
    ("LL", ["P", "F"], lambda a: a),
    ("LL", None, lambda a: a),
    ("RL", ["A", "F"], lambda a: a[:, ::-1]),  # a right lateral is a mirrored left lateral
    ("RL", None, lambda a: a[:, ::-1]),  # hung as read from the detector side: anterior right
    ("LATERAL", ["A", "F"], lambda a: a[:, ::-1]),
])
def test_patient_orientation_into_model_convention(tmp_path, view, po, expect):
    s = _texture()
    tags = dict(ViewPosition=view, ImagerPixelSpacing=[0.1, 0.2])
    if po:
        tags["PatientOrientation"] = po
    rad = read_radiograph(write_film(tmp_path / "o.dcm", s, **tags))
    np.testing.assert_array_equal(rad.pixels, expect(s.astype(float)))
    assert rad.view == {"AP": "ap", "PA": "pa"}.get(view, "lateral")
    transposed = po is not None and po[0] in "HF"
    assert (rad.spacing_mm[0] > rad.spacing_mm[1]) is transposed  # row/column spacings follow a transpose
    assert any("no PatientOrientation" in n for n in rad.info["notes"]) is (po is None)


def test_orientation_and_view_errors(tmp_path):
    s = _texture()
    with pytest.raises(X.XrayReadError, match=r"PatientOrientation A\\F does not fit an AP film"):
        read_radiograph(write_film(tmp_path / "a.dcm", s, ViewPosition="AP", PatientOrientation=["A", "F"]))
    with pytest.raises(X.XrayReadError, match="is not two directions"):
        read_radiograph(write_film(tmp_path / "b.dcm", s, ViewPosition="AP", PatientOrientation=["X", "F"]))
    with pytest.raises(X.XrayReadError, match="LLO .*not a view the model knows"):
        read_radiograph(write_film(tmp_path / "c.dcm", s, ViewPosition="LLO"))


def test_header_view_and_views_override(tmp_path):
    s = _chest()
    tags = dict(ImagerPixelSpacing=[3.5, 3.5], EstimatedRadiographicMagnificationFactor=1.1)
    pa = write_film(tmp_path / "pa.dcm", s, ViewPosition="PA", PatientOrientation=["L", "F"], **tags)
    lat = write_film(tmp_path / "rl.dcm", s, ViewPosition="RL", **tags)
    # No --views: the headers decide; a PA film goes into the AP slot of an AP + lateral checkpoint.
    x, raws = X.load_xrays([lat, pa], ["ap", "lateral"], 4.0, 16, field=FIELD)
    assert [r.view for r in raws] == ["ap", "lateral"] and x.shape == (2, 16, 16)
    assert any("PA film fed as the model's AP view" in n for n in raws[0].info["notes"])
    assert raws[1].info["orientation_ops"] == ["columns mirrored"]
    # --views disagreeing with a header wins, with a warning, and the film is re-read as that view.
    _, raws = X.load_xrays([pa], ["ap", "lateral"], 4.0, 16, views=["lateral"], field=FIELD)
    info = raws[0].info
    assert raws[0].view == "lateral" and info["view_source"] == "--views"
    assert any("the header says PA but the film is read as lateral" in w for w in info["warnings"])
    assert any("does not fit a lateral film; the image is used as stored" in w for w in info["warnings"])


# ---------------------------------------------------------------------------------------- collimation


def _masked_film() -> np.ndarray:
    """A black electronic shutter (0, 15 px) far below the air (~300) around a body the tone curve
    compressed (lungs 2300, tissue 2600)."""
    rng = np.random.default_rng(3)
    s = 300 + rng.normal(0, 20, (120, 120))
    s[30:100, 30:90] = 2600 + rng.normal(0, 20, (70, 60))
    s[40:85, 36:58], s[40:85, 62:84] = 2300, 2300
    s[:15], s[-15:], s[:, :15], s[:, -15:] = 0, 0, 0, 0
    return s


def test_black_border_far_below_the_air_reads_as_air(tmp_path):
    # A black electronic shutter (0) far below the air (~300), around a body the tone curve compressed
    # (lungs 2300, tissue 2600): left as it was, the border is the three-class Otsu's lowest class and the
    # air around the body joined the body mask (on a simulated film the crop then landed 10 cm off).
    s = _masked_film()
    rad = read_radiograph(write_film(tmp_path / "b.dcm", np.clip(s, 0, 4095).astype(np.uint16), ViewPosition="PA"))
    assert rad.info["dark_border_px"] == [15, 15, 15, 15]
    air = rad.pixels[20:25, 20:100]
    assert rad.pixels[:15].min() >= air.min() - 1e-9 and rad.pixels[:15].max() <= air.max()  # border = the air's floor
    assert XS.body_mask(rad.pixels).sum() == pytest.approx(70 * 60, rel=0.05)  # the body, not the whole field


def test_white_text_on_a_black_border_is_still_border(tmp_path):
    # Burned-in text or a lead marker on the black mask covers more than 5 % of some border lines; those
    # lines used to stop the border search, and the black strip left inside the field kept the border
    # from being raised to the air (a simulated film with an "L" on its mask: crop 145 mm off).
    s = _masked_film()
    s[20:32, 107:117] = 4095  # white text on the right band: 12 of the 90 rows between the top and bottom bands
    rad = read_radiograph(write_film(tmp_path / "t.dcm", np.clip(s, 0, 4095).astype(np.uint16), ViewPosition="PA"))
    assert rad.info["dark_border_px"][3] >= 15  # the band with the text is border
    assert rad.pixels[:, -15:].min() >= rad.pixels[20:25, 20:100].min() - 1e-9  # raised to the air
    assert XS.body_mask(rad.pixels).sum() == pytest.approx(70 * 60, rel=0.05)


def test_collimation_from_pixels_and_shutter_tags(tmp_path):
    s = _chest(seed=1)
    white = s.copy()
    white[:5], white[-3:], white[:, :7], white[:, -4:] = 4095, 4095, 4095, 4095  # unexposed: brightest
    rad = read_radiograph(write_film(tmp_path / "w.dcm", white, ViewPosition="PA"))
    assert rad.usable == (5, 117, 7, 116) and rad.info["collimation_source"] == ["pixels"]
    black = s.copy()
    black[:6], black[:, -5:] = 0, 0  # electronic masking: kept as air, recorded
    rad = read_radiograph(write_film(tmp_path / "b.dcm", black, ViewPosition="PA"))
    assert rad.usable == (0, 120, 0, 120) and rad.info["dark_border_px"] == [6, 0, 0, 5]
    rad = read_radiograph(write_film(tmp_path / "t.dcm", s, ViewPosition="PA", ShutterShape="RECTANGULAR",
                                     ShutterUpperHorizontalEdge=9, ShutterLowerHorizontalEdge=110,
                                     ShutterLeftVerticalEdge=11, ShutterRightVerticalEdge=100))
    assert rad.usable == (8, 110, 10, 100) and rad.info["collimation_source"] == ["ShutterShape RECTANGULAR"]
    # The mask turns with the image: a right lateral's shutter on the image's right ends up on the left.
    rad = read_radiograph(write_film(tmp_path / "r.dcm", s, ViewPosition="RL", ShutterShape="RECTANGULAR",
                                     ShutterUpperHorizontalEdge=1, ShutterLowerHorizontalEdge=120,
                                     ShutterLeftVerticalEdge=1, ShutterRightVerticalEdge=100))
    assert rad.usable == (0, 120, 20, 120)


# ------------------------------------------------------------------------------ field, crop, intensities


def test_crop_is_physical_and_centred_on_the_body(tmp_path):
    s = np.full((240, 240), 200, np.uint16)
    s[60:135, 100:175] = 3000  # a 75 px = 150 mm body square, off the film's centre
    f = write_film(tmp_path / "sq.dcm", s, ViewPosition="PA", PatientOrientation=["L", "F"],
                   ImagerPixelSpacing=[2.4, 2.4], EstimatedRadiographicMagnificationFactor=1.2)  # 2 mm/px at the isocentre
    x, info = radiograph_to_model(read_radiograph(f), FIELD)
    occupied = (x + 1) / 2  # percentile map (no training statistics): air −1, body +1
    width = occupied.sum(1)[7:9].mean()
    assert width == pytest.approx(150 / 23.625, abs=0.05)  # 150 mm over 23.625 mm model pixels
    rows, cols = np.indices(x.shape)
    centroid = (rows * occupied).sum() / occupied.sum(), (cols * occupied).sum() / occupied.sum()
    np.testing.assert_allclose(centroid, (7.5, 7.5), atol=0.05)  # the body sits in the middle of the field
    assert info["crop"]["field_mm"] == 378.0
    assert info["crop"]["centre_offset_mm"] == [-45.0, 35.0]  # (97.5 − 120) · 2 mm, (137.5 − 120) · 2 mm
    assert any("no xray_stats" in n for n in info["notes"])


def test_field_not_covered(tmp_path):
    s = _chest(100, 120, body=(0, 100, 0, 120))  # the body fills the film
    f = write_film(tmp_path / "small.dcm", s, ViewPosition="PA", PatientOrientation=["L", "F"],
                   ImagerPixelSpacing=[1.0, 1.0], EstimatedRadiographicMagnificationFactor=1.0)
    with pytest.raises(X.XrayReadError, match=r"small\.dcm: the film covers 120 × 100 mm at the isocentre "
                                              r"\(width × height\); the model needs 378 × 378 mm"):
        radiograph_to_model(read_radiograph(f), FIELD)
    # A body well inside a small film: the rest of the field is air, and that is recorded.
    g = write_film(tmp_path / "air.dcm", _chest(), ViewPosition="PA", PatientOrientation=["L", "F"],
                   ImagerPixelSpacing=[2.0, 2.0], EstimatedRadiographicMagnificationFactor=1.0)
    x, info = radiograph_to_model(read_radiograph(g), FIELD)
    assert x.shape == (16, 16) and set(info["crop"]["air_padded_mm"]) == {"top", "bottom", "left", "right"}
    assert x[0, 0] == pytest.approx(-1.0)


def test_a_body_running_off_the_film_is_continued_from_its_edge(tmp_path):
    """A chest that fills a 330 mm wide film (a 35 cm PA plate is ~32 cm at the isocentre): the model's 378 mm
    field overhangs 24 mm per side, within EDGE_FILL_FRACTION, so the film's edge columns are repeated, with a
    warning; a 250 mm wide film (64 mm per side) is refused."""
    from hybrid_vit_cascade.data.radiograph_fit import EDGE_FILL_FRACTION

    s = _chest(130, 110, body=(15, 115, 0, 110))  # 3 mm pixels: 330 × 390 mm, the body touches left and right
    f = write_film(tmp_path / "wide.dcm", s, ViewPosition="PA", PatientOrientation=["L", "F"],
                   ImagerPixelSpacing=[3.0, 3.0], EstimatedRadiographicMagnificationFactor=1.0)
    x, info = radiograph_to_model(read_radiograph(f), FIELD)
    assert set(info["crop"]["edge_filled_mm"]) == {"left", "right"}
    assert info["crop"]["edge_filled_mm"]["left"] == pytest.approx(24.0, abs=1.0)  # (378 − 330) / 2
    assert set(info["crop"]["air_padded_mm"]) <= {"top", "bottom"}
    assert any("runs off the film's left edge" in w for w in info["warnings"])
    rows = slice(6, 10)  # the body's middle rows: its edge columns are body (+1 in the percentile map), not air
    assert x[rows, 0].min() > 0.5 and x[rows, -1].min() > 0.5
    narrow = write_film(tmp_path / "narrow.dcm", _chest(130, 84, body=(15, 115, 0, 84)), ViewPosition="PA",
                        PatientOrientation=["L", "F"], ImagerPixelSpacing=[3.0, 3.0],
                        EstimatedRadiographicMagnificationFactor=1.0)
    limit = EDGE_FILL_FRACTION * FIELD.field_mm
    with pytest.raises(X.XrayReadError, match=rf"narrow\.dcm: the film covers 252 × 390 mm .* reaches the film's "
                                              rf"left and right edge \(more than {limit:.0f} mm beyond it\)"):
        radiograph_to_model(read_radiograph(narrow), FIELD)


def test_histogram_matching_recovers_a_monotone_lut(tmp_path):
    y, x = np.mgrid[0:64, 0:64]
    r2 = ((x - 31.5) / 26) ** 2 + ((y - 31.5) / 29) ** 2
    drr = (r2 < 1) * (1.0 + 0.6 * (1 - r2))  # line-integral-like: a body with a skin edge, air around
    drr += (r2 < 1) * 0.3 * np.exp(-((x - 40) ** 2 + (y - 36) ** 2) / 40)  # a denser structure
    model = 2 * drr / drr.max() - 1
    stats = XS.xray_stats({"ap": [model]})
    film = 4000 * (1 - np.exp(-1.7 * drr))  # a monotone, nonlinear display curve
    mask = XS.body_mask(film)
    matched = XS.match_to_quantiles(film, mask, np.asarray(stats["views"]["ap"]["in_body_quantiles"]))
    assert np.abs(matched - model)[mask].max() < 0.02  # the LUT is undone inside the body
    assert np.abs(matched - model)[~mask].max() < 0.1  # and air stays air
    assert stats["views"]["ap"]["body_fraction"] == pytest.approx(mask.mean())
    with pytest.raises(ValueError, match="nearly.*constant"):
        XS.body_mask(np.ones((8, 8)))


def test_training_stats_from_a_dataset_and_into_the_fit(tmp_path):
    from hybrid_vit_cascade.files import write_json_atomic

    rng = np.random.default_rng(0)
    cases = []
    for i in range(3):
        y, x = np.mgrid[0:16, 0:16]
        body = np.clip(1 - ((x - 7.5) / 6) ** 2 - ((y - 7.5) / 7) ** 2, 0, None) + rng.uniform(0, 0.05, (16, 16))
        np.savez(tmp_path / f"c{i}.npz", xray=np.stack([2 * body - 1, 1.5 * body - 1]).astype(np.float32))
        cases.append({"case_id": f"c{i}", "file": f"c{i}.npz", "split": "train"})
    write_json_atomic(tmp_path / "manifest.json", {"cases": cases, "sizes": [], "views": ["ap", "lateral"],
                                                   "xray_scale": {"li_max": 4.0}})
    stats = XS.training_xray_stats(tmp_path)
    assert stats["images_per_view"] == 3 and len(stats["views"]["lateral"]["in_body_quantiles"]) == 101
    info = make_data_info(tmp_path, json.loads((tmp_path / "manifest.json").read_text()) | {"render_size": 16}, stats)
    assert json.loads(json.dumps(info))["xray_stats"] == stats  # stored in data_info.json as is
    q = stats["views"]["ap"]["in_body_quantiles"]
    f = write_film(tmp_path / "pa.dcm", _chest(), ViewPosition="PA", PatientOrientation=["L", "F"],
                   ImagerPixelSpacing=[3.5, 3.5], EstimatedRadiographicMagnificationFactor=1.1)
    x, info = radiograph_to_model(read_radiograph(f), ModelField(GeometryConfig(det_pixels=16), 360.0, stats), "ap")
    body = XS.body_mask(x)
    np.testing.assert_allclose(np.quantile(x[body], [0.1, 0.5, 0.9]), np.quantile(q, [0.1, 0.5, 0.9]), atol=0.1)
    assert info["intensity"].startswith("histogram-matched") and "training_body_fraction" in info
    assert "PA → AP" in describe(info) and "crop 378 × 378 mm" in describe(info)


def test_hvc_infer_prints_the_header_and_writes_the_sidecar(tmp_path, capsys):
    from test_inference import make_checkpoint

    from hybrid_vit_cascade.cli import main as hvc

    ck = make_checkpoint(tmp_path / "ck")  # 16 px over a 256 mm cube: a 268.8 mm field; no xray_stats
    pa = write_film(tmp_path / "pa.dcm", _chest(), ViewPosition="PA", PatientOrientation=["L", "F"],
                    ImagerPixelSpacing=[3.0, 3.0], EstimatedRadiographicMagnificationFactor=1.1)
    ll = write_film(tmp_path / "ll.dcm", _chest(seed=2), modality="CR", ViewPosition="LL", ImagerPixelSpacing=[3.0, 3.0])
    out = tmp_path / "ct.nii.gz"
    assert hvc(["infer", "--checkpoint", str(ck), "--xray", ll, pa, "--out", str(out), "--steps", "1",
                "--samples", "1", "--stop-at-stage", "1"]) == 0
    text = capsys.readouterr().out
    assert "DX PA → AP; 2.727 × 2.727 mm/px at the isocentre (magnification 1.100" in text
    assert "CR LL → LATERAL; 2.667 × 2.667 mm/px" in text and "crop 269 × 269 mm" in text
    assert "note: no PatientOrientation" in text and "defaults for a LATERAL chest film" in text
    side = json.loads((tmp_path / "ct.json").read_text())
    from hybrid_vit_cascade.runtime.sampling import FILM_GUIDANCE_SCALE

    assert side["sampling"]["guidance_scale"] == FILM_GUIDANCE_SCALE and side["sampling"]["samples"] == 1  # films
    by_view = {i["view"]: i for i in side["inputs"]}
    ap = by_view["ap"]["inferred"]
    assert by_view["ap"]["path"] == pa and ap["header_view"] == "PA" and ap["magnification"] == 1.1
    assert ap["isocentre_spacing_mm"] == [pytest.approx(3 / 1.1)] * 2 and ap["crop"]["field_mm"] == 268.8
    lat = by_view["lateral"]["inferred"]
    assert lat["source_detector_mm"] == 1800.0 and lat["source_detector_defaulted"] is True
    # the volume sits where the crops were centred: x from the AP film, y from the lateral, z their mean
    (d_ap, r_ap), (d_lat, r_lat) = ap["crop"]["centre_offset_mm"], lat["crop"]["centre_offset_mm"]
    expected = [-r_ap, -r_lat, -(d_ap + d_lat) / 2]
    assert side["placement_mm"] == pytest.approx(expected, abs=0.06) and "central ray" in side["frame"]
    import nibabel as nib

    aff = nib.load(str(out)).affine
    centre = aff[:3, :3] @ ((np.array(nib.load(str(out)).shape) - 1) / 2) + aff[:3, 3]
    assert centre == pytest.approx(expected, abs=0.06) and "placed: the cube's centre at" in text
    # films are reconstructed twice: the second time re-levelled to the first reconstruction's DRRs
    assert "first pass: the films are re-levelled" in text and [n.split(":")[0] for n in side["relevel"]] == ["ap", "lateral"]
    once = tmp_path / "once.nii.gz"  # --no-film-relevel: one pass from the films as read
    assert hvc(["infer", "--checkpoint", str(ck), "--xray", ll, pa, "--out", str(once), "--steps", "1",
                "--samples", "1", "--stop-at-stage", "1", "--no-film-relevel"]) == 0
    assert "first pass" not in capsys.readouterr().out and json.loads((tmp_path / "once.json").read_text())["relevel"] == []


def test_compressed_films_read_like_uncompressed_ones(tmp_path):
    """Clinical exports are often JPEG 2000 or JPEG (12-bit extended, lossless): decoded through pylibjpeg."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import JPEG2000Lossless

    tags = dict(ViewPosition="PA", PatientOrientation=["L", "F"], ImagerPixelSpacing=[3.0, 3.0])
    plain = write_film(tmp_path / "plain.dcm", _chest(), **tags)
    ds = pydicom.dcmread(plain)
    ds.compress(JPEG2000Lossless)
    ds.save_as(tmp_path / "j2k.dcm")
    a, b = read_radiograph(plain), read_radiograph(str(tmp_path / "j2k.dcm"))
    np.testing.assert_array_equal(a.pixels, b.pixels)
    # A 12-bit JPEG Extended (Process 2 and 4) image shipped with pydicom, given a radiograph's header
    jpg = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    jpg.Modality = "DX"
    for k, v in tags.items():
        setattr(jpg, k, v)
    jpg.save_as(tmp_path / "jpg.dcm")
    r = read_radiograph(str(tmp_path / "jpg.dcm"))
    assert r.pixels.shape == (1024, 256) and np.isfinite(r.pixels).all() and np.ptp(r.pixels) > 0
    jls = pydicom.dcmread(get_testdata_file("JPEGLSNearLossless_16.dcm"))  # JPEG-LS, 16 bits
    for k, v in {**tags, "Modality": "DX"}.items():
        setattr(jls, k, v)
    jls.save_as(tmp_path / "jls.dcm")
    assert read_radiograph(str(tmp_path / "jls.dcm")).pixels.shape == (50, 10)


def test_a_missing_decoder_is_named(tmp_path, monkeypatch):
    import importlib

    import pydicom
    from pydicom.uid import JPEG2000Lossless

    ds = pydicom.dcmread(write_film(tmp_path / "plain.dcm", _chest(), ViewPosition="PA", ImagerPixelSpacing=[3.0, 3.0]))
    ds.compress(JPEG2000Lossless)
    ds.save_as(tmp_path / "j2k.dcm")
    real = importlib.import_module

    def no_openjpeg(name, *a):
        if name == "openjpeg":
            raise ImportError("No module named 'openjpeg'")
        return real(name, *a)

    monkeypatch.setattr(importlib, "import_module", no_openjpeg)
    with pytest.raises(X.XrayReadError, match=r"j2k\.dcm: JPEG 2000 Image Compression \(Lossless Only\) pixel data "
                                              r"needs the pylibjpeg-openjpeg decoder \(pip install pylibjpeg-openjpeg\)"):
        read_radiograph(str(tmp_path / "j2k.dcm"))

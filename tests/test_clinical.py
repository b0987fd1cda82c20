"""The simulated clinical film chain (data/clinical.py) on a tiny phantom: physics, encoding, DICOM header."""
from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest

from hybrid_vit_cascade.config import DataConfig
from hybrid_vit_cascade.data import clinical as C
from hybrid_vit_cascade.data.io import CTVolume
from hybrid_vit_cascade.data.phantoms import make_phantom
from hybrid_vit_cascade.data.preprocessing import canonicalize
from hybrid_vit_cascade.data.render import render_li
from hybrid_vit_cascade.geometry.projector import Projector

P, N, PITCH = 16, 24, 4.0  # model detector pixels, cube edge, film pitch (mm; clinical is 0.1–0.2)


@pytest.fixture(scope="module")
def cfg() -> DataConfig:
    return DataConfig(geometry={"det_pixels": P})


@pytest.fixture(scope="module")
def cube(cfg) -> np.ndarray:
    hu, sp = make_phantom(3, size=N)
    aff = np.diag([*sp, 1.0])
    aff[:3, 3] = -(np.array(hu.shape) - 1) / 2 * np.array(sp)
    return canonicalize(CTVolume(hu, aff, "phantom"), cfg.fov_mm, N)


def params(cfg, view="AP", seed=0, **kw) -> C.FilmParams:
    return C.sample_film_params(seed, view, cfg, **{"pitch_mm": PITCH, **kw})


def test_tone_curve_is_monotone_and_the_display_rises_with_attenuation(cfg):
    z = np.linspace(-0.2, 1.2, 301)
    for contrast, centre in [(3.0, 0.35), (8.0, 0.65), (5.0, 0.5)]:
        t = C.tone_curve(z, contrast, centre)
        assert np.all(np.diff(t) >= 0) and t[0] == 0.0 and t[-1] == 1.0
        assert C.tone_curve(np.array([0.0, 1.0]), contrast, centre) == pytest.approx([0.0, 1.0])
    for seed in range(8):  # the whole characteristic curve: monotone, black far below the body, white far above
        p = params(cfg, seed=seed)
        d = C.display_curve(np.linspace(-0.4, 1.4, 361), p)  # toe ≤ 0.3
        assert np.all(np.diff(d) >= 0) and d[0] == 0.0 and d[-1] == 1.0
        assert C.display_curve(np.array([0.0, 1.0]), p) == pytest.approx(p.display_range)
    ramp = np.tile(np.linspace(0.2, 8.0, 200), (40, 1))  # li rises left → right
    for curve in ("log", "gamma"):
        p = params(cfg, curve=curve, usm_gain=0.0, scatter_spr=0.0, dose_ugy=1e5, electronic_ugy=0.0)
        d, _ = C.expose(ramp, p)
        assert np.all(np.diff(d.mean(axis=0)) >= -1e-6), curve  # bright = attenuating, monotone


def test_film_geometry_matches_the_model_detector(cfg, cube):
    """The film's central field, averaged onto the model's pixels, is the model's own DRR."""
    p = params(cfg, field=(1.5, 1.4), pitch_mm=1.0)
    li = C.film_line_integrals(cube, cfg, p)
    ext = C.model_extent_mm(cfg, "ap")
    k = ext / P / p.pitch_mm  # film pixels per model pixel
    H, W = li.shape
    assert (H, W) == (round(1.5 * ext), round(1.4 * ext))
    r0, c0 = (H - 1) / 2 - (P / 2) * k, (W - 1) / 2 - (P / 2) * k  # film position of the model field's edge
    rows = np.clip(np.round(r0 + (np.arange(P)[:, None] + 0.5) * k).astype(int), 0, H - 1)
    cols = np.clip(np.round(c0 + (np.arange(P)[None, :] + 0.5) * k).astype(int), 0, W - 1)
    model = render_li(cube, cfg, Projector(cfg.geometry, ["ap"]))[0].numpy()
    assert np.abs(li[rows, cols] - model).max() < 0.02 * model.max()
    # outside the cube's shadow the film sees air
    assert li[0, 0] == 0.0 and li[-1, -1] == 0.0


def test_right_lateral_is_the_left_lateral_seen_from_the_other_side(cfg, cube):
    par = DataConfig(geometry={"det_pixels": P, "kind": "parallel"})
    ll, rl = (C.film_line_integrals(cube, par, params(par, v)) for v in ("LL", "RL"))
    # parallel rays: the same integrals, shown anterior-right instead of anterior-left
    assert ll.max() > 1.0 and np.allclose(rl[:, ::-1], ll, atol=1e-4)
    ll, rl = (C.film_line_integrals(cube, cfg, params(cfg, v)) for v in ("LL", "RL"))
    # cone beam: the source is on the other side, so the other half of the patient is magnified
    assert not np.allclose(rl[:, ::-1], ll, atol=0.05 * ll.max())
    assert C.PATIENT_ORIENTATION["LL"] == ("P", "F") and C.PATIENT_ORIENTATION["RL"] == ("A", "F")


@pytest.mark.parametrize("shutter", ["white", "black"])
def test_film_is_12_bit_with_a_collimation_band(cfg, cube, shutter):
    p = params(cfg, shutter=shutter, photometric="MONOCHROME2", shutter_frac=(0.05, 0.06, 0.07, 0.08), text_lines=0)
    film = C.simulate_film(cube, cfg, p)
    px = film.pixels
    assert px.dtype == np.uint16 and px.max() <= C.MAX_STORED
    H, W = px.shape
    level = round(p.shutter_level * C.MAX_STORED) if shutter == "white" else 0
    t, b, left, r = round(0.05 * H), round(0.06 * H), round(0.07 * W), round(0.08 * W)
    for band in (px[:t], px[H - b:], px[:, :left], px[:, W - r:]):
        assert band.size and np.all(band == level)
    h, w = round(H / p.field[0]), round(W / p.field[1])  # the model's field, centred
    field = px[(H - h) // 2:(H + h) // 2, (W - w) // 2:(W + w) // 2]
    assert field.std() > 100 and (field != level).mean() > 0.5  # anatomy (black: also direct exposure)
    assert film.exposure_index == pytest.approx(100 * p.dose_ugy)


def test_dicom_tags_and_monochrome1_round_trip(cfg, cube, tmp_path):
    p2 = params(cfg, "PA", photometric="MONOCHROME2", modality="DX", rescale=(2.0, -500.0))
    p1 = dataclasses.replace(p2, photometric="MONOCHROME1")
    f1, f2 = C.simulate_film(cube, cfg, p1), C.simulate_film(cube, cfg, p2)
    d1 = pydicom.dcmread(C.write_film_dicom(tmp_path / "m1.dcm", f1, "CASE1"))
    d2 = pydicom.dcmread(C.write_film_dicom(tmp_path / "m2.dcm", f2, "CASE1"))
    assert np.array_equal(d1.pixel_array.astype(int), C.MAX_STORED - d2.pixel_array.astype(int))
    assert np.allclose(f1.display, f2.display)
    from pydicom.pixels import apply_modality_lut

    assert np.allclose(apply_modality_lut(d2.pixel_array, d2), 2.0 * d2.pixel_array - 500.0)
    g = cfg.geometry
    assert d1.PhotometricInterpretation == "MONOCHROME1" and d2.PhotometricInterpretation == "MONOCHROME2"
    assert d2.Modality == "DX" and d2.PresentationIntentType == "FOR PRESENTATION"
    assert d2.SOPClassUID == C.SOP_CLASS["DX"] and d2.BitsStored == 12 and d2.HighBit == 11
    assert d2.ViewPosition == "PA" and list(d2.PatientOrientation) == ["L", "F"]
    assert [float(v) for v in d2.ImagerPixelSpacing] == [PITCH, PITCH]
    assert float(d2.DistanceSourceToDetector) == g.sdd and float(d2.DistanceSourceToPatient) == g.sid
    assert float(d2.EstimatedRadiographicMagnificationFactor) == pytest.approx(g.sdd / g.sid, rel=1e-5)
    assert float(d2.RescaleSlope) == 2.0 and float(d2.RescaleIntercept) == -500.0
    assert float(d2.WindowWidth) == pytest.approx(p2.window_fraction * C.MAX_STORED * 2.0, abs=0.1)
    assert float(d2.WindowCenter) == pytest.approx(2047.5 * 2.0 - 500.0, abs=0.1)
    assert (d2.Rows, d2.Columns) == f2.pixels.shape


def test_films_are_deterministic_by_seed(cfg, cube, tmp_path):
    a, b, c = params(cfg, seed=7), params(cfg, seed=7), params(cfg, seed=8)
    assert a == b and a != c
    fa, fb = C.simulate_film(cube, cfg, a), C.simulate_film(cube, cfg, b)
    assert np.array_equal(fa.pixels, fb.pixels)
    pa, pb = C.write_film_dicom(tmp_path / "a.dcm", fa, "X"), C.write_film_dicom(tmp_path / "b.dcm", fb, "X")
    assert pa.read_bytes() == pb.read_bytes()
    # Fixing one parameter leaves every other draw as it was.
    fixed = params(cfg, seed=7, usm_gain=0.9)
    assert dataclasses.replace(fixed, usm_gain=a.usm_gain) == a
    # Seeds spread the parameters over their documented ranges.
    draws = [C.sample_film_params(s, "LL", cfg) for s in range(64)]
    assert {d.photometric for d in draws} == {"MONOCHROME1", "MONOCHROME2"}
    assert {d.curve for d in draws} == {"log", "gamma"} and {d.modality for d in draws} == {"CR", "DX"}
    assert all(1.3 <= f <= 1.6 for d in draws for f in d.field) and all(0.5 <= d.usm_gain <= 1.0 for d in draws)
    assert all(d.pitch_mm >= 0.1 and max(d.field) * C.model_extent_mm(cfg, "lateral") / d.pitch_mm
               <= C.MAX_FILM_PIXELS + 1e-6 for d in draws)


def test_shutter_stays_outside_the_model_field(cfg):
    for s in range(32):
        p = C.sample_film_params(s, "AP", cfg)
        for i, f in enumerate(p.shutter_frac):
            assert f < (1 - 1 / p.field[i // 2]) / 2, (s, p)


def test_bad_film_parameters_are_refused(cfg, cube):
    with pytest.raises(ValueError, match="view_position must be one of"):
        C.sample_film_params(0, "oblique", cfg)
    with pytest.raises(ValueError, match=r"unknown film parameter\(s\) \['sharpness'\]"):
        C.sample_film_params(0, "AP", cfg, sharpness=2)
    with pytest.raises(ValueError, match="photometric 'RGB'"):
        params(cfg, photometric="RGB")
    with pytest.raises(ValueError, match="no body"):
        C.simulate_film(np.full((N, N, N), -1024.0, np.float32), cfg, params(cfg))


def test_marker_glyphs_and_a_bad_letter():
    from hybrid_vit_cascade.data.film_marks import glyph

    ell = glyph("L", 14)
    assert ell.shape == (14, 10) and ell[:, :2].all() and ell[-2:].all() and not ell[:-2, 2:].any()
    assert not np.array_equal(glyph("R", 14), ell)
    with pytest.raises(ValueError, match="marker letter must be one of"):
        glyph("X", 14)


def test_lead_marker_and_burned_in_text_are_where_the_params_say(cfg, cube):
    base = params(cfg, pitch_mm=1.0, photometric="MONOCHROME2", shutter="black", scatter_spr=0.0, usm_gain=0.0,
                  dose_ugy=1e5, electronic_ugy=0.0,  # (noise-free: the marker changes the noise draws after it)
                  marker="", text_lines=2, shutter_frac=(0.04, 0.02, 0.02, 0.02))
    plain = C.simulate_film(cube, cfg, dataclasses.replace(base, text_lines=0)).display
    marked = C.simulate_film(cube, cfg, dataclasses.replace(base, marker="L", marker_mm=24.0, marker_at=(0.1, 0.1),
                                                            text_at=(0.0, 0.5))).display
    H, W = plain.shape
    r0, c0 = round(0.1 * H), round(0.1 * W)
    ell = marked[r0:r0 + 24, c0:c0 + 17]
    assert ell[:, :3].min() > 0.95 and ell[-3:].min() > 0.95  # lead: the densest thing on the film
    assert np.median(plain[r0:r0 + 24, c0:c0 + 17]) < 0.5  # over the air beside the body
    # two 5 mm lines of white text (7 px glyphs + 3 px gaps: 20 rows) on the black band (22 rows)
    assert (plain[:22] == 0.0).all() and (marked[:20, W // 2:] == 1.0).sum() > 200 and (marked[20:22] == 0).all()
    elsewhere = np.ones_like(plain, bool)
    elsewhere[r0:r0 + 24, c0:c0 + 17] = elsewhere[:20, W // 2:] = False
    assert np.abs(marked - plain)[elsewhere].max() < 0.02  # the rest of the film is unchanged
    drawn = [C.sample_film_params(s, "AP", cfg) for s in range(64)]
    assert 0.75 < np.mean([bool(d.marker) for d in drawn]) < 1 and 0.3 < np.mean([d.text_lines > 0 for d in drawn]) < 0.7
    assert {C.sample_film_params(s, "RL", cfg).marker for s in range(16)} <= {"R", ""}
    with pytest.raises(ValueError, match="marker 'X'"):
        params(cfg, marker="X")

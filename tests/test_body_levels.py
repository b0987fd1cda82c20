"""A film's in-body level from its patient's body width (data/xray_stats.fit_levels, radiograph_fit.patient_levels).

Histogram matching carries every film onto the training population's in-body distribution, so a
thick patient's film gets an average patient's line integrals. The width a film still shows (the
lateral film's body width is the AP thickness) predicts the level; these tests check the fit
against a hand-made power law and the correction against hand-computed numbers.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from test_radiograph import _chest, write_film

from hybrid_vit_cascade.config import GeometryConfig
from hybrid_vit_cascade.data import xray_stats as XS
from hybrid_vit_cascade.data.radiograph_fit import LEVEL_RATIO_RANGE, ModelField, patient_levels
from hybrid_vit_cascade.inference import xray_io as X


def _box(width: int, level: float, size: int = 32, height: int = 20) -> np.ndarray:
    """A model-range X-ray: air (−1) with a body box `width` px wide, in-body x + 1 = `level` (± a ripple)."""
    x = -np.ones((size, size))
    t, left = (size - height) // 2, (size - width) // 2
    ripple = 0.05 * level * np.sin(np.arange(width) / 2.0)[None, :]  # not flat: the body keeps quantiles
    ripple -= ripple.mean()
    x[t:t + height, left:left + width] = level - 1 + ripple
    return x


def _field(fits: dict) -> ModelField:
    return ModelField(GeometryConfig(det_pixels=32), 360.0, {"views": {v: {"level_fits": f} for v, f in fits.items()}})


def test_body_width_is_the_median_width_of_the_rows_the_body_crosses():
    m = np.zeros((6, 10), dtype=bool)
    m[1, 2:5], m[2, 1:6], m[3, 1:6], m[4, 0:9] = True, True, True, True  # widths 3, 5, 5, 9; two empty rows
    assert XS.body_width(m) == 5.0
    assert XS.body_width(np.zeros((4, 4), dtype=bool)) == 0.0


def test_fit_levels_recovers_a_power_law_of_the_other_views_width():
    w_lat = [10.0, 12.0, 14.0, 17.0, 20.0]
    levels = {"ap": [0.05 * w ** 1.2 for w in w_lat], "lateral": [0.9, 0.8, 0.85, 0.95, 0.7]}
    fits = XS.fit_levels(levels, {"ap": [20.0, 21.0, 22.0, 24.0, 26.0], "lateral": w_lat})
    a, b = fits["ap"]["lateral"]
    assert a == pytest.approx(math.log(0.05), abs=1e-5) and b == pytest.approx(1.2, abs=1e-5)
    assert set(fits["ap"]) == {"ap", "lateral"} and set(fits["lateral"]) == {"ap", "lateral"}


def test_fit_levels_leaves_out_widths_without_spread_and_too_few_cases():
    fits = XS.fit_levels({"ap": [0.6, 0.7, 0.8]}, {"ap": [20.0, 20.0, 20.0], "lateral": [10.0, 12.0, 14.0]})
    assert list(fits["ap"]) == ["lateral"]  # equal AP widths: no fit from them
    assert XS.fit_levels({"ap": [0.6, 0.7]}, {"lateral": [10.0, 12.0]}) == {}  # 2 < LEVEL_MIN_CASES cases


def test_training_stats_store_the_level_fits():
    widths, levels = [12, 16, 20, 24], [0.5, 0.6, 0.7, 0.8]  # AP level rises with the lateral width
    stats = XS.xray_stats({"ap": [_box(22, lv) for lv in levels], "lateral": [_box(w, 0.8) for w in widths]})
    a, b = stats["views"]["ap"]["level_fits"]["lateral"]
    expected_b, expected_a = np.polyfit(np.log(widths), np.log(levels), 1)
    assert b == pytest.approx(expected_b, abs=1e-3) and a == pytest.approx(expected_a, abs=1e-3)
    assert "ap" not in stats["views"]["ap"]["level_fits"]  # every AP box is 22 px wide


def test_a_film_moves_to_the_level_its_other_views_width_predicts():
    a, b = math.log(0.04), 1.1
    field = _field({"ap": {"lateral": [a, b], "ap": [0.0, 0.0]}})
    ap, lat = _box(22, 0.6), _box(16, 0.8)
    out, notes = patient_levels({"ap": ap, "lateral": lat}, field)
    want = 0.04 * 16 ** 1.1  # 0.844: the level a 16 px thick patient's AP film has in training
    body = XS.body_mask(out["ap"])
    assert XS.body_level(out["ap"], body) == pytest.approx(want, rel=1e-6)
    assert out["ap"][0, 0] == -1.0  # air stays air
    assert notes["ap"].startswith("in-body level × 1.407 from the lateral film's body width (16.0 px)")
    np.testing.assert_array_equal(out["lateral"], lat)  # no lateral fits: unchanged, no note
    assert "lateral" not in notes


def test_a_single_film_uses_its_own_width():
    field = _field({"ap": {"lateral": [0.0, 0.0], "ap": [math.log(0.03), 1.0]}})
    out, notes = patient_levels({"ap": _box(22, 0.6)}, field)
    assert XS.body_level(out["ap"], XS.body_mask(out["ap"])) == pytest.approx(0.66, rel=1e-6)  # 0.03 · 22
    assert "from the ap film's body width (22.0 px)" in notes["ap"]


def test_a_prediction_far_from_the_film_is_clamped_and_said():
    field = _field({"ap": {"lateral": [math.log(3.0), 0.0]}})  # predicts 3.0: 5× the film's 0.6
    out, notes = patient_levels({"ap": _box(22, 0.6), "lateral": _box(16, 0.8)}, field)
    assert XS.body_level(out["ap"], XS.body_mask(out["ap"])) == pytest.approx(0.6 * LEVEL_RATIO_RANGE[1], rel=1e-6)
    assert "(clamped: check the film's body outline)" in notes["ap"]


def test_without_fits_nothing_changes():
    xs = {"ap": _box(22, 0.6), "lateral": _box(16, 0.8)}
    out, notes = patient_levels(xs, ModelField(GeometryConfig(det_pixels=32), 360.0, None))
    assert notes == {} and all(np.array_equal(out[v], xs[v]) for v in xs)


def test_load_xrays_levels_a_case_of_dicom_films_and_says_so(tmp_path):
    q = list(np.linspace(-0.6, 0.9, XS.N_QUANTILES))
    views = {v: {"in_body_quantiles": q, "body_fraction": 0.5} for v in ("ap", "lateral")}
    views["ap"]["level_fits"] = {"lateral": [math.log(0.1), 1.0]}  # 0.1 · width: within the unclamped range
    field = ModelField(GeometryConfig(det_pixels=16), 360.0, {"views": views})
    pa = write_film(tmp_path / "pa.dcm", _chest(), ViewPosition="PA", PatientOrientation=["L", "F"],
                    ImagerPixelSpacing=[3.5, 3.5], EstimatedRadiographicMagnificationFactor=1.1)
    ll = write_film(tmp_path / "ll.dcm", _chest(seed=2), ViewPosition="LL", ImagerPixelSpacing=[3.5, 3.5],
                    EstimatedRadiographicMagnificationFactor=1.1)
    x, raws = X.load_xrays([pa, ll], ["ap", "lateral"], 4.0, 16, field=field)
    ap = x[0].numpy().astype(np.float64)
    lat_width = XS.body_width(XS.body_mask(x[1].numpy()))
    assert XS.body_level(ap, XS.body_mask(ap)) == pytest.approx(0.1 * lat_width, rel=1e-3)
    assert "from the lateral film's body width" in raws[0].info["intensity"]
    assert "level" not in raws[1].info["intensity"]  # the lateral slot has no fits

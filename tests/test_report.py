"""Report outputs: display orientation, figures written, Markdown table and strict JSON."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from hybrid_vit_cascade import metrics as M
from hybrid_vit_cascade.inference import report as R
from hybrid_vit_cascade.slices import display_slice

N = 16


def _marked() -> np.ndarray:
    """Cube with markers: right-anterior-superior corner region and a left-posterior-inferior one."""
    v = np.zeros((N, N, N))
    v[N - 3, N - 3, N - 3] = 1.0  # right, anterior, superior
    v[2, 2, 2] = 2.0  # left, posterior, inferior
    return v


@pytest.mark.parametrize("plane,top,left", [
    ("axial", "anterior", "right"), ("coronal", "superior", "right"), ("sagittal", "superior", "anterior")])
def test_radiological_display_orientation(plane, top, left):
    v = _marked()
    idx = N - 3  # the slice through the R/A/S marker
    img = display_slice(v, plane, index=idx)
    r, c = np.argwhere(img == 1.0)[0]
    # The R/A/S marker sits near the top (row small) when 'top' is A or S, and on the left (column
    # small) when 'left' is R or A: both are the high ends of RAS+ axes.
    assert r == 2 and c == 2, (plane, r, c)
    img2 = display_slice(v, plane, index=2)
    r2, c2 = np.argwhere(img2 == 2.0)[0]
    assert r2 == N - 3 and c2 == N - 3


def test_display_slice_unknown_plane():
    with pytest.raises(ValueError, match="unknown plane 'transverse'; expected one of sagittal, coronal, axial"):
        display_slice(_marked(), "transverse")


def _rows():
    rng = np.random.default_rng(0)
    t = rng.uniform(-1000, 1000, (N, N, N))
    cases_a = [M.volume_metrics(t + rng.normal(0, s, t.shape), t, (-1024, 1476)) for s in (50, 80)]
    for c in cases_a:
        c["drr_psnr"] = 30.0
    cases_b = [M.volume_metrics(t, t, (-1024, 1476))]
    return [
        {"method": "cascade", "stage": "stage1", "res": N, "summary": M.summarize_cases(cases_a)},
        {"method": "mean volume", "stage": None, "res": N, "summary": M.summarize_cases(cases_b)},
    ], cases_a


def test_report_md_and_metrics_json(tmp_path):
    rows, cases = _rows()
    md = R.write_report_md(tmp_path / "report.md", rows, {"checkpoint": "ckpt", "split": "test"}, ["chart.png"])
    text = md.read_text()
    expect = R.fmt_stat(rows[0]["summary"]["psnr3d"], "{:.2f}")
    m = np.mean([c["psnr3d"] for c in cases])
    assert expect.startswith(f"{m:.2f} ± ")
    assert f"| cascade | stage1 | {N} | 2 | {expect} |" in text
    assert "| mean volume | – | 16 | 1 | inf |" in text  # identical volumes: PSNR inf, shown as such
    assert "X2CT-GAN protocol" in text and "![chart](chart.png)" in text
    j = R.write_metrics_json(tmp_path / "metrics.json", {"rows": rows, "cases": cases, "x": math.nan})
    back = json.loads(j.read_text())  # strict JSON: would fail on Infinity/NaN
    assert back["rows"][1]["summary"]["psnr3d"]["mean"] == "inf" and back["x"] is None
    assert back["cases"][0]["ssim3d"] == pytest.approx(cases[0]["ssim3d"])


def test_figures_are_written(tmp_path):
    rows, _ = _rows()
    rng = np.random.default_rng(1)
    truth = rng.uniform(-1000, 1000, (N, N, N))
    pred = truth + rng.normal(0, 50, truth.shape)
    files = [
        R.case_montage(tmp_path / "case.png", truth, pred, np.abs(rng.normal(0, 20, truth.shape)),
                       (-1024, 1476), title="case 0"),
        R.case_montage(tmp_path / "infer.png", None, pred, None, (-1024, 1476)),
        R.xray_montage(tmp_path / "xr.png", rng.uniform(-1, 1, (2, N, N)), rng.uniform(-1, 1, (2, N, N)),
                       ["ap", "lateral"], [25.0, 26.0]),
        R.metrics_bar_chart(tmp_path / "bars.png", rows),
    ]
    sizes = [Image.open(f).size for f in files]
    assert all(w > 100 and h > 100 for w, h in sizes)
    # The 4-row montage is taller than the prediction-only one.
    assert sizes[0][1] > 2 * sizes[1][1]


def test_paired_comparison_and_quality_section():
    from hybrid_vit_cascade.inference.evaluate import paired_comparison

    def case(cascade, bp, reg):
        return {"methods": {"cascade/stage2_x": {"psnr3d": cascade, "ssim3d": 0.9},
                            "back-projection": {"psnr3d": bp, "ssim3d": 0.8},
                            "regression": {"psnr3d": reg, "ssim3d": 0.95}}}

    cases = [case(30.0, 26.0, 29.0), case(31.0, 27.5, 31.5), case(29.0, 25.0, 28.0)]
    comp = {c["baseline"]: c for c in paired_comparison(cases, "cascade/stage2_x")}
    assert comp["back-projection"]["psnr3d_gap"]["mean"] == pytest.approx((4 + 3.5 + 4) / 3)
    assert comp["back-projection"]["meets_bar"] and comp["back-projection"]["wins"] == 3
    assert comp["regression"]["psnr3d_gap"]["mean"] == pytest.approx((1 - 0.5 + 1) / 3)
    assert comp["regression"]["wins"] == 2 and comp["regression"]["meets_bar"]
    assert comp["regression"]["psnr3d_gap_median"] == pytest.approx(1.0)
    assert comp["regression"]["ssim3d_gap"]["mean"] == pytest.approx(-0.05)
    behind = {c["baseline"]: c for c in paired_comparison([case(30.0, 28.0, 30.5)], "cascade/stage2_x")}
    assert not behind["back-projection"]["meets_bar"] and not behind["regression"]["meets_bar"]
    quality = {"final stage": "cascade/stage2_x", "vs baselines": list(behind.values()),
               "drr_psnr": M.summarize([35.0]), "drr_bar_db": 30.0, "drr_meets_bar": True}
    text = "\n".join(R.quality_section(quality))
    assert "| back-projection | 1 | +2.00 ± 0.00 | +2.00 |" in text and "FAIL (≥ +3.0 dB)" in text
    assert "| regression | 1 | -0.50 ± 0.00 | -0.50 |" in text and "0/1" in text
    assert "35.00 ± 0.00 dB — PASS" in text

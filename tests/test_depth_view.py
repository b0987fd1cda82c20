"""The depth-prior figure: depth distributions along the rays (learned, per case, training-set prior)."""
from __future__ import annotations

import numpy as np
import torch

from hybrid_vit_cascade.cli import main as hvc
from hybrid_vit_cascade.inference import depth_view
from hybrid_vit_cascade.inference.pipeline import Reconstructor

from test_inference import P, _xray, dataset, make_checkpoint  # noqa: F401 (fixture)


def test_depth_profiles_are_distributions_and_the_figure_is_written(dataset, tmp_path):  # noqa: F811
    rec = Reconstructor(make_checkpoint(tmp_path / "ck", dataset=str(dataset / "prep")))
    prof = depth_view.depth_profiles(rec, _xray(), str(dataset / "prep"))
    assert prof["stage"] == "stage2_high" and len(prof["depth_mm"]) == rec.cfg.stages[1].depth_bins
    assert 0 < prof["depth_mm"][0] < prof["depth_mm"][-1] < rec.fov_mm
    assert set(prof["views"]) == {"ap", "lateral"} and "training CT" in prof["note"]
    for d in prof["views"].values():
        for k in ("case", "learned_prior", "initial_prior"):
            assert d[k].shape == (len(depth_view.POINT_FRACTIONS), len(prof["depth_mm"]))
            np.testing.assert_allclose(d[k].sum(axis=1), 1.0, atol=1e-5)
    # An untrained stage's learned prior is still uniform; the initial one is the training CTs' profile.
    ap = prof["views"]["ap"]
    np.testing.assert_allclose(ap["learned_prior"], 1 / len(prof["depth_mm"]), atol=1e-6)
    assert np.ptp(ap["initial_prior"]) > 0.01
    # Patient right is on the AP image's left, anterior on the lateral image's left (DESIGN.md).
    assert ap["labels"][0].startswith("R ") and ap["labels"][-1].startswith("L ")
    assert ap["labels"][0][2:] == ap["labels"][-1][2:]  # symmetric about the central ray
    assert prof["views"]["lateral"]["labels"][0].startswith("A ")
    # AP: source anterior, rays run A → P; left lateral: source on the patient's right, R → L.
    assert ap["direction"] == "A → P" and prof["views"]["lateral"]["direction"] == "R → L"
    one = depth_view.depth_profiles(rec, _xray(), None, views=["ap"])
    assert set(one["views"]) == {"ap"} and one["views"]["ap"]["initial_prior"] is None
    png = depth_view.write_depth_figure(tmp_path / "d.png", rec, _xray(), str(dataset / "prep"))
    assert png.is_file() and png.stat().st_size > 1000


def test_infer_png_writes_the_depth_figure(dataset, tmp_path, capsys):  # noqa: F811
    ck = make_checkpoint(tmp_path / "ck", dataset=str(dataset / "prep"))
    np.save(tmp_path / "ap.npy", (_xray()[0].numpy() + 1) / 2 * 8.0)  # line integrals (li_max 8)
    rc = hvc(["infer", "--checkpoint", str(ck), "--xray", str(tmp_path / "ap.npy"), "--views", "ap",
              "--out", str(tmp_path / "r.nii.gz"), "--png", "--samples", "1"])
    assert rc == 0, capsys.readouterr()
    assert (tmp_path / "r_depth.png").is_file()


def test_untrained_lifting_free_checkpoint_has_no_depth_figure(tmp_path):
    from hybrid_vit_cascade.inference.pipeline import Reconstructor as R

    rec = R(make_checkpoint(tmp_path / "ck"))
    for s in rec.cascade.stages:
        s.lifting = None
    assert depth_view.write_depth_figure(tmp_path / "x.png", rec, torch.zeros(2, P, P)) is None
    assert not (tmp_path / "x.png").exists()

"""`hvc evaluate --clinical` and the clinical-film domain gap (inference/clinical_eval.py), tiny and CPU."""
from __future__ import annotations

import json

import numpy as np
import torch
import pytest

from hybrid_vit_cascade.cli import main as hvc
from hybrid_vit_cascade.inference import clinical_eval as CE
from hybrid_vit_cascade.runtime import sampling
from test_inference import dataset, make_checkpoint  # noqa: F401 (fixture)

COARSE = {"pitch_mm": 2.0}  # clinical pitch is 0.1–0.2 mm; 2 mm keeps the films ~250 px for CI


def _evaluate(ck, reg, data, out) -> dict:
    rc = hvc(["evaluate", "--checkpoint", str(ck), "--data", data, "--split", "test", "--out", str(out),
              "--samples", "1", "--baseline-checkpoint", str(reg), "--no-progress", "--montage-cases", "1",
              "--clinical", "--film-pitch", str(COARSE["pitch_mm"])])
    assert rc == 0
    return json.loads((out / "metrics.json").read_text())


def test_evaluate_clinical_rows_gap_and_determinism(dataset, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(sampling, "FILM_GUIDANCE_SCALE", 0.25)  # a value no config uses: seen only on films
    prep = str(dataset / "prep")
    ck = make_checkpoint(tmp_path / "ck", dataset=prep)
    reg = make_checkpoint(tmp_path / "reg", objective="regression", dataset=prep)
    m = _evaluate(ck, reg, prep, tmp_path / "a")
    rows = {(r["method"], r["stage"]) for r in m["summary"]}
    assert {("cascade" + CE.TAG, "stage2_high"), ("back-projection" + CE.TAG, None),
            ("regression" + CE.TAG, None)} <= rows
    gaps = {g["method"]: g for g in m["clinical"]["vs clean"]}
    assert set(gaps) == {"cascade/stage2_high", "back-projection", "regression"}
    for key, g in gaps.items():  # clean − clinical PSNR-3D, paired per case
        d = [c["methods"][key]["psnr3d"] - c["methods"][key + CE.TAG]["psnr3d"] for c in m["cases"]]
        assert g["gap"]["mean"] == pytest.approx(np.mean(d)) and g["cases"] == len(d)
        assert g["meets_target"] == (np.mean(d) <= CE.GAP_TARGET_DB) and g["target_db"] == 1.5
    placed = {g["method"]: g for g in m["clinical"]["vs clean, placed"]}  # scored in the field the crops show
    assert set(placed) == set(gaps) and ("cascade" + CE.PLACED, "stage2_high") in rows
    for key, g in placed.items():
        d = [c["methods"][key]["psnr3d"] - c["methods"][key + CE.PLACED]["psnr3d"] for c in m["cases"]]
        assert g["gap"]["mean"] == pytest.approx(np.mean(d))
    first, rest = m["cases"][0], m["cases"][1:]
    # films get the film default of DRR guidance (no --guidance-scale given), the clean X-rays the config's
    assert all(c["clinical"]["guidance_scale"] == 0.25 for c in m["cases"]) and m["info"]["DRR guidance"] != 0.25
    assert first["clinical"]["films"] == [f"{first['case_id']}_{v}.dcm" for v in ("ap", "lateral")]
    assert sorted(p.name for p in (tmp_path / "a" / "clinical").iterdir()) == first["clinical"]["films"]
    assert all(c["clinical"]["films"] == [] for c in rest)  # beyond --montage-cases: read, then removed
    assert all(np.isfinite(c["clinical"]["input_psnr"]) for c in m["cases"])
    # each film set is reconstructed twice: the second time re-levelled to the first's DRRs (film_relevel.py)
    assert all(len(c["clinical"]["relevel"]) == 2 and np.isfinite(c["clinical"]["relevelled_input_psnr"])
               for c in m["cases"])
    assert first["clinical"]["params"][0]["view_position"] == "AP" and first["clinical"]["params"][1]["pitch_mm"] == 2.0
    # the quality table compares the clean final stage with clean baselines only
    assert {c["baseline"] for c in m["quality"][0]["vs baselines"]} == {"mean volume", "back-projection", "regression"}
    md = (tmp_path / "a" / "report.md").read_text()
    assert "## Clean line integrals vs simulated clinical films" in md and "| cascade/stage2_high |" in md
    # seeded by (seed, case, view): the kept films are re-made byte for byte
    from hybrid_vit_cascade.data.datasets import CTXrayDataset
    from hybrid_vit_cascade.inference.pipeline import Reconstructor

    rec, ds = Reconstructor(ck), CTXrayDataset(prep, "test", [32])
    outside, scene = CE.case_film_scene(ds, 0, rec.render_size, rec.cfg.data)
    assert outside is not None and scene == first["clinical"]["scene"]  # the patient beyond the cube, as a film sees it
    assert m["clinical"]["scene_beyond_cube"] == [len(m["cases"])] * 2 and "show the patient above, below" in md
    *_, again = CE.case_films(rec, CE.case_cube_hu(ds, 0, rec.render_size, rec.window), first["case_id"],
                              tmp_path / "again", 0, tmp_path, keep=True, fixed=COARSE, outside=outside)
    for p in again:
        assert p.read_bytes() == (tmp_path / "a" / "clinical" / p.name).read_bytes()
    # the placed truth is the field the crops show: the film's placement, from its crops, moves the cube
    infos = dict(zip(("ap", "lateral"), first["clinical"]["reader"]))
    placement = CE.film_placement_mm(infos, rec.cfg.data.geometry)
    assert np.allclose(placement, first["clinical"]["placement_mm"], atol=0.06) and np.abs(placement).max() > 0
    scene = CE.case_scene(rec, ds, 0)
    assert torch.allclose(scene.truth_at(np.zeros(3), 32), ds[0]["ct"][32], atol=1e-3)
    assert not torch.allclose(scene.truth_at(placement, 32), ds[0]["ct"][32], atol=1e-3)
    assert "Scored in the field the films' crops show" in md


def test_film_pitch_must_be_a_plausible_pitch(tmp_path, capsys):
    rc = hvc(["evaluate", "--checkpoint", str(tmp_path / "ck"), "--data", str(tmp_path), "--out", str(tmp_path / "o"),
              "--clinical", "--film-pitch", "0"])
    assert rc == 2 and "--film-pitch must be in (0, 5] mm, got 0.0" in capsys.readouterr().err


def test_a_single_film_is_scored_against_its_clean_single_view_rows(dataset, tmp_path):  # noqa: F811
    prep = str(dataset / "prep")
    ck = make_checkpoint(tmp_path / "ck", dataset=prep)
    base = ["evaluate", "--checkpoint", str(ck), "--data", prep, "--split", "test", "--samples", "1", "--no-progress",
            "--montage-cases", "1", "--clinical", "--film-pitch", str(COARSE["pitch_mm"]), "--clinical-views", "ap"]
    assert hvc(base + ["--out", str(tmp_path / "a"), "--views", "ap", "--views", "ap,lateral"]) == 0
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    key = "cascade/stage2_high [ap]"
    gaps = {g["method"]: g for g in m["clinical"]["vs clean"]}
    assert set(gaps) == {key, "back-projection [ap]"}  # only the single film's rows; no every-view films asked for
    d = [c["methods"][key]["psnr3d"] - c["methods"][key + CE.TAG]["psnr3d"] for c in m["cases"]]
    assert gaps[key]["gap"]["mean"] == pytest.approx(np.mean(d))
    first = m["cases"][0]
    assert first["clinical"]["views"] == ["ap"] and first["clinical"]["films"] == [f"{first['case_id']}_ap.dcm"]
    assert set(first["clinical"]) >= {"input_psnr_ap"} and "input_psnr_lateral" not in first["clinical"]
    assert set(first["methods"][key + CE.TAG]) >= {"drr_psnr_ap"} and "drr_psnr_lateral" not in first["methods"][key + CE.TAG]
    rows = {(r["method"], tuple(r["views"])) for r in m["summary"]}
    assert ("cascade" + CE.TAG, ("ap",)) in rows and ("back-projection" + CE.TAG, ("ap",)) in rows
    # the AP film is the same file whichever set it is read in (seeded by (seed, case, view))
    from hybrid_vit_cascade.data.datasets import CTXrayDataset
    from hybrid_vit_cascade.inference.pipeline import Reconstructor

    rec = Reconstructor(ck)
    ds = CTXrayDataset(prep, "test", [32])
    hu, (outside, _) = CE.case_cube_hu(ds, 0, rec.render_size, rec.window), CE.case_film_scene(ds, 0, rec.render_size,
                                                                                              rec.cfg.data)
    *_, again = CE.case_films(rec, hu, first["case_id"], tmp_path / "again", 0, tmp_path, keep=True, fixed=COARSE,
                              outside=outside)
    assert again[0].read_bytes() == (tmp_path / "a" / "clinical" / f"{first['case_id']}_ap.dcm").read_bytes()


def test_clinical_views_need_their_clean_rows_and_clinical(dataset, tmp_path, capsys):  # noqa: F811
    prep = str(dataset / "prep")
    ck = make_checkpoint(tmp_path / "ck", dataset=prep)
    base = ["evaluate", "--checkpoint", str(ck), "--data", prep, "--out", str(tmp_path / "o"), "--samples", "1",
            "--no-progress", "--clinical-views", "ap"]
    assert hvc(base) == 2
    assert "--clinical-views needs --clinical" in capsys.readouterr().err
    assert hvc(base[:-2] + ["--no-film-relevel"]) == 2
    assert "--no-film-relevel needs --clinical" in capsys.readouterr().err
    assert hvc(base + ["--clinical"]) != 0
    assert "clinical films of ap need the clean rows of the same views to be measured against: add --views ap" \
        in capsys.readouterr().err

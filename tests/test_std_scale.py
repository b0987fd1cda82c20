"""The val-fitted std scale kept beside a checkpoint (std_scale.json) and applied by `hvc infer` where it holds."""
from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest

from hybrid_vit_cascade.cli import main as hvc
from hybrid_vit_cascade.inference.calibration_eval import save_fit, stored_scale
from hybrid_vit_cascade.inference.pipeline import Reconstructor
from hybrid_vit_cascade.runtime.checkpoint import STD_SCALE_FILE, CheckpointError, read_std_scale
from hybrid_vit_cascade.runtime.sampling import resolve_sampling

from test_inference import LI_MAX, _xray, make_checkpoint

DIFFUSION = {"samples": 2, "guidance_scale": 1.0}


def _fit(rec, scale: float = 1.5, **sampling) -> dict:
    """A fit record as calibration_eval.fit_on_val writes it, for this checkpoint's weights."""
    sampling = {**dataclasses.asdict(resolve_sampling(rec.cfg)), **sampling}
    return {"scale": scale, "fitted_on": "val", "cases": 3,
            "applies_to": {"weights": rec.weights_id(), "which": rec.which, "ema": rec.ema,
                           "views": list(rec.views), "sampling": sampling}}


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    return Reconstructor(make_checkpoint(tmp_path_factory.mktemp("ck"), diffusion=DIFFUSION))


def test_a_checkpoint_without_a_scale_reads_none(tmp_path):
    rec = Reconstructor(make_checkpoint(tmp_path / "ck", diffusion=DIFFUSION))  # its own: the others write one
    assert read_std_scale(rec.checkpoint_dir) is None
    fit, line = stored_scale(rec, resolve_sampling(rec.cfg), list(rec.views), display=False)
    assert fit is None and "hvc evaluate --calibrate" in line


def test_a_corrupt_scale_file_is_named(tmp_path):
    (tmp_path / STD_SCALE_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"std_scale\.json is unreadable"):
        read_std_scale(tmp_path)


def test_infer_survives_a_corrupt_scale_file_with_a_warning(tmp_path, capsys):
    ck = make_checkpoint(tmp_path / "ck", diffusion=DIFFUSION)
    (ck / STD_SCALE_FILE).write_text("{not json")
    li = (_xray().numpy() + 1) / 2 * LI_MAX
    np.save(tmp_path / "ap.npy", li[0])
    np.save(tmp_path / "lat.npy", li[1])
    rc = hvc(["infer", "--checkpoint", str(ck), "--xray", str(tmp_path / "ap.npy"), str(tmp_path / "lat.npy"),
              "--out", str(tmp_path / "ct.nii.gz")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "warning: " in cap.err and "std_scale.json is unreadable" in cap.err
    assert (tmp_path / "ct_std.nii.gz").is_file() and not (tmp_path / "ct_std_calibrated.nii.gz").exists()


def test_an_out_of_range_fit_is_not_applied(rec):
    save_fit(rec, {**_fit(rec, scale=100.0), "out_of_range": True}, log=lambda s: None)
    fit, line = stored_scale(rec, resolve_sampling(rec.cfg), list(rec.views), False)
    assert fit is None and "outside" in line and "says next to nothing" in line


def test_a_non_positive_scale_is_refused(tmp_path):
    (tmp_path / STD_SCALE_FILE).write_text(json.dumps({"scale": 0}))
    with pytest.raises(CheckpointError, match=r"finite number > 0, got 0"):
        read_std_scale(tmp_path)


def test_the_saved_scale_applies_only_where_it_was_fitted(rec, tmp_path):
    save_fit(rec, _fit(rec), log=lambda s: None)
    run = resolve_sampling(rec.cfg)
    fit, line = stored_scale(rec, run, ["ap", "lateral"], display=False)
    assert fit["scale"] == 1.5 and "std × 1.500" in line
    assert stored_scale(rec, resolve_sampling(rec.cfg, samples=4), list(rec.views), False)[1].endswith(
        "samples 4 (fitted with 2)")
    # A subset of the views and films (sampled with the film default, no guidance) get it, with the caveat.
    fit, line = stored_scale(rec, run, ["ap"], False)
    assert fit["scale"] == 1.5 and "applied here from ap only" in line
    film = resolve_sampling(rec.cfg, display_input=True)
    fit, line = stored_scale(rec, film, list(rec.views), True)
    assert fit["scale"] == 1.5 and "from films without DRR guidance" in line
    # Another guidance on line integrals is another sampler: no scale.
    line = stored_scale(rec, resolve_sampling(rec.cfg, guidance_scale=0.0), list(rec.views), False)[1]
    assert line.endswith("guidance_scale 0.0 (fitted with 1.0)")
    save_fit(rec, {**_fit(rec), "applies_to": {**_fit(rec)["applies_to"], "weights": "0" * 16}}, log=lambda s: None)
    assert "weights differ" in stored_scale(rec, run, list(rec.views), False)[1]


def test_a_guidance_spread_is_part_of_the_sampling_a_scale_holds_for(rec):
    run = resolve_sampling(rec.cfg)
    older = _fit(rec)
    del older["applies_to"]["sampling"]["guidance_spread"]  # saved before the spread existed: fitted without one
    save_fit(rec, older, log=lambda s: None)
    assert stored_scale(rec, run, list(rec.views), False)[0]["scale"] == 1.5
    spread = resolve_sampling(rec.cfg, guidance_spread=1.0)
    assert stored_scale(rec, spread, list(rec.views), False)[1].endswith("guidance_spread 1.0 (fitted with 0.0)")
    # films are sampled without guidance, so a spread (of nothing) does not keep them from the scale
    film = resolve_sampling(rec.cfg, display_input=True, guidance_spread=1.0)
    assert stored_scale(rec, film, list(rec.views), True)[0]["scale"] == 1.5


def test_an_unwritable_checkpoint_keeps_its_fit_unsaved_with_a_warning(rec, tmp_path, monkeypatch):
    import hybrid_vit_cascade.runtime.checkpoint as ck

    def refuse(*a, **k):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(ck, "write_std_scale", refuse)
    said = []
    save_fit(rec, _fit(rec), log=said.append)
    assert said and said[0].startswith("warning: the std scale was not saved") and "read-only" in said[0]


def test_infer_writes_the_scaled_std_map_beside_the_raw_one(tmp_path, capsys, monkeypatch):
    from hybrid_vit_cascade.inference import report

    montages = []
    real_montage = report.case_montage
    monkeypatch.setattr(report, "case_montage", lambda *a, **k: montages.append((a, k)) or real_montage(*a, **k))
    ck = make_checkpoint(tmp_path / "ck", diffusion=DIFFUSION)
    rec = Reconstructor(ck)
    save_fit(rec, _fit(rec, scale=1.75), log=lambda s: None)
    li = (_xray().numpy() + 1) / 2 * LI_MAX
    np.save(tmp_path / "ap.npy", li[0])
    np.save(tmp_path / "lat.npy", li[1])
    out = tmp_path / "ct.nii.gz"
    rc = hvc(["infer", "--checkpoint", str(ck), "--xray", str(tmp_path / "ap.npy"), str(tmp_path / "lat.npy"),
              "--out", str(out), "--png"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "uncertainty: std × 1.750" in text
    raw = np.asarray(nib.load(str(tmp_path / "ct_std.nii.gz")).dataobj)
    cal = np.asarray(nib.load(str(tmp_path / "ct_std_calibrated.nii.gz")).dataobj)
    assert raw.max() > 0
    np.testing.assert_allclose(cal, 1.75 * raw, rtol=1e-5, atol=1e-4)
    assert json.loads((tmp_path / "ct.json").read_text())["std_scale"]["scale"] == 1.75
    (args, kw), = montages  # the slice montage shows the map a user should read, labelled as scaled
    np.testing.assert_allclose(args[3], cal, rtol=1e-5, atol=1e-4)
    assert kw["std_label"] == "std × 1.75 (val-fitted, HU)" and (tmp_path / "ct.png").is_file()
    # Another K: the scale does not hold, only the raw map is written, and the run says why.
    rc = hvc(["infer", "--checkpoint", str(ck), "--xray", str(tmp_path / "ap.npy"), str(tmp_path / "lat.npy"),
              "--out", str(tmp_path / "k3.nii.gz"), "--samples", "3"])
    text = capsys.readouterr().out
    assert rc == 0 and "does not apply: this run samples with samples 3 (fitted with 2)" in text
    assert (tmp_path / "k3_std.nii.gz").is_file() and not (tmp_path / "k3_std_calibrated.nii.gz").exists()

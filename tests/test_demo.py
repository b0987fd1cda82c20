"""`hvc` top level and `hvc demo` end to end (tiny configs, a few steps): every stage of the main job runs."""
from __future__ import annotations

import json

import pytest

from _trainkit import tiny_dict, write_cfg
from hybrid_vit_cascade import threads
from hybrid_vit_cascade.cli import VERBS, main
from hybrid_vit_cascade.commands import demo


def test_help_lists_every_verb(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in VERBS:
        assert verb in out


def test_unknown_verb_is_an_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["trian"])
    assert info.value.code == 2
    assert "unknown verb 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as info:
        main([verb, "--help"])
    assert info.value.code == 0
    assert f"hvc {verb}" in capsys.readouterr().out


def test_demo_end_to_end_on_tiny_configs(tmp_path, capsys):
    d = tiny_dict(None, n_cases=6, cache_dir=tmp_path / "cache", view_dropout=0.5,  # as the shipped configs
                  film_augment=0.5, film_variants=1)
    d["data"]["split"] = [0.5, 0.17, 0.33]
    cascade = write_cfg(tmp_path / "cascade.json", d)
    reg = json.loads(json.dumps(d))
    reg["training"]["objective"] = "regression"
    baseline = write_cfg(tmp_path / "reg.json", reg)
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--config", str(cascade), "--baseline-config", str(baseline),
                 "--max-steps", "2", "--steps", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"report:         {out / 'report' / 'report.md'}" in printed
    # Every step left its product: checkpoints of both models, X-ray PNGs, the NIfTI, the report.
    for k, name in ((1, "s16"), (2, "s32")):
        assert (out / "checkpoints" / "cascade" / f"stage{k}_{name}" / "last" / "ema.safetensors").is_file()
        assert (out / "checkpoints" / "regression" / f"stage{k}_{name}" / "last" / "ema.safetensors").is_file()
    assert list((out / "xrays").glob("*/*_ap.png")) and list((out / "xrays").glob("*/*_lateral.png"))
    # Both views: final stage + stage 1 (--all-stages); the AP alone: <case>_ap.nii.gz, same checkpoint.
    recon = sorted(p.name for p in (out / "recon").glob("*.nii.gz"))
    assert len(recon) == 3 and any(n.endswith("_ap.nii.gz") for n in recon), recon
    assert f"from ap alone: {out / 'recon'}" in printed
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    rows = {(row["method"], "+".join(row["views"])) for row in metrics["summary"]}
    for views in ("ap", "ap+lateral"):  # single-view and biplanar rows side by side, baselines too
        assert {("cascade", views), ("mean volume", views), ("back-projection", views), ("regression", views)} <= rows
    md = (out / "report" / "report.md").read_text()
    assert "| regression [ap] |" in md and "| cascade [ap+lateral] |" in md
    # the same cases from simulated clinical films: the paired gap of the cascade and both baselines
    gaps = {g["method"] for g in metrics["clinical"]["vs clean"]}
    assert {"back-projection", "regression"} <= gaps and any(m.startswith("cascade") for m in gaps), gaps
    assert {"back-projection [ap]", "regression [ap]"} <= gaps, gaps  # and from one AP film alone
    assert "## Clean line integrals vs simulated clinical films" in md
    assert list((tmp_path / "cache" / "film_cache").glob("films_*/complete.json"))  # the training films, shared
    if demo.side_by_side_threads():  # ≥ 2 CPUs, no GPU: the baseline trained beside the cascade's stage 2
        log = (out / "train_regression.log").read_text()
        assert "done in" in log and "baseline:\nstage 1 (s16):" in printed, log
    # a second run in the same folder keeps the trained stages (it resumed; before, it stopped on a clash)
    assert demo._resume(out / "checkpoints" / "cascade") == ["--resume_from", str(out / "checkpoints" / "cascade")]
    demo._train_side_by_side(["train", "--config", str(cascade), "--checkpoint_dir", str(out / "checkpoints" / "cascade")],
                             ["train", "--config", str(baseline), "--checkpoint_dir", str(out / "checkpoints" / "regression")],
                             out / "checkpoints" / "cascade", out / "checkpoints" / "regression",
                             out / "train_regression.log", 1)
    again = capsys.readouterr().out
    assert "stage 1 is already complete" in again and "all 2 stages are already trained" in again, again
    log = (out / "train_regression.log").read_text()  # appended: the first run's training log is kept
    assert "all 2 stages are already trained" in log and (" steps in " in log) == bool(demo.side_by_side_threads())
    # its summary is this run's part of the log only: nothing trained, no steps
    assert "baseline:\ndone in" in again and " steps in " not in again.split("baseline:")[1], again
    # a baseline that fails beside the cascade stops the demo, naming its log
    with pytest.raises(SystemExit, match=r"`hvc train` \(baseline\) failed with exit code 2; see .*bad\.log"):
        demo._train_side_by_side(["train", "--config", str(cascade), "--checkpoint_dir", str(out / "checkpoints" / "cascade")],
                                 ["train", "--config", str(baseline), "--checkpoint_dir", str(tmp_path / "r2"), "--max-steps", "0"],
                                 out / "checkpoints" / "cascade", tmp_path / "r2", tmp_path / "bad.log", 1)


def test_demo_passes_samples_to_infer_and_evaluate(tmp_path, capsys):
    d = tiny_dict(None, n_cases=6, cache_dir=tmp_path / "cache")
    d["data"]["split"] = [0.5, 0.17, 0.33]
    cascade = write_cfg(tmp_path / "cascade.json", d)
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--config", str(cascade), "--baseline-config", "",
                 "--max-steps", "2", "--steps", "2", "--samples", "2"])
    assert code == 0, capsys.readouterr().err
    assert list((out / "recon").glob("*_std.nii.gz"))  # infer ran K = 2 chains
    # evaluate --calibrate ran first and saved its val-fitted scale: both infers (same K and steps) scale
    # their final std map with it, the AP-only one with the caveat that it was fitted from both views
    assert (out / "checkpoints" / "cascade" / "std_scale.json").is_file()
    calibrated = sorted(p.name for p in (out / "recon").glob("*_std_calibrated.nii.gz"))
    assert len(calibrated) == 2 and "_ap_std_calibrated" in calibrated[0], calibrated
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["info"]["samples per case"] == 2
    assert "regression" not in {row["method"] for row in metrics["summary"]}  # '' skips the baseline


def test_trainings_side_by_side_only_on_two_free_cpus_without_a_gpu(monkeypatch):
    import torch

    monkeypatch.delenv("HVC_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(threads, "cpu_set", lambda: [0, 1, 2, 3])
    assert demo.side_by_side_threads() == 2  # the CPUs split between the two trainings
    monkeypatch.setattr(threads, "cpu_set", lambda: [0])
    assert demo.side_by_side_threads() == 0  # one CPU: one after the other
    monkeypatch.setattr(threads, "cpu_set", lambda: [0, 1])
    monkeypatch.setenv("HVC_THREADS", "1")
    assert demo.side_by_side_threads() == 0  # the user fixed one thread in all
    monkeypatch.delenv("HVC_THREADS")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert demo.side_by_side_threads() == 0  # a GPU: two trainings would share its memory


def test_demo_rejects_a_bad_config(tmp_path, capsys):
    bad = write_cfg(tmp_path / "bad.json", {"stages": [], "trainig": {}})
    assert main(["demo", "--out", str(tmp_path / "o"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "trainig: unknown key" in err

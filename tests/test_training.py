"""Progressive training: freezing, conditioning cache, exact resume, NaN handling, accumulation, bf16, CLI errors."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from _trainkit import metrics_by_step, tiny_cfg, tiny_dataset, tiny_dict, write_cfg  # noqa: F401 (fixture)
from hybrid_vit_cascade.cli import main as cli_main
from hybrid_vit_cascade.config import config_from_dict
from hybrid_vit_cascade.runtime import objective as objective_mod
from hybrid_vit_cascade.training.progressive import train_progressive
from hybrid_vit_cascade.training.logging import RunLogger
from hybrid_vit_cascade.training.trainer import TrainingDiverged


def _quiet(msgs):
    return msgs.append


def test_stage2_freezes_stage1_and_reuses_condition_cache(tiny_dataset, tmp_path):
    cfg = tiny_cfg(tiny_dataset, num_epochs=1, max_steps_per_stage=2)
    ck = tmp_path / "ck"
    msgs: list[str] = []
    out = train_progressive(cfg, ck, device="cpu", log=msgs.append)
    assert [s["stage"] for s in out["stages"]] == [1, 2] and all(s["completed"] for s in out["stages"])
    cascade = out["cascade"]
    # Stage 1 after stage 2 trained is bit-identical to its saved EMA weights (what stage 2 was conditioned on).
    saved = load_file(str(ck / "stage1_s16" / "best" / "ema.safetensors"))
    live = cascade.stages[0].state_dict()
    assert saved.keys() == live.keys()
    assert all(torch.equal(saved[k], live[k]) for k in saved)
    assert not any(p.requires_grad for p in cascade.stages[0].parameters())
    assert not cascade.stages[0].training
    # Stage 2's optimizer held stage-2 parameters only, all of them.
    names = out["stages"][1]["optimized_parameters"]
    assert names and all(n.startswith("stages.1.") for n in names)
    # ... except the missing-view embedding, which nothing reads without training.view_dropout.
    unread = len(cascade.stages[1].missing_view_parameters())
    assert len(names) == sum(1 for _ in cascade.stages[1].parameters()) - unread
    meta = json.loads((ck / "stage2_s32" / "best" / "meta.json").read_text())
    from hybrid_vit_cascade.runtime.checkpoint import weights_hash

    assert meta["prev_stages"]["1"] == weights_hash(saved)

    # The conditioning cache holds one stage-1 sample per train/val case, at 16³, finite.
    caches = list((ck / "cond_cache").glob("stage1_s16_*"))
    assert len(caches) == 1 and (caches[0] / "complete.json").is_file()
    files = sorted(caches[0].glob("*.npy"))
    info = json.loads((ck / "data_info.json").read_text())
    assert {f.stem for f in files} == set(info["splits"]["train"]) | set(info["splits"]["val"])
    import numpy as np

    arr = np.load(files[0])
    assert arr.shape == (1, 16, 16, 16) and np.isfinite(arr).all() and arr.std() > 0
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    # TensorBoard got the losses (per view), lr, grad norm, throughput, memory, val metrics and images.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, images = set(), set()
    assert sorted(d.name for d in (ck / "tb").iterdir()) == ["stage1_s16", "stage2_s32"]  # one run per stage
    for run in (ck / "tb").iterdir():
        ev = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0}).Reload()
        scalars |= set(ev.Tags()["scalars"])
        images |= set(ev.Tags()["images"])
    for tag in ("diffusion_loss", "physics_loss", "physics_loss_ap", "physics_loss_lateral", "loss", "lr",
                "grad_norm", "voxels_per_s", "peak_memory_mb"):
        assert f"stage2_s32/train/{tag}" in scalars, tag
    for tag in ("loss", "diffusion_loss", "physics_loss", "psnr", "ssim"):
        assert f"stage2_s32/val/{tag}" in scalars, tag
    for tag in ("slice_sagittal", "slice_coronal", "slice_axial", "drr_ap", "drr_lateral"):
        assert f"stage1_s16/val/{tag}" in images, tag

    # Retraining stage 2 alone reuses the cache (same stage-1 weights + config) without resampling.
    msgs.clear()
    out2 = train_progressive(cfg, ck, only_stage=2, overwrite=True, device="cpu", log=msgs.append)
    assert out2["stages"][0]["stage"] == 2
    assert any("reusing cached stage-1 samples" in m for m in msgs)
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes
    # Different stage-1 weights → a different cache key (the cache never serves stale samples).
    from hybrid_vit_cascade.training.cond_cache import cache_key

    sd = cascade.stages[0].state_dict()
    sd2 = {k: v.clone() for k, v in sd.items()}
    first = next(k for k in sd2 if sd2[k].is_floating_point())
    sd2[first] += 1e-3
    assert cache_key(cfg, 1, sd, None, "x") != cache_key(cfg, 1, sd2, None, "x")


def test_stage_k_needs_earlier_stages(tiny_dataset, tmp_path):
    cfg = tiny_cfg(tiny_dataset)
    from hybrid_vit_cascade.runtime.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="stage 1 is not trained"):
        train_progressive(cfg, tmp_path / "ck", only_stage=2, device="cpu", log=lambda m: None)


def test_resume_is_exact(tiny_dataset, tmp_path):
    # 6 train cases, batch 2 → 3 updates/epoch; 2 epochs = 6 updates. Interrupt mid-epoch 2 (step 4).
    cfg = tiny_cfg(tiny_dataset, stages=(16,), num_epochs=2)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train_progressive(cfg, straight, device="cpu", log=lambda m: None)
    out = train_progressive(cfg, interrupted, device="cpu", stop_at_step=4, log=lambda m: None)
    assert out["stages"][0]["steps"] == 4 and not out["stages"][0]["completed"]
    meta = json.loads((interrupted / "stage1_s16" / "last" / "meta.json").read_text())
    assert meta["step"] == 4 and meta["epoch"] == 1  # 0-based epoch 1, one batch in
    resumed = train_progressive(None, interrupted, resume_from=interrupted, device="cpu", log=lambda m: None)
    assert resumed["stages"][0]["steps"] == 6 and resumed["stages"][0]["completed"]
    key = "stage1_s16/train/loss"
    a, b = metrics_by_step(straight, key), metrics_by_step(interrupted, key)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for s in a:
        assert b[s] == pytest.approx(a[s], abs=1e-5, rel=1e-5), f"step {s}"
    lr_a, lr_b = metrics_by_step(straight, "stage1_s16/train/lr"), metrics_by_step(interrupted, "stage1_s16/train/lr")
    assert all(lr_b[s] == pytest.approx(lr_a[s], rel=1e-9) for s in lr_a)
    wa = load_file(str(straight / "stage1_s16" / "last" / "ema.safetensors"))
    wb = load_file(str(interrupted / "stage1_s16" / "last" / "ema.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_nan_steps_are_skipped_then_stop_keeping_last_good_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    cfg = tiny_cfg(tiny_dataset, stages=(16,), num_epochs=4, max_bad_steps=3)
    calls = {"n": 0}
    real_loss = objective_mod.Objective.loss

    def poisoned(self, model_fn, x0, gens):
        out = real_loss(self, model_fn, x0, gens)
        if torch.is_grad_enabled():  # training micro-batches only (validation runs under no_grad)
            calls["n"] += 1
            if calls["n"] == 2 or calls["n"] >= 4:  # one isolated bad step, then bad from step 4 on
                return objective_mod.StepOutput(out.loss * float("nan"), out.x0_pred)
        return out

    monkeypatch.setattr(objective_mod.Objective, "loss", poisoned)
    ck = tmp_path / "ck"
    msgs: list[str] = []
    with pytest.raises(TrainingDiverged) as err:
        train_progressive(cfg, ck, device="cpu", log=msgs.append)
    text = str(err.value)
    assert "step 6" in text and "stage 1" in text and "1e-5" in text and "[-1, 1]" in text
    assert sum("update skipped" in m for m in msgs) == 4  # step 2, then 4, 5, 6
    # The epoch-1 checkpoint (step 3) is kept; nothing non-finite was written over it.
    meta = json.loads((ck / "stage1_s16" / "last" / "meta.json").read_text())
    assert meta["step"] == 3
    for f in ("model.safetensors", "ema.safetensors"):
        w = load_file(str(ck / "stage1_s16" / "last" / f))
        assert all(torch.isfinite(t).all() for t in w.values())
    bad = metrics_by_step(ck, "stage1_s16/train/bad_steps_total")
    assert bad == {2: 1.0, 4: 2.0, 5: 3.0, 6: 4.0}


def test_gradient_accumulation_matches_bigger_batch(tiny_dataset, tmp_path):
    # One update: batch 2 × accum 1 vs batch 1 × accum 2 on the same two cases (same per-case noise).
    common = dict(stages=(16,), num_epochs=1, max_steps_per_stage=1, val_samples=0)
    big = tiny_cfg(tiny_dataset, batch_size=2, grad_accum_steps=1, **common)
    acc = tiny_cfg(tiny_dataset, batch_size=1, grad_accum_steps=2, **common)
    train_progressive(big, tmp_path / "big", device="cpu", log=lambda m: None)
    train_progressive(acc, tmp_path / "acc", device="cpu", log=lambda m: None)
    la = metrics_by_step(tmp_path / "big", "stage1_s16/train/loss")[1]
    lb = metrics_by_step(tmp_path / "acc", "stage1_s16/train/loss")[1]
    assert lb == pytest.approx(la, rel=1e-5)
    wa = load_file(str(tmp_path / "big" / "stage1_s16" / "last" / "model.safetensors"))
    wb = load_file(str(tmp_path / "acc" / "stage1_s16" / "last" / "model.safetensors"))
    init = load_file(str(tmp_path / "big" / "stage1_s16" / "last" / "ema.safetensors"))
    moved = [k for k in wa if not torch.equal(wa[k], init[k])]
    assert moved  # the update really changed weights
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6, rtol=1e-5), k


def test_bf16_smoke_and_regression_objective(tiny_dataset, tmp_path):
    cfg = tiny_cfg(tiny_dataset, stages=(16,), max_steps_per_stage=2, mixed_precision="bf16", val_samples=0)
    out = train_progressive(cfg, tmp_path / "bf16", device="cpu", log=lambda m: None)
    assert out["stages"][0]["steps"] == 2 and out["stages"][0]["bad_steps"] == 0
    losses = metrics_by_step(tmp_path / "bf16", "stage1_s16/train/loss")
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses.values())
    # The direct-MSE baseline: same backbone, objective "regression", one forward per "sample".
    reg = tiny_cfg(tiny_dataset, stages=(16,), max_steps_per_stage=3, objective="regression")
    out = train_progressive(reg, tmp_path / "reg", device="cpu", log=lambda m: None)
    assert out["stages"][0]["completed"]
    val = out["stages"][0]["val"]
    assert math.isfinite(val["psnr"]) and math.isfinite(val["regression_loss"])


def test_cli_config_errors_exit_2(tiny_dataset, tmp_path, capsys):
    d = tiny_dict(tiny_dataset)
    d["training"]["learnig_rate"] = 1e-4
    bad = write_cfg(tmp_path / "typo.json", d)
    assert cli_main(["train", "--config", str(bad), "--checkpoint_dir", str(tmp_path / "ck")]) == 2
    err = capsys.readouterr().err
    assert "training.learnig_rate" in err and "unknown key" in err and "typo.json" in err
    d = tiny_dict(tiny_dataset)
    d["training"]["batch_size"] = "four"
    bad = write_cfg(tmp_path / "type.json", d)
    assert cli_main(["train", "--config", str(bad), "--checkpoint_dir", str(tmp_path / "ck")]) == 2
    err = capsys.readouterr().err
    assert "training.batch_size" in err and "type.json" in err
    assert not (tmp_path / "ck").exists()


def test_cli_train_then_refuses_to_clobber(tiny_dataset, tmp_path, capsys):
    cfgf = write_cfg(tmp_path / "c.json", tiny_dict(tiny_dataset, stages=(16,), max_steps_per_stage=1, val_samples=0))
    ck = tmp_path / "ck"
    assert cli_main(["train", "--config", str(cfgf), "--checkpoint_dir", str(ck), "--device", "cpu"]) == 0
    saved = config_from_dict(json.loads((ck / "config.json").read_text()))  # the resolved config round-trips
    assert saved.training.max_steps_per_stage == 1 and saved.stages[0].voxel_dim == 32
    assert list((ck / "tb").glob("stage1_*/events.out.tfevents.*"))
    assert cli_main(["train", "--config", str(cfgf), "--checkpoint_dir", str(ck), "--device", "cpu"]) == 2
    assert "--resume_from" in capsys.readouterr().err
    # The seed's script is the same entry point.
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "training" / "train_progressive.py"
    r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--resume_from" in r.stdout and "--stage" in r.stdout
    shutil.rmtree(ck)


def test_wandb_offline(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    cfg = tiny_cfg(tiny_dataset, stages=(16,), max_steps_per_stage=2, val_samples=1)
    train_progressive(cfg, tmp_path / "ck", device="cpu", use_wandb=True, wandb_project="hvc-test", stop_at_step=1,
                      log=lambda m: None)
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    # A resumed training continues the same W&B run: its id is kept in the checkpoint folder.
    run_id = (tmp_path / "ck" / "wandb_run_id").read_text().strip()
    assert runs[0].name.endswith(f"-{run_id}")
    ids = []
    real_close = RunLogger.close
    monkeypatch.setattr(RunLogger, "close", lambda self: (ids.append(self.wandb_run.id), real_close(self)))
    train_progressive(None, tmp_path / "ck", resume_from=tmp_path / "ck", device="cpu", use_wandb=True,
                      wandb_project="hvc-test", log=lambda m: None)
    assert ids == [run_id]

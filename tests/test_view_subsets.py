"""One checkpoint, any non-empty subset of its views (issue 11 item 1): the view mask of a stage, training
with view dropout (exact resume, per-view conditioning caches), and inference / evaluation from one view."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from _trainkit import metrics_by_step, tiny_cfg, tiny_dataset  # noqa: F401 (fixture)
from test_inference import LI_MAX, P as PX, dataset, make_checkpoint  # noqa: F401 (fixture)
from test_models import inputs, tiny_stage
from hybrid_vit_cascade.cli import main as hvc
from hybrid_vit_cascade.config import ConfigError, config_from_dict
from hybrid_vit_cascade.diffusion.guidance import drr_consistency_wrap
from hybrid_vit_cascade.inference.pipeline import Reconstructor
from hybrid_vit_cascade.runtime.checkpoint import CheckpointError, load_cascade, save_resolved_config, read_config
from hybrid_vit_cascade.runtime.conditioning import draw_view_mask, view_subsets
from hybrid_vit_cascade.runtime.seeding import sample_generators
from hybrid_vit_cascade.training.progressive import train_progressive

BOTH, AP, LAT = [True, True], [True, False], [False, True]


def _opened(stage):
    """Non-zero weights everywhere (AdaLN-Zero starts at v = 0), so outputs depend on every input."""
    with torch.no_grad():
        for p in stage.parameters():
            if torch.count_nonzero(p) == 0:
                p.normal_(0, 0.05)
    return stage


# ------------------------------------------------------------------------------ the model


@pytest.mark.parametrize("fusion", ["conv", "mean"])
@pytest.mark.parametrize("index", [0, 1])
def test_all_true_mask_is_bit_identical_to_no_mask(fusion, index):
    stage = _opened(tiny_stage(index=index, lift_fusion=fusion)).eval()
    x_t, t, xray, prev, cond = inputs(stage, prev_res=8)
    with torch.no_grad():
        v, aux = stage(x_t, t, xray, prev, cond, return_aux=True)
        v_m, aux_m = stage(x_t, t, xray, prev, cond, return_aux=True, view_mask=torch.ones(2, 2, dtype=torch.bool))
        # A both-view sample in a batch with a single-view one: still exactly its unmasked output.
        v_mix = stage(x_t, t, xray, prev, cond, view_mask=torch.tensor([BOTH, AP]))
    assert torch.equal(v, v_m) and torch.equal(aux["lifted"], aux_m["lifted"])
    assert torch.equal(v_mix[0], v[0]) and not torch.equal(v_mix[1], v[1])


@pytest.mark.parametrize("lifting", [True, False])
def test_an_absent_views_pixels_never_reach_the_output(lifting):
    stage = _opened(tiny_stage(index=1, use_depth_lifting=lifting))
    x_t, t, xray, prev, cond = inputs(stage, prev_res=8)
    mask = torch.tensor([AP, LAT])  # sample 0 without its lateral, sample 1 without its AP
    xray = xray.clone().requires_grad_(True)
    v = stage(x_t, t, xray, prev, cond, view_mask=mask)
    assert v.shape == x_t.shape
    v.square().sum().backward()
    g = xray.grad
    assert torch.count_nonzero(g[0, 1]) == 0 and torch.count_nonzero(g[1, 0]) == 0  # exactly 0
    assert torch.count_nonzero(g[0, 0]) > 0 and torch.count_nonzero(g[1, 1]) > 0
    assert torch.count_nonzero(stage.encoder.missing.grad) > 0  # the missing-view embedding is trained
    with torch.no_grad():  # and whatever the absent slot holds, the output is the same
        other = xray.detach().clone()
        other[0, 1], other[1, 0] = 0.0, torch.rand(PX, PX)
        assert torch.equal(stage(x_t, t, other, prev, cond, view_mask=mask), v.detach())


def test_mean_fusion_of_one_view_is_that_views_lifted_volume():
    stage = _opened(tiny_stage(lift_fusion="mean")).eval()
    x_t, t, xray, _, _ = inputs(stage)
    lift = stage.lifting
    with torch.no_grad():
        feats = stage.encoder(xray)
        out, probs = lift(feats, torch.tensor([LAT, LAT]))
        uv, depth = lift.voxel_geometry(feats.device)
        alone = lift._lift_view(lift.feature_heads[1](feats[:, 1]), probs[:, 1], uv[1], depth[1])
    assert torch.equal(out, alone)


def test_view_mask_errors():
    stage = tiny_stage()
    x_t, t, xray, _, _ = inputs(stage)
    with pytest.raises(ValueError, match=r"view_mask must be a bool tensor \(2, 2\)"):
        stage(x_t, t, xray, view_mask=torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"view_mask must be a bool tensor \(2, 2\)"):
        stage(x_t, t, xray, view_mask=torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="leaves a sample without any view"):
        stage(x_t, t, xray, view_mask=torch.tensor([AP, [False, False]]))


def test_a_checkpoint_without_the_missing_view_embedding_loads_and_runs_unchanged(tmp_path):
    from safetensors.torch import save_file

    ck = make_checkpoint(tmp_path / "ck")
    _, cascade, _ = load_cascade(ck)
    torch.manual_seed(0)
    files = sorted(ck.glob("stage*/best/*.safetensors"))
    for f in files:  # trained-looking weights, with the embedding
        k = int(f.parent.parent.name[len("stage")])
        save_file({n: t.contiguous() for n, t in _opened(cascade.stages[k - 1]).state_dict().items()}, str(f))
    _, full, _ = load_cascade(ck)
    for f in files:  # the same weights as written before the embedding existed
        sd = load_file(str(f))
        sd.pop("encoder.missing")
        save_file(sd, str(f))
    _, old, _ = load_cascade(ck)
    for a, b in zip(full.stages, old.stages):
        assert torch.count_nonzero(a.encoder.missing) > 0 and torch.count_nonzero(b.encoder.missing) == 0
        x_t, t, xray, prev, cond = inputs(a, prev_res=8)
        with torch.no_grad():
            v = a(x_t, t, xray, prev, cond)
            assert torch.count_nonzero(v) > 0 and torch.equal(v, b(x_t, t, xray, prev, cond))
    # Only that key may be absent: any other missing weight is still an error.
    sd = load_file(str(files[0]))
    sd.pop(next(k for k in sd if k.startswith("denoiser.")))
    save_file(sd, str(files[0]))
    with pytest.raises(CheckpointError, match="do not match config.json"):
        load_cascade(ck)


# ------------------------------------------------------------------------------ config and the draw


def test_view_dropout_config(tmp_path):
    d = {"stages": [{"name": "a", "volume_size": [16] * 3, "voxel_dim": 32, "num_heads": 4}],
         "training": {"view_dropout": 0.5}, "data": {"views": ["ap"]}}
    with pytest.raises(ConfigError, match=r"training\.view_dropout 0\.5 needs two data\.views.*\['ap'\]"):
        config_from_dict(d)
    d["data"]["views"] = ["ap", "lateral"]
    assert config_from_dict(d).training.view_dropout == 0.5
    d["training"]["view_dropout"] = 1.5
    with pytest.raises(ConfigError, match=r"training\.view_dropout: Input should be less than or equal to 1"):
        config_from_dict(d)


def test_draw_view_mask_is_per_sample_and_uniform():
    gens = lambda: sample_generators(range(4000))  # noqa: E731
    assert draw_view_mask(gens(), 2, 0.0, "cpu").all()
    m = draw_view_mask(gens(), 2, 0.5, "cpu")
    assert torch.equal(m, draw_view_mask(gens(), 2, 0.5, "cpu"))  # a function of the generators alone
    assert m.any(dim=1).all()
    single = ~m.all(dim=1)
    assert abs(single.float().mean().item() - 0.5) < 0.04
    assert abs(m[single, 0].float().mean().item() - 0.5) < 0.05  # AP alone as often as lateral alone
    one = draw_view_mask(gens(), 2, 1.0, "cpu")
    assert (one.sum(dim=1) == 1).all()
    # Sample b's mask depends on gens[b] only (not on its batch-mates).
    assert torch.equal(draw_view_mask(gens()[7:9], 2, 0.5, "cpu"), m[7:9])
    assert view_subsets(["ap", "lateral"]) == [("ap", "lateral"), ("ap",), ("lateral",)]


# ------------------------------------------------------------------------------ training


def test_view_dropout_training_resumes_exactly(tiny_dataset, tmp_path):
    # As test_training.test_resume_is_exact, with half the samples showing one view.
    cfg = tiny_cfg(tiny_dataset, stages=(16,), num_epochs=2, view_dropout=0.5)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    out = train_progressive(cfg, straight, device="cpu", log=lambda m: None)
    assert "stages.0.encoder.missing" in out["stages"][0]["optimized_parameters"]
    train_progressive(cfg, interrupted, device="cpu", stop_at_step=4, log=lambda m: None)
    train_progressive(None, interrupted, resume_from=interrupted, device="cpu", log=lambda m: None)
    key = "stage1_s16/train/loss"
    a, b = metrics_by_step(straight, key), metrics_by_step(interrupted, key)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for s in a:
        assert b[s] == pytest.approx(a[s], abs=1e-5, rel=1e-5), f"step {s}"
    wa = load_file(str(straight / "stage1_s16" / "last" / "ema.safetensors"))
    wb = load_file(str(interrupted / "stage1_s16" / "last" / "ema.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    assert torch.count_nonzero(wa["encoder.missing"]) > 0  # single-view samples trained it
    # Without view dropout the same run draws nothing else and never touches the embedding.
    plain = tiny_cfg(tiny_dataset, stages=(16,), num_epochs=2)
    out0 = train_progressive(plain, tmp_path / "plain", device="cpu", log=lambda m: None)
    assert not any("missing" in n for n in out0["stages"][0]["optimized_parameters"])
    w0 = load_file(str(tmp_path / "plain" / "stage1_s16" / "last" / "ema.safetensors"))
    assert torch.count_nonzero(w0["encoder.missing"]) == 0
    c = metrics_by_step(tmp_path / "plain", key)
    assert any(c[s] != a[s] for s in a)  # the dropped views changed the losses


def test_stage2_is_conditioned_on_stage1_from_the_same_views(tiny_dataset, tmp_path):
    cfg = tiny_cfg(tiny_dataset, num_epochs=2, view_dropout=0.5)
    ck = tmp_path / "ck"
    train_progressive(cfg, ck, only_stage=1, device="cpu", log=lambda m: None)
    msgs: list[str] = []
    train_progressive(cfg, ck, only_stage=2, device="cpu", stop_at_step=4, log=msgs.append)
    # One cache per view set: both views, AP alone, lateral alone — each complete, each different.
    caches = {p.name.split("_")[2] if p.name.count("_") == 3 else "both": p
              for p in (ck / "cond_cache").glob("stage1_s16_*")}
    assert set(caches) == {"both", "ap", "lateral"}, caches
    info = json.loads((ck / "data_info.json").read_text())
    ids = set(info["splits"]["train"]) | set(info["splits"]["val"])
    for p in caches.values():
        assert (p / "complete.json").is_file() and {f.stem for f in p.glob("*.npy")} == ids
    cid = sorted(ids)[0]
    both, ap, lat = (np.load(caches[k] / f"{cid}.npy") for k in ("both", "ap", "lateral"))
    assert not np.array_equal(both, ap) and not np.array_equal(ap, lat)
    # An AP-only sample is what the frozen stage 1 makes from the AP alone (the cache's seeds, batch of one).
    from hybrid_vit_cascade.data.datasets import CTXrayDataset
    from hybrid_vit_cascade.training.cond_cache import build_condition_cache

    ds = CTXrayDataset(tiny_dataset, "train", [16])
    first = ds.cases[0]["case_id"]
    _, cascade, _ = load_cascade(ck)
    data_id = str(json.loads((tiny_dataset / "manifest.json").read_text()).get("settings_hash"))
    again = build_condition_cache(read_config(ck), 1, cascade.stages, [(first, ds[0]["xray"])], tmp_path / "again",
                                  data_id, torch.device("cpu"), log=lambda m: None, views=["ap"])
    np.testing.assert_allclose(again.load(first), np.load(caches["ap"] / f"{first}.npy"), atol=1e-5)
    # The step picks, per sample, the cached sample of the views its mask shows.
    from hybrid_vit_cascade.training.step import StageStepper

    class Ctx:
        view_names = ["ap", "lateral"]

    batch = {"prev": torch.zeros(3, 1, 2, 2, 2),
             "prev_views": {"ap": torch.ones(3, 1, 2, 2, 2), "lateral": torch.full((3, 1, 2, 2, 2), 2.0)}}
    picked = StageStepper(Ctx(), None).prev_for(batch, torch.tensor([LAT, BOTH, AP]))
    assert picked[:, 0, 0, 0, 0].tolist() == [2.0, 0.0, 1.0]
    # Resuming stage 2 reuses the three caches and matches an uninterrupted stage 2.
    msgs.clear()
    train_progressive(None, ck, resume_from=ck, only_stage=2, device="cpu", log=msgs.append)
    assert sum("reusing cached" in m for m in msgs) == 3
    straight = tmp_path / "straight"  # the same frozen stage 1 and caches, stage 2 uninterrupted
    straight.mkdir()
    for name in ("stage1_s16", "cond_cache", "config.json", "data_info.json"):
        (shutil.copytree if (ck / name).is_dir() else shutil.copy)(ck / name, straight / name)
    train_progressive(cfg, straight, only_stage=2, device="cpu", log=lambda m: None)
    key = "stage2_s32/train/loss"
    a, b = metrics_by_step(straight, key), metrics_by_step(ck, key)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for s in a:
        assert b[s] == pytest.approx(a[s], abs=1e-5, rel=1e-5), f"step {s}"


# ------------------------------------------------------------------------------ inference


def _dropout_checkpoint(root: Path, **kw) -> Path:
    ck = make_checkpoint(root, **kw)
    cfg = read_config(ck)
    cfg.training.view_dropout = 0.5
    save_resolved_config(cfg, ck)
    return ck


def _xray(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, PX, PX, generator=g) * 2 - 1


def test_reconstruct_from_one_view(tmp_path):
    rec = Reconstructor(make_checkpoint(tmp_path / "bi"))  # trained biplanar: accepts a subset, warns once
    for stage in rec.cascade.stages:
        _opened(stage)
    warnings: list[str] = []
    rec.warn = warnings.append
    x = _xray()
    ap = rec.reconstruct(x, steps=2, views=["ap"], seed=3)
    junk = x.clone()
    junk[1] = _xray(9)[1]  # whatever the lateral slot holds is ignored
    torch.testing.assert_close(rec.reconstruct(junk, steps=2, views=["ap"], seed=3)[-1].samples, ap[-1].samples,
                               rtol=0, atol=0)
    both = rec.reconstruct(x, steps=2, seed=3)
    assert not torch.equal(both[-1].samples, ap[-1].samples)
    torch.testing.assert_close(rec.reconstruct(x, steps=2, seed=3, views=["lateral", "ap"])[-1].samples,
                               both[-1].samples, rtol=0, atol=0)  # all views, any order = no mask
    assert len(warnings) == 1 and "trained biplanar" in warnings[0] and "view_dropout" in warnings[0]
    assert rec.drr_scores(ap[-1].mean, x[None], ["ap"]).shape == (1, 1)
    with pytest.raises(ValueError, match=r"not a non-empty subset of the checkpoint's views \['ap', 'lateral'\]"):
        rec.reconstruct(x, views=["pa"])
    with pytest.raises(ValueError, match="not a non-empty subset"):
        rec.reconstruct(x, views=[])
    dropout = Reconstructor(_dropout_checkpoint(tmp_path / "vd"))
    dropout.warn = warnings.append
    dropout.reconstruct(x, steps=2, views=["lateral"])
    assert len(warnings) == 1  # trained for it: no warning


def test_reconstruct_guides_with_exactly_the_present_views(tmp_path):
    # Untrained stages predict v = 0 whatever the X-rays: only DRR guidance reads them here.
    rec = Reconstructor(make_checkpoint(tmp_path / "ck", trained=(1,)))
    x = _xray()
    other = x.clone()
    other[1] = _xray(5)[1]  # another lateral
    run = lambda xr, views: rec.reconstruct(xr, steps=2, guidance_scale=1.0, views=views, seed=1)[-1].samples  # noqa: E731
    assert not torch.equal(run(x, None), run(other, None))  # every view is fitted
    assert torch.equal(run(x, ["ap"]), run(other, ["ap"]))  # the absent lateral is not
    assert not torch.equal(run(x, ["ap"]), run(x, None))


def test_guidance_fits_only_the_present_views():
    proj = lambda x0: torch.cat([x0[..., 0], x0[..., 1]], dim=1)  # noqa: E731  (1, 1, 4, 4, 4) -> (1, 2, 4, 4)
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    x_t, t = torch.randn(1, 1, 4, 4, 4), torch.tensor([0.5])
    target = torch.randn(1, 2, 4, 4)
    other = target.clone()
    other[:, 1] = 5.0
    a = drr_consistency_wrap(model, proj, target, 1.0, views=[0])(x_t, t)
    b = drr_consistency_wrap(model, proj, other, 1.0, views=[0])(x_t, t)
    assert torch.equal(a, b)
    assert not torch.equal(a, drr_consistency_wrap(model, proj, other, 1.0)(x_t, t))
    with pytest.raises(ValueError, match="distinct view indices"):
        drr_consistency_wrap(model, proj, target, 1.0, views=[])


def test_cli_infer_from_one_film(tmp_path, capsys):
    from hybrid_vit_cascade.inference.xray_io import write_drr_png

    ck = _dropout_checkpoint(tmp_path / "ck")
    li = (_xray().numpy() + 1) / 2 * LI_MAX
    np.save(tmp_path / "ap.npy", li[0])
    write_drr_png(tmp_path / "lat.png", li[1], view="lateral")
    rc = hvc(["infer", "--checkpoint", str(ck), "--xray", str(tmp_path / "ap.npy"), "--views", "ap",
              "--out", str(tmp_path / "ap.nii.gz"), "--steps", "2", "--png"])
    text = capsys.readouterr()
    assert rc == 0, text.err
    assert "reconstructing from ap only" in text.out and "from ap only" in text.out
    drr_lines = [ln for ln in text.out.splitlines() if ln.startswith("DRR consistency")]
    assert drr_lines and all("ap " in ln and "lateral" not in ln for ln in drr_lines)
    assert (tmp_path / "ap.nii.gz").is_file() and (tmp_path / "ap_xray.png").is_file()
    assert "warning" not in text.err
    # An hvc PNG knows its view: no --views needed.
    rc = hvc(["infer", "--checkpoint", str(ck), "--xray", str(tmp_path / "lat.png"),
              "--out", str(tmp_path / "lat.nii.gz"), "--steps", "2"])
    assert rc == 0 and "reconstructing from lateral only" in capsys.readouterr().out
    # A bare array without a view name cannot be placed.
    rc = hvc(["infer", "--checkpoint", str(ck), "--xray", str(tmp_path / "ap.npy"),
              "--out", str(tmp_path / "x.nii.gz")])
    err = capsys.readouterr().err
    assert rc == 2 and "name the view of each with --views" in err and "ap.npy" in err


def test_cli_evaluate_single_view_and_biplanar_side_by_side(dataset, tmp_path, capsys):
    prep = str(dataset / "prep")
    ck = _dropout_checkpoint(tmp_path / "ck", dataset=prep)
    reg_bi = make_checkpoint(tmp_path / "reg_bi", objective="regression", dataset=prep)
    out = tmp_path / "rep"
    rc = hvc(["evaluate", "--checkpoint", str(ck), "--data", prep, "--out", str(out), "--steps", "2",
              "--views", "ap", "--views", "ap,lateral", "--baseline-checkpoint", str(reg_bi), "--no-progress",
              "--montage-cases", "1"])
    text = capsys.readouterr().out
    assert rc == 0, text
    m = json.loads((out / "metrics.json").read_text())
    rows = {(r["method"], r["stage"], "+".join(r["views"])) for r in m["summary"]}
    for views in ("ap", "ap+lateral"):
        for method, stage in (("cascade", "stage1_low"), ("cascade", "stage2_high"), ("mean volume", None),
                              ("back-projection", None)):
            assert (method, stage, views) in rows, (method, stage, views)
    # The biplanar-only regression baseline is scored from both views only, and the report says why.
    assert ("regression", None, "ap+lateral") in rows and ("regression", None, "ap") not in rows
    assert "trained with every view" in m["info"]["regression [ap]"]
    # Rows of a method sit side by side: [ap] right before [ap+lateral].
    labels = [(r["method"], r["stage"], r["views"]) for r in m["summary"]]
    i = labels.index(("cascade", "stage2_high", ["ap"]))
    assert labels[i + 1] == ("cascade", "stage2_high", ["ap", "lateral"])
    case = m["cases"][0]["methods"]
    assert set(case["cascade/stage2_high [ap]"]) >= {"psnr3d", "drr_psnr", "drr_psnr_ap"}
    assert "drr_psnr_lateral" not in case["cascade/stage2_high [ap]"]  # scored on the present view only
    assert "drr_psnr_lateral" in case["cascade/stage2_high"]
    q = {"+".join(x["views"]): x for x in m["quality"]}
    assert set(q) == {"ap", "ap+lateral"}
    assert {c["baseline"] for c in q["ap"]["vs baselines"]} == {"mean volume", "back-projection"}
    d = [c["methods"]["cascade/stage2_high [ap]"]["psnr3d"] - c["methods"]["back-projection [ap]"]["psnr3d"]
         for c in m["cases"]]
    gap = next(c for c in q["ap"]["vs baselines"] if c["baseline"] == "back-projection")
    assert gap["psnr3d_gap"]["mean"] == pytest.approx(np.mean(d))
    md = (out / "report.md").read_text()
    assert "| cascade [ap] | stage2_high |" in md and "| cascade [ap+lateral] | stage2_high |" in md
    assert "## Final stage vs the baselines (paired, per case) — from ap\n" in md
    cid = m["cases"][0]["case_id"]
    assert (out / f"case_{cid}_ap_slices.png").is_file() and (out / f"case_{cid}_slices.png").is_file()
    assert "cascade [ap] / stage2_high" in text
    # A regression baseline trained with view dropout is scored from the AP alone too.
    reg_vd = _dropout_checkpoint(tmp_path / "reg_vd", objective="regression", dataset=prep)
    rc = hvc(["evaluate", "--checkpoint", str(ck), "--data", prep, "--out", str(tmp_path / "rep2"), "--steps", "2",
              "--views", "ap", "--baseline-checkpoint", str(reg_vd), "--no-progress", "--montage-cases", "0",
              "--max-cases", "1"])
    assert rc == 0, capsys.readouterr().err
    m2 = json.loads((tmp_path / "rep2" / "metrics.json").read_text())
    assert {(r["method"], "+".join(r["views"])) for r in m2["summary"]} >= {("regression", "ap"), ("cascade", "ap")}
    rc = hvc(["evaluate", "--checkpoint", str(ck), "--data", prep, "--out", str(tmp_path / "rep3"), "--views", "pa"])
    assert rc == 2 and "not a non-empty subset" in capsys.readouterr().err

"""Inference pipeline and `hvc infer` on a tiny two-stage checkpoint (16³ → 32³, CPU)."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from hybrid_vit_cascade.cli import main as hvc
from hybrid_vit_cascade.config import config_from_dict
from hybrid_vit_cascade.inference.pipeline import Reconstructor
from hybrid_vit_cascade.inference.xray_io import write_drr_png
from hybrid_vit_cascade.models.cascade import Cascade
from hybrid_vit_cascade.files import write_json_atomic
from hybrid_vit_cascade.runtime.checkpoint import save_resolved_config, save_snapshot, stage_dir
from hybrid_vit_cascade.runtime.sampling import resolve_sampling

P, FOV, LI_MAX = 16, 256.0, 8.0
TINY = dict(voxel_dim=32, num_heads=2, vit_depth=1, patch_size=4, lift_channels=4, depth_bins=8,
            encoder_channels=8, refine_channels=8, prior_grid=4, unpatch_channels=4)


def make_checkpoint(root: Path, objective: str = "diffusion", trained=(1, 2), dataset: str | None = None,
                    diffusion: dict | None = None) -> Path:
    """A checkpoint directory with the trainer's layout holding (untrained) weights of `trained` stages."""
    cfg = config_from_dict({
        "stages": [dict(name="low", volume_size=[16] * 3, **TINY), dict(name="high", volume_size=[32] * 3, **TINY)],
        "data": {"geometry": {"det_pixels": P}, "fov_mm": FOV},
        "training": {"objective": objective},
        "diffusion": {"sample_steps": 2, **(diffusion or {})},
    })
    root.mkdir(parents=True, exist_ok=True)
    save_resolved_config(cfg, root)
    torch.manual_seed(0)
    cascade = Cascade(cfg)
    for k in trained:
        sd = cascade.stages[k - 1].state_dict()
        save_snapshot(stage_dir(root, k, cfg.stages[k - 1].name) / "best", sd, sd, None,
                      {"stage": k, "step": 0, "epoch": 0, "val": {}})
    write_json_atomic(root / "data_info.json", {
        "xray_scale": {"li_max": LI_MAX}, "render_size": 32, "dataset": dataset, "settings_hash": None,
        "splits": {"train": [], "val": [], "test": []}})
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _xray(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, P, P, generator=g) * 2 - 1


def test_reconstruct_chains_seeds_and_devices(ckpt):
    rec = Reconstructor(ckpt)
    moves = []
    for k, st in enumerate(rec.cascade.stages, 1):
        orig = st.to

        def spy(*a, _k=k, _orig=orig, **kw):
            moves.append((_k, str(a[0]) if a else str(kw.get("device"))))
            return _orig(*a, **kw)

        st.to = spy
    out = rec.reconstruct(_xray(), samples=3, seed=5, batch_size=2)
    # Each stage goes to the device only for its own turn and back to the CPU afterwards.
    assert moves == [(1, "cpu"), (1, "cpu"), (2, "cpu"), (2, "cpu")]
    assert [r.samples.shape for r in out] == [(1, 3, 1, 16, 16, 16), (1, 3, 1, 32, 32, 32)]
    assert all(r.samples.abs().max() <= 1 for r in out)
    assert out[-1].std.shape == (1, 1, 32, 32, 32) and out[-1].std.mean() > 0
    # Chains are independent of batching; a different seed gives different samples.
    again = rec.reconstruct(_xray(), samples=3, seed=5, batch_size=1)
    torch.testing.assert_close(again[-1].samples, out[-1].samples)
    other = rec.reconstruct(_xray(), samples=1, seed=6)
    assert not torch.allclose(other[-1].samples[:, 0], out[-1].samples[:, 0])
    # Stage 1 only.
    assert len(rec.reconstruct(_xray(), stop_at_stage=1)) == 1
    # The DRR score is the PSNR of the reprojection: perfect for the X-rays of the volume itself.
    vol = out[-1].mean
    drr = rec.project(vol)
    assert np.all(rec.drr_scores(vol, drr) == np.inf)
    assert rec.drr_scores(vol, _xray()[None]).shape == (1, 2)


def test_guidance_moves_reprojection_toward_xrays(ckpt):
    rec = Reconstructor(ckpt)
    # Target: the X-rays of a simple volume; guidance should make the untrained model fit them better.
    x0 = torch.full((1, 1, 16, 16, 16), -1.0)
    x0[..., 4:12, 4:12, 2:14] = 0.0
    target = rec.project(x0)[0]
    plain = rec.reconstruct(target, stop_at_stage=1, steps=3)
    guided = rec.reconstruct(target, stop_at_stage=1, steps=3, guidance_scale=1.0)
    s_plain = rec.drr_scores(plain[0].mean, target[None]).mean()
    s_guided = rec.drr_scores(guided[0].mean, target[None]).mean()
    assert s_guided > s_plain + 1.0, (s_plain, s_guided)


def test_samples_and_guidance_default_to_the_config(ckpt):
    rec = Reconstructor(ckpt)
    got = resolve_sampling(rec.cfg)
    assert (got.samples, got.guidance_scale) == (1, 0.0)
    rec.cfg.diffusion.samples = 2
    rec.cfg.diffusion.guidance_scale = 1.0
    x = _xray()
    auto = rec.reconstruct(x, stop_at_stage=1, steps=2, seed=4)
    explicit = rec.reconstruct(x, stop_at_stage=1, steps=2, seed=4, samples=2, guidance_scale=1.0)
    assert auto[0].samples.shape[1] == 2
    torch.testing.assert_close(auto[0].samples, explicit[0].samples)
    unguided = rec.reconstruct(x, stop_at_stage=1, steps=2, seed=4, guidance_scale=0.0)
    assert not torch.allclose(unguided[0].samples, auto[0].samples)


def test_guidance_spread_guides_each_chain_at_its_own_scale(ckpt):
    # Spread 1 over K = 3 chains: scales 0, 1, 2; each chain's noise is its own (seed, stage, case, i).
    rec = Reconstructor(ckpt)
    x = _xray()
    run = dict(stop_at_stage=1, steps=2, seed=5, samples=3)
    spread = rec.reconstruct(x, guidance_scale=1.0, guidance_spread=1.0, **run)[0].samples[0]
    for i, g in enumerate((0.0, 1.0, 2.0)):
        alone = rec.reconstruct(x, guidance_scale=g, **run)[0].samples[0]
        torch.testing.assert_close(spread[i], alone[i])
    assert not torch.allclose(spread[0], spread[2])


def test_cli_infer_takes_samples_and_guidance_from_the_config(tmp_path, capsys):
    ck = make_checkpoint(tmp_path / "ck", diffusion={"samples": 2, "guidance_scale": 1.0})
    li = (_xray().numpy() + 1) / 2 * LI_MAX
    np.save(tmp_path / "ap.npy", li[0])
    np.save(tmp_path / "lat.npy", li[1])
    out = tmp_path / "ct.nii.gz"
    rc = hvc(["infer", "--checkpoint", str(ck), "--xray", str(tmp_path / "ap.npy"), str(tmp_path / "lat.npy"),
              "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "2 chain(s)" in text and "DRR guidance 1.0" in text  # the config's K and guidance
    assert (tmp_path / "ct_std.nii.gz").is_file()  # K > 1 writes the uncertainty map
    rc = hvc(["infer", "--checkpoint", str(ck), "--xray", str(tmp_path / "ap.npy"), str(tmp_path / "lat.npy"),
              "--out", str(tmp_path / "one.nii.gz"), "--samples", "1", "--guidance-scale", "0"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "1 chain(s)" in text and "DRR guidance" not in text  # explicit flags win, 0 included
    assert not (tmp_path / "one_std.nii.gz").exists()
    rc = hvc(["infer", "--checkpoint", str(ck), "--xray", str(tmp_path / "ap.npy"), str(tmp_path / "lat.npy"),
              "--out", str(tmp_path / "spread.nii.gz"), "--guidance-spread", "0.5"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "DRR guidance 1.0 spread ±0.5" in text
    assert json.loads((tmp_path / "spread.json").read_text())["sampling"]["guidance_spread"] == 0.5


def test_cli_infer_refuses_a_spread_outside_0_1(tmp_path, capsys):
    ck = make_checkpoint(tmp_path / "ck", diffusion={"samples": 2, "guidance_scale": 1.0})
    np.save(tmp_path / "ap.npy", (_xray().numpy()[0] + 1) / 2 * LI_MAX)
    rc = hvc(["infer", "--checkpoint", str(ck), "--xray", str(tmp_path / "ap.npy"), "--views", "ap",
              "--out", str(tmp_path / "ct.nii.gz"), "--guidance-spread", "1.5"])
    err = capsys.readouterr().err
    assert rc != 0 and "guidance spread must lie in [0, 1]" in err and "got 1.5" in err


def test_untrained_stage_and_regression(tmp_path):
    part = make_checkpoint(tmp_path / "part", trained=(1,))
    rec = Reconstructor(part)
    assert len(rec.reconstruct(_xray())) == 1  # default: up to the last trained stage
    with pytest.raises(ValueError, match=r"stage\(s\) \[2\].*no trained weights"):
        rec.reconstruct(_xray(), stop_at_stage=2)
    reg = Reconstructor(make_checkpoint(tmp_path / "reg", objective="regression"))
    out = reg.reconstruct(_xray(), samples=2)
    torch.testing.assert_close(out[-1].samples[:, 0], out[-1].samples[:, 1])  # one deterministic forward
    reg.cfg.diffusion.samples, reg.cfg.diffusion.guidance_scale = 4, 1.0
    got = resolve_sampling(reg.cfg)
    assert (got.samples, got.guidance_scale) == (1, 0.0)  # the diffusion defaults never apply to regression
    with pytest.raises(ValueError, match="regression"):
        reg.reconstruct(_xray(), guidance_scale=1.0)


def test_cli_infer_from_xray_files(ckpt, tmp_path, capsys):
    x = _xray().numpy()
    li = (x + 1) / 2 * LI_MAX
    write_drr_png(tmp_path / "ap.png", li[0], view="ap")
    np.save(tmp_path / "lat.npy", li[1])
    out = tmp_path / "out" / "ct.nii.gz"
    rc = hvc(["infer", "--checkpoint", str(ckpt), "--xray", str(tmp_path / "lat.npy"), str(tmp_path / "ap.png"),
              "--views", "lateral", "ap", "--out", str(out), "--samples", "2", "--all-stages", "--png"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "DRR consistency, stage 2" in text and "ap " in text and "lateral " in text
    img = nib.load(str(out))
    assert img.shape == (32, 32, 32)
    np.testing.assert_allclose(img.header.get_zooms(), (FOV / 32,) * 3)
    hu = np.asarray(img.dataobj)
    assert -1024 - 1e-3 <= hu.min() and hu.max() <= 1476 + 1e-3
    for name in ("ct_std.nii.gz", "ct_stage1_low.nii.gz", "ct_stage1_low_std.nii.gz", "ct.png", "ct_xray.png"):
        assert (out.parent / name).is_file(), name
    assert nib.load(str(out.parent / "ct_stage1_low.nii.gz")).shape == (16, 16, 16)
    std = np.asarray(nib.load(str(out.parent / "ct_std.nii.gz")).dataobj)
    assert std.min() >= 0 and std.max() > 0


def test_cli_infer_from_ct(ckpt, tmp_path, capsys):
    from hybrid_vit_cascade.data.phantoms import write_phantom

    ct = tmp_path / "phantom.nii.gz"
    write_phantom(ct, seed=1, size=24)
    out = tmp_path / "rec.nii.gz"
    rc = hvc(["infer", "--checkpoint", str(ckpt), "--ct", str(ct), "--out", str(out), "--stop-at-stage", "1"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "vs the CT: PSNR-3D" in text
    assert nib.load(str(out)).shape == (16, 16, 16)
    assert nib.load(str(tmp_path / "rec_reference.nii.gz")).shape == (16, 16, 16)


def test_cli_infer_errors(ckpt, tmp_path, capsys):
    np.save(tmp_path / "one.npy", np.ones((P, P)))
    rc = hvc(["infer", "--checkpoint", str(ckpt), "--xray", str(tmp_path / "one.npy"), "--out", str(tmp_path / "o.nii.gz")])
    err = capsys.readouterr().err
    assert rc == 2 and "name the view of each with --views" in err and "one.npy" in err
    rc = hvc(["infer", "--checkpoint", str(tmp_path / "nope"), "--xray", "a.png", "--out", str(tmp_path / "o.nii.gz")])
    assert rc == 2 and "nope" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ evaluation


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from hybrid_vit_cascade.config import DataConfig
    from hybrid_vit_cascade.data.phantoms import write_phantom
    from hybrid_vit_cascade.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("data")
    for i in range(5):
        write_phantom(root / "cts" / f"ph{i}.nii.gz", seed=i, size=24)
    dc = DataConfig(fov_mm=FOV, geometry={"det_pixels": P}, split=(0.6, 0.2, 0.2))
    prepare_dataset([root / "cts"], root / "prep", [16, 32], None, dc, progress=False)
    return root


def test_backprojection_baseline_recovers_water(tmp_path):
    """A water cube: uniform prior, li = μ_w · chord, so back-projection returns ≈ 0 HU inside."""
    from hybrid_vit_cascade.inference.baselines import BackprojectionBaseline

    rec = Reconstructor(make_checkpoint(tmp_path / "c"))
    water = torch.full((1, 1, 16, 16, 16), (0 + 1024) / 2500 * 2 - 1)  # 0 HU in the model range
    bp = BackprojectionBaseline(rec, 16, volumes=[water])
    out = rec.to_hu(bp(rec.project(water))[0, 0])
    centre = out[4:12, 4:12, 4:12]
    assert np.abs(centre).max() < 30, np.abs(centre).max()  # cone-beam obliquity: chord ≤ 1.3% longer


def test_cli_evaluate_with_baselines(dataset, tmp_path, capsys):
    prep = str(dataset / "prep")
    ck = make_checkpoint(tmp_path / "ck", dataset=prep)
    reg = make_checkpoint(tmp_path / "reg", objective="regression", dataset=prep)
    out = tmp_path / "report"
    rc = hvc(["evaluate", "--checkpoint", str(ck), "--data", prep, "--split", "test", "--out", str(out),
              "--samples", "2", "--baseline-checkpoint", str(reg), "--no-progress", "--montage-cases", "1"])
    text = capsys.readouterr().out
    assert rc == 0, text
    m = json.loads((out / "metrics.json").read_text())
    methods = {(r["method"], r["stage"], r["res"]) for r in m["summary"]}
    assert methods == {("cascade", "stage1_low", 16), ("cascade", "stage2_high", 32), ("mean volume", None, 32),
                       ("back-projection", None, 32), ("regression", None, 32)}
    case = m["cases"][0]["methods"]
    for key in ("psnr3d", "ssim3d", "mae_hu", "rmse_hu", "psnr2d_mean", "drr_psnr", "drr_psnr_lateral",
                "x2ct_psnr_3d", "x2ct_ssim_avg"):
        assert isinstance(case["cascade/stage2_high"][key], float), key
    assert case["cascade/stage2_high"]["std_hu_mean"] > 0
    # Summary = mean over cases of the per-case values.
    row = next(r for r in m["summary"] if r["method"] == "back-projection")
    vals = [c["methods"]["back-projection"]["psnr3d"] for c in m["cases"]]
    assert row["summary"]["psnr3d"]["mean"] == pytest.approx(np.mean(vals))
    md = (out / "report.md").read_text()
    assert "| back-projection [ap+lateral] |" in md and "X2CT-GAN protocol" in md
    # Paired gaps of the final stage: recomputed from the per-case values.
    [q] = m["quality"]  # one paired comparison per view set: here every view
    assert q["final stage"] == "cascade/stage2_high" and q["views"] == ["ap", "lateral"]
    gaps = {c["baseline"]: c for c in q["vs baselines"]}
    assert set(gaps) == {"mean volume", "back-projection", "regression"}
    d = [c["methods"]["cascade/stage2_high"]["psnr3d"] - c["methods"]["regression"]["psnr3d"] for c in m["cases"]]
    assert gaps["regression"]["psnr3d_gap"]["mean"] == pytest.approx(np.mean(d))
    assert gaps["regression"]["wins"] == sum(x > 0 for x in d)
    assert gaps["regression"]["psnr3d_gap_median"] == pytest.approx(np.median(d))
    assert gaps["regression"]["meets_bar"] == (np.mean(d) >= 0)
    assert gaps["back-projection"]["required_gap_db"] == 3.0 and "required_gap_db" not in gaps["mean volume"]
    assert "## Final stage vs the baselines" in md and "| regression |" in md and "DRR consistency" in md
    cid = m["cases"][0]["case_id"]
    for f in ("metrics_bar.png", f"case_{cid}_slices.png", f"case_{cid}_xray.png"):
        assert (out / f).is_file(), f
    assert "PSNR-3D" in text and "report.md" in text


def test_cli_evaluate_raw_ct_folder(dataset, tmp_path, capsys):
    ck = make_checkpoint(tmp_path / "ck", trained=(1,), dataset=str(dataset / "prep"))
    out = tmp_path / "rep"
    rc = hvc(["evaluate", "--checkpoint", str(ck), "--data", str(dataset / "cts"), "--out", str(out),
              "--max-cases", "2", "--no-progress", "--montage-cases", "0"])
    assert rc == 0, capsys.readouterr()
    m = json.loads((out / "metrics.json").read_text())
    assert m["info"]["cases"] == 2 and (out / "prepared" / "manifest.json").is_file()
    assert {r["method"] for r in m["summary"]} == {"cascade", "mean volume", "back-projection"}


@pytest.mark.slow
def test_inference_md_worked_example(tmp_path):
    """INFERENCE.md's worked example runs as written (with STEPS=2): train → drr → infer → evaluate."""
    import os
    import re
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    text = (repo / "INFERENCE.md").read_text()
    script = re.search(r"<!-- worked-example -->\s*```bash\n(.*?)```", text, re.S).group(1)
    work = tmp_path / "w"
    env = dict(os.environ, STEPS="2", W=str(work), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", "-c", script], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for f in ("recon/ct.nii.gz", "recon/ct_std.nii.gz", "recon/ct_stage1_s16.nii.gz", "recon/ct.png",
              "recon/from_ct.nii.gz", "report/metrics.json", "report/report.md", "report/metrics_bar.png"):
        assert (work / f).is_file(), f
    assert nib.load(str(work / "recon/ct.nii.gz")).header.get_zooms() == pytest.approx((11.25,) * 3)
    assert "DRR consistency, stage 2" in proc.stdout and "vs the CT: PSNR-3D" in proc.stdout
    m = json.loads((work / "report/metrics.json").read_text())
    assert {r["method"] for r in m["summary"]} >= {"cascade", "mean volume", "back-projection"}

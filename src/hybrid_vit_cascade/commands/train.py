"""`hvc train` (= `python training/train_progressive.py`): progressive training of the cascade."""
from __future__ import annotations

import argparse
import os
import sys
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config JSON (seed format: stages + training [+ data, diffusion]); "
                   "optional with --resume_from (its config.json is used)")
    p.add_argument("--checkpoint_dir", "--checkpoint-dir", required=True, help="where checkpoints, logs and caches go")
    p.add_argument("--resume_from", "--resume-from", metavar="PATH",
                   help="continue exactly from a checkpoint dir, stage dir, stage*/last folder or its state.pt")
    p.add_argument("--stage", type=int, metavar="K",
                   help="train only stage K (1-based); stages < K must be trained in checkpoint_dir or --resume_from")
    p.add_argument("--max-steps", "--max_steps", dest="max_steps", type=int, metavar="N",
                   help="cap optimizer steps per stage (overrides training.max_steps_per_stage; the lr schedule spans N)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="auto = what Accelerate picks (GPU if present); multi-GPU: `accelerate launch`")
    p.add_argument("--overwrite", action="store_true", help="retrain stages that already have checkpoints in checkpoint_dir")
    p.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (honours WANDB_MODE=offline)")
    p.add_argument("--wandb_project", "--wandb-project", default="hybrid-vit-cascade", help="W&B project name")


def run(args: argparse.Namespace) -> int:
    from hybrid_vit_cascade.config import load_config
    from hybrid_vit_cascade.training.progressive import train_progressive
    from hybrid_vit_cascade.training.trainer import TrainingDiverged

    # Bad configs, checkpoints, datasets and paths reach cli.main, which prints them on one line.
    if args.max_steps is not None and args.max_steps <= 0:
        print(f"hvc train: error: --max-steps must be positive, got {args.max_steps}", file=sys.stderr)
        return 2
    cfg = load_config(args.config) if args.config else None
    if cfg is None and not args.resume_from:
        print("hvc train: error: --config is required (unless --resume_from is given)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        out = train_progressive(
            cfg, args.checkpoint_dir, only_stage=args.stage, resume_from=args.resume_from,
            use_wandb=args.wandb, wandb_project=args.wandb_project, device=args.device,
            max_steps=args.max_steps, overwrite=args.overwrite,
        )
    except TrainingDiverged as err:  # exit 1: the run itself failed (the input was fine); last good checkpoint kept
        if getattr(args, "debug", False):
            raise
        print(f"hvc train: error: {err}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun / accelerate launch only the main process reports
    for s in out["stages"]:
        val = ", ".join(f"{k} {v:.4g}" for k, v in s["val"].items())
        print(f"stage {s['stage']} ({s['name']}): {s['steps']} steps in {s['time_s']:.0f} s"
              f"{' (stopped early)' if not s['completed'] else ''}; val: {val or 'n/a'}")
    print(f"done in {time.perf_counter() - t0:.0f} s; checkpoints in {args.checkpoint_dir}")
    return 0

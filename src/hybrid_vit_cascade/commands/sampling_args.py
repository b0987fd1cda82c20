"""The sampling flags `hvc infer` and `hvc evaluate` share, declared once so they read the same.

Flags left unset fall back to the checkpoint's `diffusion` config (sample_steps, sampler, samples,
guidance_scale, guidance_spread), so a model reconstructs the way its config says unless the user overrides it; the
values are resolved and checked in one place, runtime/sampling.py `resolve_sampling`.
"""
from __future__ import annotations

import argparse


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """Declare --steps/--sampler/--samples/--guidance-scale/--guidance-spread/--seed/--device/--which on `p`."""
    p.add_argument("--steps", type=int, help="sampler steps (default: the config's diffusion.sample_steps)")
    p.add_argument("--sampler", choices=["ddim", "dpmpp"], help="default: the config's diffusion.sampler")
    p.add_argument("--samples", type=int,
                   help="K samples per case; K > 1: their mean is the reconstruction (scored) and the voxel-wise "
                        "std an uncertainty map (default: the config's diffusion.samples)")
    p.add_argument("--guidance-scale", type=float,
                   help="DRR-consistency guidance: 0 = off, 1 = step each clean estimate to fit the X-rays "
                        "(default: the config's diffusion.guidance_scale)")
    p.add_argument("--guidance-spread", type=float, metavar="S",
                   help="spread the K chains' guidance scales evenly over scale·[1 − S, 1 + S], S in [0, 1]: a "
                        "better-calibrated uncertainty map for a slightly less sharp mean (default: the config's "
                        "diffusion.guidance_spread)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--which", choices=["best", "last"], default="best", help="checkpoint snapshot")

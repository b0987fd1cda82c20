"""`hvc prepare`: CTs (NIfTI / DICOM series / MHA / NRRD) → a training dataset of cubes and DRRs."""
from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", required=True, metavar="DIR_OR_FILE",
                   help="CT files and/or folders (searched recursively; DICOM series folders as in LIDC-IDRI)")
    p.add_argument("--out", required=True, help="dataset folder (manifest.json + cases/*.npz); re-runs are incremental")
    p.add_argument("--size", type=int, nargs="+",
                   help="cube resolutions to store (default: the --config stages, else 64 128)")
    p.add_argument("--views", nargs="+", choices=["ap", "pa", "lateral"], help="X-ray views (default: config, ap lateral)")
    p.add_argument("--config", help="JSON config; its `data` section gives fov, window, geometry, split")
    p.add_argument("--fov-mm", type=float, help="physical edge of the prepared cube, mm")
    p.add_argument("--det-pixels", type=int, help="X-ray image size (detector pixels per edge)")
    p.add_argument("--seed", type=int, default=0, help="salt of the patient-hash split")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from hybrid_vit_cascade.config import DataConfig, load_config
    from hybrid_vit_cascade.data.prepare import prepare_dataset
    from hybrid_vit_cascade.files import check_writable

    # A bad config or --out is an error that cli.main prints on one line.
    if args.config:
        cfg = load_config(args.config)
        data = cfg.data.model_dump(mode="json")
        sizes = args.size or [s.resolution for s in cfg.stages]
    else:
        data = DataConfig().model_dump(mode="json")
        sizes = args.size or [64, 128]
    if args.fov_mm is not None:
        data["fov_mm"] = args.fov_mm
    if args.det_pixels is not None:
        data["geometry"]["det_pixels"] = args.det_pixels
    if args.views:
        data["views"] = args.views
    data_cfg = DataConfig.model_validate(data)
    if any(s <= 0 for s in sizes):
        print(f"hvc prepare: error: --size must be positive, got {sizes}", file=sys.stderr)
        return 2
    check_writable(args.out, "--out folder")

    manifest = prepare_dataset(args.input, args.out, sizes, data_cfg.views, data_cfg, seed=args.seed,
                               progress=not args.no_progress)
    run_ = manifest["last_run"]
    counts = {s: sum(c["split"] == s for c in manifest["cases"]) for s in ("train", "val", "test")}
    print(f"{args.out}: prepared {len(run_['prepared'])}, unchanged {len(run_['reused'])}, "
          f"skipped {len(run_['skipped'])}; {len(manifest['cases'])} case(s) "
          f"(train {counts['train']}, val {counts['val']}, test {counts['test']}), sizes {manifest['sizes']}, "
          f"views {manifest['views']}, li_max {manifest['xray_scale']['li_max']:.3f}")
    for s in run_["skipped"]:
        print(f"  skipped {s['source']}: {s['reason']}", file=sys.stderr)
    if not run_["prepared"] and not run_["reused"]:
        print("hvc prepare: error: no CT could be prepared from the given inputs", file=sys.stderr)
        return 1
    return 0

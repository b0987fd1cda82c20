"""`hvc drr`: render X-ray DRRs of a CT exactly as `hvc prepare` renders training X-rays."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


DEFAULT_SIZE = 128  # cube edge (voxels) without a checkpoint or config to say how training rendered


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ct", help="CT: NIfTI file, DICOM series folder, .mha or .nrrd")
    p.add_argument("--view", action="append", choices=["ap", "pa", "lateral"],
                   help="view to render (repeat for several; default: the config's views, ap lateral)")
    p.add_argument("--out", required=True, help="output folder")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="training checkpoint folder: render exactly as its training X-rays were "
                                          "(its config's data section and render size give the defaults below)")
    src.add_argument("--config", help="JSON config; its `data` section gives the defaults below")
    p.add_argument("--geometry", choices=["cone", "parallel"], help="beam geometry")
    p.add_argument("--sid", type=float, help="source–isocentre distance, mm")
    p.add_argument("--sdd", type=float, help="source–detector distance, mm")
    p.add_argument("--det-pixels", type=int, help="detector pixels per edge")
    p.add_argument("--det-spacing", type=float, help="detector pixel size, mm (default: FOV magnified + margin)")
    p.add_argument("--size", type=int, help="resolution of the canonical cube the DRR is cast through (default: the "
                                             f"checkpoint's render size, else the config's largest stage, else {DEFAULT_SIZE})")
    p.add_argument("--fov-mm", type=float, help="edge of the canonical cube, mm")


def render_bytes(size: int, det_pixels: int, n_views: int) -> int:
    """Peak memory of one render, measured: ~4 float32 copies of the cube plus each view's ray grids."""
    return 16 * size**3 + 24 * n_views * size * det_pixels**2


def _memory_bytes() -> int:
    """This machine's physical memory (16 GiB where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 16 << 30


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from hybrid_vit_cascade.config import ConfigError, DataConfig, load_config
    from hybrid_vit_cascade.data.io import CTReadError, file_stem, read_ct, write_nifti
    from hybrid_vit_cascade.files import atomic_write, check_writable, make_dirs, write_json_atomic
    from hybrid_vit_cascade.data.render import render_settings, render_xrays
    from hybrid_vit_cascade.geometry.projector import Projector
    from hybrid_vit_cascade.runtime.checkpoint import CheckpointError, read_config, read_data_info
    from hybrid_vit_cascade.inference.xray_io import write_drr_png

    try:
        size = args.size
        if args.checkpoint:
            data = read_config(args.checkpoint).data.model_dump(mode="json")
            size = size or int(read_data_info(args.checkpoint)["render_size"])
        elif args.config:
            cfg = load_config(args.config)
            data = cfg.data.model_dump(mode="json")
            size = size or max(s.resolution for s in cfg.stages)  # `hvc prepare` renders from the largest stage
        else:
            data = DataConfig().model_dump(mode="json")
            size = size or DEFAULT_SIZE
        geom = data["geometry"]
        for key, val in (("kind", args.geometry), ("sid", args.sid), ("sdd", args.sdd),
                         ("det_pixels", args.det_pixels), ("det_spacing", args.det_spacing)):
            if val is not None:
                geom[key] = val
        if args.fov_mm is not None:
            data["fov_mm"] = args.fov_mm
        if args.view:
            data["views"] = list(dict.fromkeys(args.view))
        data_cfg = DataConfig.model_validate(data)
        if size < 2:
            raise ValueError(f"--size must be ≥ 2, got {size}")
        need, have = render_bytes(size, data_cfg.geometry.det_pixels, len(data_cfg.views)), _memory_bytes()
        if need > have:  # refuse up front rather than die allocating (--size 4000 would need ~950 GiB)
            raise ValueError(f"--size {size} with {data_cfg.geometry.det_pixels}² detector pixels needs ~{need / 2**30:.0f} GiB "
                             f"of memory, more than this machine's {have / 2**30:.0f} GiB; lower --size or --det-pixels")
        check_writable(args.out, "--out folder")  # an unusable --out fails before the CT is read and rendered
        ct = read_ct(args.ct)
    except (ConfigError, CheckpointError, ValueError, CTReadError) as err:
        print(f"hvc drr: error: {err}", file=sys.stderr)
        return 2

    views = list(data_cfg.views)
    projector = Projector(data_cfg.geometry, views)
    li = render_xrays(ct, data_cfg, size, projector=projector)[0].numpy()  # (V, P, P)
    settings = render_settings(data_cfg, size)
    out = Path(args.out)
    make_dirs(out)
    stem = file_stem(args.ct) or "ct"
    det_spacing = projector.det_spacing(data_cfg.fov_mm)
    atomic_write(out / f"{stem}_li.npy", lambda f: np.save(f, li.astype(np.float32)))
    written = [out / f"{stem}_li.npy"]
    for v, name in enumerate(views):
        # 16-bit PNG, scaled to its own max (display), with the scale in a text chunk so
        # `hvc infer --xray` recovers the line integrals.
        write_drr_png(out / f"{stem}_{name}.png", li[v], view=name, render=settings)
        # NIfTI: x = image column, y = image row flipped so +y points superior (viewers show it upright).
        img = li[v].T[:, ::-1, None]
        write_nifti(out / f"{stem}_{name}_li.nii.gz", img, np.diag([det_spacing, det_spacing, 1.0, 1.0]))
        written += [out / f"{stem}_{name}.png", out / f"{stem}_{name}_li.nii.gz"]
    info = {"ct": str(args.ct), **settings, "det_spacing_mm": det_spacing,
            "li_max_per_view": [float(x.max()) for x in li]}
    write_json_atomic(out / f"{stem}_drr.json", info)
    for w in written:
        print(w)
    return 0

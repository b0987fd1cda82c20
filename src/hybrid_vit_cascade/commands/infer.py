"""`hvc infer`: reconstruct a CT (NIfTI, HU) from one or two X-rays, or from the DRRs of a CT (--ct).

Any non-empty subset of the checkpoint's views will do (one film: `--xray ap.png --views ap`); a
checkpoint trained with training.view_dropout reconstructs from it as trained, a biplanar-only one
warns that its single-view output is untrained.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from hybrid_vit_cascade.commands.sampling_args import add_sampling_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="training checkpoint directory (config.json, data_info.json, stage*/)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--xray", action="append", nargs="+", metavar="FILE",
                     help="X-ray image(s): PNG/JPEG/TIFF (8/16-bit), DICOM CR/DX, NIfTI or .npy line integrals; "
                          "one per view, any non-empty subset of the checkpoint's views (repeat the flag or list "
                          "several)")
    src.add_argument("--ct", metavar="CT", help="render the X-rays from this CT (NIfTI/DICOM folder/MHA/NRRD) first")
    p.add_argument("--views", nargs="+", choices=["ap", "pa", "lateral"],
                   help="view of each --xray file, in order (default: the views recorded in hvc PNGs, else the "
                        "checkpoint's views in its order); with --ct: the views to reconstruct from (default: all)")
    p.add_argument("--out", required=True, help="output NIfTI (.nii.gz), HU; siblings get _std / _std_calibrated / _stage<k> suffixes")
    add_sampling_arguments(p)
    p.add_argument("--stop-at-stage", type=int, help="last stage to run (1-based; default: the last trained stage)")
    p.add_argument("--all-stages", action="store_true", help="also write the output of every stage")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--batch-size", type=int, default=4, help="sample chains run together on the device")
    p.add_argument("--no-film-relevel", action="store_true",
                   help="films / display images: reconstruct once from the film as read, without re-levelling it to "
                        "a first reconstruction's DRRs (default: re-level, then reconstruct again)")
    p.add_argument("--png", action="store_true", help="also write <out>.png (slices), <out>_xray.png (X-ray vs DRR) "
                                                       "and <out>_depth.png (depth distributions along the rays)")


def run(args: argparse.Namespace) -> int:
    """Errors (bad X-rays, checkpoint, output path) reach cli.main, which prints them on one line."""
    import torch

    from hybrid_vit_cascade.data.io import file_stem
    from hybrid_vit_cascade.files import check_writable
    from hybrid_vit_cascade.inference import report
    from hybrid_vit_cascade.inference.nifti_out import write_cube_nifti
    from hybrid_vit_cascade.inference.pipeline import Reconstructor, xrays_from_ct
    from hybrid_vit_cascade.data.io import sidecar_path
    from hybrid_vit_cascade.files import write_json_atomic
    from hybrid_vit_cascade.data.radiograph_fit import describe, model_field
    from hybrid_vit_cascade.inference.xray_io import load_xrays
    from hybrid_vit_cascade.metrics import volume_metrics
    from hybrid_vit_cascade.inference.film_relevel import relevel_to_estimate
    from hybrid_vit_cascade.inference.calibration_eval import stored_scale
    from hybrid_vit_cascade.runtime.sampling import FILM_RELEVEL, resolve_sampling, with_guidance_spread

    if not args.out.endswith((".nii", ".nii.gz")):
        raise ValueError(f"--out must end in .nii or .nii.gz, got {args.out}")
    if Path(args.out).is_dir():
        raise IsADirectoryError(f"--out {args.out} is a folder; give a file name ending in .nii.gz")
    check_writable(Path(args.out).parent, "--out folder")  # before minutes of sampling, not after
    rec = Reconstructor(args.checkpoint, which=args.which, ema=not args.no_ema, device=args.device)
    rec.cfg = with_guidance_spread(rec.cfg, args.guidance_spread)
    print(f"checkpoint {args.checkpoint}: stages {[s.name for s in rec.cfg.stages]}, trained {rec.trained_stages}, "
          f"views {rec.views}, objective {rec.objective.kind}, device {rec.device}")
    reference_hu = None
    inputs: list[dict] = []  # per X-ray file: how it was read (the output's JSON sidecar)
    if args.ct:
        present = rec.check_views(args.views)  # before rendering: a bad --views fails fast
        xray, reference_hu = xrays_from_ct(rec, args.ct)
        print(f"rendered {', '.join(rec.views)} DRRs of {args.ct}")
    else:
        paths = [f for group in args.xray for f in group]
        xray, raws = load_xrays(paths, rec.views, rec.li_max, rec.det_pixels, views=args.views,
                                field=model_field(rec))
        present = [r.view for r in raws]
        for r in raws:
            print(f"  {r.view}: {r.path} — {r.note}")
            if r.info is not None:  # a clinical DICOM film: what its header said, what was assumed, the crop
                print(f"    {describe(r.info)}")
                for n in r.info["notes"]:
                    print(f"    note: {n}")
                for w in r.info["warnings"]:
                    print(f"warning: {r.path}: {w}", file=sys.stderr)
            inputs.append({"view": r.view, "path": r.path, "read_as": r.note,
                           **({"inferred": r.info} if r.info is not None else {})})
            if r.render is not None:  # an `hvc drr` PNG: rendered like the training DRRs? (its view: load_xrays)
                rec.check_source({**r.render, "views": rec.views}, f"X-ray {r.path}")
    if len(present) < len(rec.views):
        print(f"reconstructing from {'+'.join(present)} only (checkpoint views: {'+'.join(rec.views)})")
    placement = None  # films: the field their crops show, from the point their central rays meet (RAS+ mm)
    crops = {r.view: r.info for r in ([] if args.ct else raws) if r.info is not None and "crop" in r.info}
    if crops:
        from hybrid_vit_cascade.data.radiograph_fit import film_placement_mm

        placement = film_placement_mm(crops, rec.cfg.data.geometry)
        print("placed: the cube's centre at (" + ", ".join(f"{v:+.1f}" for v in placement) + ") mm RAS+ from the "
              "films' central ray at the isocentre (where the crops were centred)")
    display = not args.ct and any(r.kind != "line_integral" for r in raws)  # a film: no DRR guidance by default
    settings = resolve_sampling(rec.cfg, args.steps, args.sampler, args.samples, args.guidance_scale,
                                display_input=display)
    if display and args.guidance_scale is None and settings.guidance_scale != resolve_sampling(rec.cfg).guidance_scale:
        print(f"DRR guidance {settings.guidance_scale:g} (not the config's): the X-rays are display intensities, "
              "not line integrals (--guidance-scale overrides)")
    if settings.samples > 1 and not rec.is_diffusion:
        print("note: a regression checkpoint is deterministic; all samples are identical (std = 0)")
    sampling = dict(steps=settings.steps, sampler=settings.sampler, samples=settings.samples,
                    stop_at_stage=args.stop_at_stage, seed=args.seed, guidance_scale=settings.guidance_scale,
                    batch_size=args.batch_size, log=lambda s: print("  " + s))
    relevel = []
    if display and FILM_RELEVEL and not args.no_film_relevel:  # inference/film_relevel.py
        print("first pass: the films are re-levelled to this reconstruction's DRRs, then reconstructed again "
              "(--no-film-relevel: once, as read)")
        xray, relevel = relevel_to_estimate(rec, xray, present, **sampling)  # its first pass: at most 4 chains
        for n in relevel:
            print(f"  re-levelled {n}")
    results = rec.reconstruct(xray, views=present, **sampling)
    stem = Path(args.out).with_name(file_stem(args.out))  # siblings: <stem>_std.nii.gz, <stem>.png, ...
    written, std_scale = [], None
    for res in results:
        final = res is results[-1]
        if not (final or args.all_stages):
            continue
        base = Path(args.out) if final else stem.with_name(f"{stem.name}_stage{res.index}_{res.name}.nii.gz")
        desc = f"hvc {res.name} {res.res}^3 mean of {res.samples.shape[1]} HU"
        write_cube_nifti(base, rec.to_hu(res.mean[0, 0]), rec.fov_mm, desc, rec.window, placement)
        written.append(base)
        std_hu = rec.std_to_hu(res.std[0, 0]) if res.std is not None else None
        if std_hu is not None:
            sbase = base.with_name(file_stem(base) + "_std.nii.gz")
            write_cube_nifti(sbase, std_hu, rec.fov_mm, f"hvc {res.name} voxel std HU",
                             centre_mm=placement)
            written.append(sbase)
        if final and std_hu is not None and res.index == rec.stages_to_run(None):
            fit, line = stored_scale(rec, settings, present, display)  # the fit holds for the last stage only
            if line.startswith("warning:"):
                print(line, file=sys.stderr)
            else:
                print(("uncertainty: " if fit else "note: ") + line)
            if fit:
                cbase = base.with_name(file_stem(base) + "_std_calibrated.nii.gz")
                write_cube_nifti(cbase, fit["scale"] * std_hu, rec.fov_mm,
                                 f"hvc {res.name} std x {fit['scale']:.3f} (val-fitted) HU", centre_mm=placement)
                written.append(cbase)
                std_scale = {"scale": fit["scale"], "fitted_on": "val", "cases": fit.get("cases"),
                             "file": cbase.name, "note": line}
        scores = rec.drr_scores(res.mean, xray[None], present)[0]
        print(f"DRR consistency, stage {res.index} ({res.name}, {res.res}³): "
              + ", ".join(f"{v} {s:.2f} dB" for v, s in zip(present, scores))
              + f" (mean {np.mean(scores):.2f} dB)")
        if reference_hu is not None:
            from hybrid_vit_cascade.data.preprocessing import resize_cube

            ref = resize_cube(reference_hu, res.res)
            m = volume_metrics(rec.to_hu(res.mean[0, 0]), ref, rec.window, x2ct=False)
            print(f"  vs the CT: PSNR-3D {m['psnr3d']:.2f} dB, SSIM-3D {m['ssim3d']:.4f}, "
                  f"MAE {m['mae_hu']:.1f} HU, RMSE {m['rmse_hu']:.1f} HU")
    if reference_hu is not None:
        from hybrid_vit_cascade.data.preprocessing import resize_cube

        ref_path = stem.with_name(stem.name + "_reference.nii.gz")
        write_cube_nifti(ref_path, resize_cube(reference_hu, results[-1].res), rec.fov_mm, "hvc reference CT HU",
                         rec.window)
        written.append(ref_path)
    if args.png:
        last = results[-1]
        truth = None
        if reference_hu is not None:
            from hybrid_vit_cascade.data.preprocessing import resize_cube

            truth = resize_cube(reference_hu, last.res)
        std = rec.std_to_hu(last.std[0, 0]) if last.std is not None else None
        label = "uncertainty: std (HU)"
        if std is not None and std_scale is not None:  # the map a user should read: the calibrated one
            std, label = std * std_scale["scale"], f"std × {std_scale['scale']:.2f} (val-fitted, HU)"
        written.append(report.case_montage(stem.with_name(stem.name + ".png"), truth, rec.to_hu(last.mean[0, 0]),
                                           std, rec.window, title=f"{last.name} {last.res}³", std_label=label))
        idx = rec.view_indices(present)
        with torch.no_grad():
            drr = rec.project(last.mean)[0].numpy()
        scores = rec.drr_scores(last.mean, xray[None], present)[0]
        written.append(report.xray_montage(stem.with_name(stem.name + "_xray.png"), xray.numpy()[idx], drr[idx],
                                           present, list(scores)))
        from hybrid_vit_cascade.inference.depth_view import write_depth_figure

        depth_png = write_depth_figure(stem.with_name(stem.name + "_depth.png"), rec, xray,
                                       rec.data_info.get("dataset"), views=present)  # None: no depth lifting
        written += [depth_png] if depth_png else []
    if inputs:  # how each film was read, and how the reconstruction was sampled from them
        from dataclasses import asdict

        frame = {} if placement is None else {
            "placement_mm": [round(float(v), 1) for v in placement],
            "frame": "RAS+ mm; origin: the films' central ray at the isocentre; the volume is the field the crops show"}
        written.append(write_json_atomic(sidecar_path(args.out), {"inputs": inputs, "sampling": asdict(settings),
                                                                  "relevel": relevel, "std_scale": std_scale, **frame}))
    for w in written:
        print(f"wrote {w}")
    return 0

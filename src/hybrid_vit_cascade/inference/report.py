"""Evaluation outputs: slice montages, X-ray vs DRR panels, a metric bar chart, report.md, metrics.json.

Slices are shown in radiological display orientation (`slices.display_slice`).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hybrid_vit_cascade.files import atomic_write, write_json_atomic, write_text_atomic
from hybrid_vit_cascade.slices import display_slice

PLANES = ("axial", "coronal", "sagittal")  # montage columns, left to right
# Columns of the report table: (key, header, format).
MAIN_METRICS = [
    ("psnr3d", "PSNR-3D (dB)", "{:.2f}"),
    ("ssim3d", "SSIM-3D", "{:.4f}"),
    ("mae_hu", "MAE (HU)", "{:.1f}"),
    ("rmse_hu", "RMSE (HU)", "{:.1f}"),
    ("psnr2d_mean", "PSNR-2D (dB)", "{:.2f}"),
    ("drr_psnr", "DRR PSNR (dB)", "{:.2f}"),
]
X2CT_METRICS = [
    ("x2ct_psnr_3d", "X2CT PSNR-3D", "{:.2f}"),
    ("x2ct_psnr_avg", "X2CT PSNR-2D avg", "{:.2f}"),
    ("x2ct_ssim_avg", "X2CT SSIM avg", "{:.4f}"),
    ("x2ct_mae", "X2CT MAE", "{:.1f}"),
]


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


ERROR_MAX_HU = 500.0  # top of the |error| colour scale: a few hundred HU already means a wrong tissue


def case_montage(path: str | os.PathLike, truth_hu: np.ndarray | None, pred_hu: np.ndarray,
                 std_hu: np.ndarray | None, window: tuple[float, float], title: str = "",
                 std_label: str = "uncertainty: std (HU)") -> Path:
    """Axial/coronal/sagittal mid-slices of truth, prediction, |error| and uncertainty (HU)."""
    plt = _plt()
    rows: list[tuple[str, np.ndarray, dict]] = []
    grey = dict(cmap="gray", vmin=window[0], vmax=window[1])
    if truth_hu is not None:
        rows.append(("truth", truth_hu, grey))
    rows.append(("prediction", pred_hu, grey))
    if truth_hu is not None:
        lo, hi = window
        err = np.abs(np.clip(pred_hu, lo, hi) - np.clip(truth_hu, lo, hi))
        rows.append(("|error| (HU)", err, dict(cmap="magma", vmin=0, vmax=ERROR_MAX_HU)))
    if std_hu is not None:
        rows.append((std_label, std_hu, dict(cmap="viridis", vmin=0,
                                                           vmax=max(float(np.percentile(std_hu, 99.5)), 1.0))))
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    for r, (label, vol, kw) in enumerate(rows):
        for c, plane in enumerate(PLANES):
            ax = axes[r, c]
            im = ax.imshow(display_slice(vol, plane), interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(plane)
            if c == 0:
                ax.set_ylabel(label)
        fig.colorbar(im, ax=axes[r, :].tolist(), shrink=0.8)
    # Orientation letters on the first row (image left side).
    for c, left in enumerate(("R", "R", "A")):
        axes[0, c].text(0.02, 0.5, left, color="yellow", transform=axes[0, c].transAxes, va="center")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def xray_montage(path: str | os.PathLike, inputs: np.ndarray, drrs: np.ndarray, views: Sequence[str],
                 psnrs: Sequence[float] | None = None, title: str = "") -> Path:
    """Input X-rays beside the DRRs of the prediction and their difference (all in [-1, 1])."""
    plt = _plt()
    V = len(views)
    fig, axes = plt.subplots(V, 3, figsize=(9, 3 * V), squeeze=False)
    for v, name in enumerate(views):
        panels = [("input " + name, inputs[v], dict(cmap="gray", vmin=-1, vmax=1)),
                  ("DRR of prediction", drrs[v], dict(cmap="gray", vmin=-1, vmax=1)),
                  ("DRR − input", drrs[v] - inputs[v], dict(cmap="coolwarm", vmin=-0.5, vmax=0.5))]
        for c, (label, img, kw) in enumerate(panels):
            ax = axes[v, c]
            im = ax.imshow(img, interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 1 and psnrs is not None:
                label += f" ({psnrs[v]:.1f} dB)"
            ax.set_title(label, fontsize=9)
        fig.colorbar(im, ax=axes[v, :].tolist(), shrink=0.8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


BAR_METRICS = ("psnr3d", "ssim3d", "mae_hu", "drr_psnr")  # one panel each in metrics_bar.png


def metrics_bar_chart(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    """One panel per metric of BAR_METRICS, one bar (mean ± std over cases) per row (method / stage)."""
    plt = _plt()
    labels = [_row_label(r) for r in rows]
    headers = {k: h for k, h, _ in MAIN_METRICS + X2CT_METRICS}
    fig, axes = plt.subplots(1, len(BAR_METRICS), figsize=(3.2 * len(BAR_METRICS), 3.6), squeeze=False)
    for ax, key in zip(axes[0], BAR_METRICS):
        means = [r["summary"].get(key, {}).get("mean", math.nan) for r in rows]
        stds = [r["summary"].get(key, {}).get("std", math.nan) for r in rows]
        means = [m if math.isfinite(m) else math.nan for m in means]
        x = np.arange(len(rows))
        ax.bar(x, means, yerr=stds, capsize=3, color=[f"C{i % 10}" for i in range(len(rows))])
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
        ax.set_title(headers.get(key, key), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _row_label(row: dict[str, Any]) -> str:
    """'cascade [ap] / stage2_24': method, the views it reconstructed from (if recorded), stage."""
    return _method_label(row) + (f" / {row['stage']}" if row.get("stage") else "")


def _method_label(row: dict[str, Any]) -> str:
    return f"{row['method']}" + (f" [{'+'.join(row['views'])}]" if row.get("views") else "")


def _save(fig, path: str | os.PathLike) -> Path:
    try:
        fmt = Path(path).suffix.lstrip(".").lower() or "png"  # a file object has no name to infer it from
        return atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=100, bbox_inches="tight"))
    finally:
        _plt().close(fig)


def fmt_stat(s: dict[str, float] | None, fmt: str) -> str:
    """'mean ± std' of a `metrics.summarize` dict; infinities counted, missing shown as '–'."""
    if not s or s.get("n", 0) == 0:
        return "–"
    mean, std = s["mean"], s["std"]
    if not math.isfinite(mean):
        return "inf" if mean > 0 else "–"
    out = fmt.format(mean) + (" ± " + fmt.format(std) if math.isfinite(std) else "")
    if s.get("n_inf"):
        out += f" ({s['n_inf']}× inf)"
    return out


def metric_table(rows: Sequence[dict[str, Any]], columns=MAIN_METRICS) -> str:
    """A Markdown table: one line per row (method, stage, resolution, n cases), mean ± std per metric."""
    head = ["method", "stage", "res", "cases"] + [h for _, h, _ in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        n = max((s.get("n", 0) for s in r["summary"].values()), default=0)
        cells = [_method_label(r), str(r.get("stage") or "–"), str(r.get("res") or "–"), str(n)]
        cells += [fmt_stat(r["summary"].get(k), f) for k, _, f in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _gap(s: dict[str, float], digits: int) -> str:
    """A signed 'mean ± std' of per-case differences ('–' when no finite difference)."""
    if not s or not math.isfinite(s.get("mean", math.nan)):
        return "–"
    return f"{s['mean']:+.{digits}f} ± {s['std']:.{digits}f}"


def quality_section(quality: dict[str, Any]) -> list[str]:
    """Markdown lines: the final stage against each baseline, case by case, and the quality bar."""
    frm = f" — from {'+'.join(quality['views'])}" if quality.get("views") else ""
    lines = [f"## Final stage vs the baselines (paired, per case){frm}", "",
             f"`{quality['final stage']}` minus each baseline on the same cases: mean ± std and median of the "
             "per-case gap, cases won, and the quality bar where one is set (mean PSNR-3D gap ≥ the margin).", "",
             "| baseline | cases | PSNR-3D gap (dB) | median (dB) | SSIM-3D gap | cases won | bar |",
             "|---|---|---|---|---|---|---|"]
    for c in quality["vs baselines"]:
        bar = "–"
        if "required_gap_db" in c:
            bar = ("PASS" if c["meets_bar"] else "FAIL") + f" (≥ {c['required_gap_db']:+.1f} dB)"
        med = c.get("psnr3d_gap_median", math.nan)
        lines.append(f"| {c['baseline']} | {c['cases']} | {_gap(c['psnr3d_gap'], 2)} | "
                     f"{f'{med:+.2f}' if math.isfinite(med) else '–'} | "
                     f"{_gap(c['ssim3d_gap'], 4)} | {c['wins']}/{c['cases']} | {bar} |")
    verdict = "PASS" if quality["drr_meets_bar"] else "FAIL"
    lines += ["", f"DRR consistency of the final stage: {fmt_stat(quality['drr_psnr'], '{:.2f}')} dB — {verdict} "
              f"(bar ≥ {quality['drr_bar_db']:.0f} dB).", ""]
    return lines


def write_report_md(path: str | os.PathLike, rows: Sequence[dict[str, Any]], info: dict[str, Any],
                    images: Sequence[str] = (), quality: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
                    sections: Sequence[str] = ()) -> Path:
    """report.md: what was evaluated, the metric tables (ours and X2CT-GAN protocol), the baseline gaps, figures.

    `quality`: one paired comparison, or a list of them (one per view set evaluated).
    """
    qualities = [] if quality is None else [quality] if isinstance(quality, dict) else list(quality)
    lines = ["# Evaluation report", ""]
    for k, v in info.items():
        lines.append(f"- **{k}**: {v}")
    lines += [
        "",
        "## Metrics (mean ± std over cases)",
        "",
        "PSNR-3D / SSIM-3D (Gaussian σ=1.5, 11³) on the HU window mapped to [0, 1], data range 1. "
        "MAE/RMSE in HU inside the window. PSNR-2D: per-slice PSNR averaged over the slices of each "
        "axis, then over the three axes. DRR PSNR: reprojection of the prediction vs the input X-rays "
        "(normalised [-1, 1] → [0, 1]), averaged over the views the reconstruction was made from. "
        "`[ap]`, `[ap+lateral]`: the views each method reconstructed from.",
        "",
        metric_table(rows, MAIN_METRICS),
        "",
        *(line for q in qualities for line in quality_section(q)),
        *sections,  # further Markdown lines (e.g. the clinical-film gap)
        "## X2CT-GAN protocol (labelled; not comparable to the numbers above)",
        "",
        "HU + 1024 clipped to [0, 2500]; PSNR with PIXEL_MAX 4095 (3-D, and 2-D averaged over slices and axes); "
        "SSIM per orientation (7×7 uniform window, mean over slices and axes) on [0, 2500] / 2500 — "
        "as in kylekma/X2CT 3DGAN/test.py.",
        "",
        metric_table(rows, X2CT_METRICS),
        "",
    ]
    if images:
        lines += ["## Figures", ""]
        for im in images:
            lines.append(f"![{Path(im).stem}]({im})")
        lines.append("")
    return write_text_atomic(path, "\n".join(lines))


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, float)):
        f = float(o)
        # Strict JSON has no inf/nan: inf (identical volumes) becomes the string "inf", nan null.
        if math.isnan(f):
            return None
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, Path):
        return str(o)
    return o


def write_metrics_json(path: str | os.PathLike, obj: dict[str, Any]) -> Path:
    """Write metrics as strict JSON (inf → "inf", nan → null)."""
    return write_json_atomic(path, _jsonable(obj), allow_nan=False)

"""What anatomy the model assumes where: depth distributions along X-ray rays, as a figure per view.

The depth-lifting module (models/lifting.py) spreads each detector pixel's features along its ray
with a distribution over depth bins: softmax(head(features) + prior), the prior a learned per-cell
logit initialised from the training CTs' mean attenuation profile. At a few detector positions on
the central row this shows, per view, three distributions along the ray (x: mm from the cube's
source-side face, along the view axis):
- the training-set prior the model was initialised with (`depth_prior_from_volumes` over the
  training split at the stage's resolution, recomputed as the trainer did — the checkpoint does not
  store it; the first INIT_MAX_CASES training CTs at most);
- the learned prior after training (input-independent: `DepthLifting.prior`);
- the distribution for this case's X-rays (`DepthLifting.depth_logits(features)` softmax).
Each prior is read as the model reads it: log-prior bilinearly resized to the feature grid, softmax.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hybrid_vit_cascade.geometry.views import resolve_det_spacing

POINT_FRACTIONS = (0.2, 0.35, 0.5, 0.65, 0.8)  # detector positions across the central row (fraction of width)
INIT_MAX_CASES = 64  # training CTs averaged for the initial prior (bounds the time of a large dataset)
_AXIS = ("R", "A", "S")  # RAS+ letter of each world axis' + direction; − is L, P, I
_NEG = ("L", "P", "I")


def _softmax_at(log_prior: Tensor, size: int) -> Tensor:
    """(V, bins, G, G) log-prior → probabilities (V, bins, size, size), resized as `depth_logits` does."""
    up = F.interpolate(log_prior.float(), size=(size, size), mode="bilinear", align_corners=False)
    return up.softmax(dim=1)


def _lifting_stage(rec) -> Optional[int]:
    """1-based index of the last stage that will run and has depth lifting (None: no lifting)."""
    n = rec.stages_to_run(None)
    with_lift = [k for k in range(1, n + 1) if getattr(rec.cascade.stages[k - 1], "lifting", None) is not None]
    return with_lift[-1] if with_lift else None


def _initial_prior(rec, lift, train_root: Optional[str]) -> tuple[Optional[Tensor], str]:
    """The training-set depth prior (V, bins, G, G) the stage was initialised with, and a note."""
    from hybrid_vit_cascade.data.datasets import CTXrayDataset
    from hybrid_vit_cascade.models.lifting import depth_prior_from_volumes

    if not train_root or not (Path(train_root) / "manifest.json").is_file():
        return None, f"training dataset {train_root!r} not found: initial prior not shown"
    try:
        ds = CTXrayDataset(train_root, "train", [lift.resolution])
    except (ValueError, KeyError) as err:
        return None, f"initial prior not shown ({err})"
    n = min(len(ds), INIT_MAX_CASES)
    if n == 0:
        return None, "the training split is empty: initial prior not shown"
    vols = [torch.stack([ds[i]["ct"][lift.resolution] for i in range(j, min(j + 8, n))]) for j in range(0, n, 8)]
    uv, depth = lift.voxel_geometry("cpu")
    K, G = lift.prior.shape[1], lift.prior.shape[2]
    probs = depth_prior_from_volumes(vols, uv, depth, K, G, rec.window, rec.mu_water)
    return probs, f"training-set prior: mean of {n} of {len(ds)} training CT(s) at {lift.resolution}³"


def _position_labels(rec, view_index: int, cols: Sequence[int], size: int) -> list[str]:
    """'R 64 mm': each feature-grid column's offset from the central ray at the isocentre plane, as a side."""
    view = rec.projector.views[view_index]
    mag = 1.0 if view.kind == "parallel" else view.sdd / view.sid
    iso_mm = resolve_det_spacing(view, rec.fov_mm) / mag * view.det_pixels / size  # per feature cell
    axis = max(range(3), key=lambda i: abs(view.u[i]))
    labels = []
    for c in cols:
        off = (c + 0.5 - size / 2) * iso_mm  # along the detector's column direction u
        side = (_AXIS if off * view.u[axis] > 0 else _NEG)[axis]
        labels.append("centre" if abs(off) < iso_mm / 2 else f"{side} {abs(off):.0f} mm")
    return labels


def _ray_direction(rec, view_index: int) -> str:
    """'A → P': the patient side the rays enter (source) and leave (detector) along the view axis."""
    d = rec.projector.views[view_index].direction
    axis = max(range(3), key=lambda i: abs(d[i]))
    into, out = (_NEG, _AXIS) if d[axis] > 0 else (_AXIS, _NEG)
    return f"{into[axis]} → {out[axis]}"


def _points(probs: Tensor, row: int, cols: Sequence[int]) -> np.ndarray:
    """(bins, P', P') → (points, bins) at (row, each column)."""
    return probs[:, row][:, list(cols)].T.double().numpy()


@torch.no_grad()
def depth_profiles(rec, xray: Tensor, train_root: Optional[str] = None,
                   views: Optional[Sequence[str]] = None) -> Optional[dict[str, Any]]:
    """Depth distributions at POINT_FRACTIONS of the central row, per present view; None without lifting.

    xray: (V, P, P) in the model range (the checkpoint's V slots). Returns {"stage", "depth_mm" (bins,),
    "row", "columns", "note", "views": {view: {"labels", "case", "learned_prior", "initial_prior"}}} with
    each distribution an array (points, bins) summing to 1 over bins (initial_prior None if unavailable).
    """
    k = _lifting_stage(rec)
    if k is None:
        return None
    stage = rec.cascade.stages[k - 1]
    lift = stage.lifting
    present = rec.check_views(views)
    mask = None if len(present) == len(rec.views) else torch.tensor([[v in present for v in rec.views]])
    feats = stage.encoder(xray[None].float().to(lift.prior.device), mask)  # (1, V, C, P', P')
    size = feats.shape[-1]
    case = lift.depth_logits(feats)[0].softmax(dim=1).cpu()  # (V, bins, P', P')
    learned = _softmax_at(lift.prior.detach().cpu(), size)
    init, note = _initial_prior(rec, lift, train_root)
    init = None if init is None else _softmax_at(init.log(), size)
    bins = lift.depth_bins
    row = size // 2
    cols = [min(size - 1, max(0, round(f * size - 0.5))) for f in POINT_FRACTIONS]  # cell centre nearest f
    out: dict[str, Any] = {"stage": f"stage{k}_{rec.cfg.stages[k - 1].name}", "depth_mm":
                           (np.arange(bins) + 0.5) / bins * rec.fov_mm, "row": row, "columns": cols,
                           "note": note, "views": {}}
    for v in present:
        i = rec.views.index(v)
        out["views"][v] = {
            "labels": _position_labels(rec, i, cols, size),
            "direction": _ray_direction(rec, i),
            "case": _points(case[i], row, cols),
            "learned_prior": _points(learned[i], row, cols),
            "initial_prior": None if init is None else _points(init[i], row, cols),
        }
    return out


def depth_figure(path: str | os.PathLike, prof: dict[str, Any], title: str = "") -> Path:
    """One row per view, one panel per detector position: the three depth distributions along the ray."""
    from hybrid_vit_cascade.inference import report

    plt = report._plt()
    names = list(prof["views"])
    n = len(prof["columns"])
    fig, axes = plt.subplots(len(names), n, figsize=(2.6 * n, 2.3 * len(names)), squeeze=False, sharey="row")
    x = prof["depth_mm"]
    for r, v in enumerate(names):
        d = prof["views"][v]
        for c in range(n):
            ax = axes[r, c]
            if d["initial_prior"] is not None:
                ax.plot(x, d["initial_prior"][c], "k:", label="training-set prior (initialisation)")
            ax.plot(x, d["learned_prior"][c], "C0--", label="learned prior (any input)")
            ax.plot(x, d["case"][c], "C3-", label="this case's X-rays")
            ax.set_title(f"{v}: {d['labels'][c]}", fontsize=8)
            ax.tick_params(labelsize=7)
            if r == len(names) - 1:
                ax.set_xlabel(f"depth from the source side, {d['direction']} (mm)", fontsize=7)
            if c == 0:
                ax.set_ylabel("probability per depth bin", fontsize=7)
    axes[0, 0].legend(fontsize=6)
    fig.suptitle((title + "\n" if title else "") + f"{prof['stage']}: depth distribution along the rays "
                 f"(central detector row; panels: offset from the central ray at the isocentre, R/L/A/P = the "
                 f"patient's side)\n{prof['note']}", fontsize=8)
    fig.tight_layout()
    return report._save(fig, path)


def write_depth_figure(path: str | os.PathLike, rec, xray: Tensor, train_root: Optional[str] = None,
                       views: Optional[Sequence[str]] = None, title: str = "") -> Optional[Path]:
    """`depth_profiles` drawn into `path` (PNG); None when the cascade has no depth lifting."""
    prof = depth_profiles(rec, xray, train_root, views)
    return None if prof is None else depth_figure(path, prof, title)

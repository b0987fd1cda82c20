"""Move the model's field over the patient: a canonical cube and its X-rays re-centred by Δ mm (RAS+).

A film is cropped to the model's field around where the reader finds the body, not around the
dataset's cube (data/radiograph_fit.py); that crop shows the patient centred at Δ from the cube's
centre. The cube the crop shows is then the canonical cube translated by Δ, and its X-rays are the
clean ones shifted by Δ's component across each view — exactly for parallel beams, to within the
magnification of Δ's depth component for cone beams. Content that enters the field from outside
the cube is air (`fill`), as it is in a film rendered from the cube alone.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .views import View


def _image_axes(views: Sequence[View], like: Tensor) -> tuple[Tensor, Tensor]:
    """Each view's image column and row directions (V, 3) in RAS+, in `like`'s dtype and device."""
    u = torch.tensor([v.u for v in views], dtype=like.dtype, device=like.device)
    w = torch.tensor([v.v for v in views], dtype=like.dtype, device=like.device)
    return u, w


def translate_volume(vol: Tensor, delta_mm: Tensor, fov_mm: float, fill: float) -> Tensor:
    """(B, C, X, Y, Z) canonical cubes → the cubes centred at Δ (B, 3) mm RAS+ from theirs (trilinear, `fill` outside)."""
    B, C, X, Y, Z = vol.shape
    if delta_mm.shape != (B, 3):
        raise ValueError(f"delta_mm must be (B, 3) = ({B}, 3), got {tuple(delta_mm.shape)}")
    # 1. new[i] = old[i + Δ/spacing]: in grid_sample's [-1, 1] coordinates (align_corners=False) the cube's
    #    edge spans 2, so Δ mm moves the sampling point by 2Δ/fov. Its grid's last axis is (W, H, D) = (z, y, x).
    shift = (2.0 * delta_mm.to(vol.dtype) / fov_mm).flip(-1)  # (B, 3) as (z, y, x)
    theta = torch.zeros(B, 3, 4, dtype=vol.dtype, device=vol.device)
    theta[:, :, :3] = torch.eye(3, dtype=vol.dtype, device=vol.device)
    theta[:, :, 3] = shift
    grid = F.affine_grid(theta, [B, C, X, Y, Z], align_corners=False)  # (B, X, Y, Z, 3)
    # 2. Pad with `fill` by sampling (vol − fill) with zeros outside, then adding `fill` back.
    out = F.grid_sample(vol - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill


def translate_xrays(xray: Tensor, delta_mm: Tensor, views: Sequence[View], pixel_mm: float, fill: float) -> Tensor:
    """(B, V, P, P) X-rays of cubes → those of the cubes centred at Δ (B, 3) mm; `pixel_mm` at the isocentre."""
    B, V, P, _ = xray.shape
    if len(views) != V or delta_mm.shape != (B, 3):
        raise ValueError(f"need {V} views and delta_mm (B, 3) = ({B}, 3), got {len(views)} and {tuple(delta_mm.shape)}")
    d = delta_mm.to(xray.dtype)
    u, w = _image_axes(views, xray)
    # 1. Pixel (r, c) of the moved field sees what pixel (r + Δ·v/δ, c + Δ·u/δ) saw; the image's edge spans 2.
    du = 2.0 * (d @ u.T) / (P * pixel_mm)  # (B, V) along columns (grid x)
    dv = 2.0 * (d @ w.T) / (P * pixel_mm)  # (B, V) along rows (grid y)
    theta = torch.zeros(B * V, 2, 3, dtype=xray.dtype, device=xray.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = du.reshape(-1)
    theta[:, 1, 2] = dv.reshape(-1)
    grid = F.affine_grid(theta, [B * V, 1, P, P], align_corners=False)  # (B*V, P, P, 2)
    flat = xray.reshape(B * V, 1, P, P) - fill
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    return out.reshape(B, V, P, P)


def crop_placement(offsets_mm: Tensor, views: Sequence[View], present: Optional[Tensor] = None) -> Tensor:
    """Δ (B, 3) mm RAS+ where films' crops put the cube, from each crop's centre (B, V, 2) = (down, right) mm
    at the isocentre from its film's centre (the central ray) in view V's image frame.

    (down, right) runs along the view's (v, u); each world axis takes the mean over the films that see
    it (`present` (B, V) bool: the films given, None = all); an axis none sees (a single film's depth) is 0.
    """
    B, V, _ = offsets_mm.shape
    if len(views) != V:
        raise ValueError(f"need {V} views for crop offsets (B, V, 2) = {tuple(offsets_mm.shape)}, got {len(views)}")
    u, w = _image_axes(views, offsets_mm)
    along = offsets_mm[..., :1] * w + offsets_mm[..., 1:] * u  # (B, V, 3)
    seen = (w.abs() + u.abs()).expand(B, V, 3)  # (B, V, 3): 1 on the axes a view sees
    if present is not None:
        keep = present.to(offsets_mm.dtype)[..., None]  # (B, V, 1)
        along, seen = along * keep, seen * keep
    count = seen.sum(1)  # (B, 3)
    return torch.where(count > 0, along.sum(1) / count.clamp(min=1.0), torch.zeros_like(count))

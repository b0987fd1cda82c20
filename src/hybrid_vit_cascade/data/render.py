"""The X-rays of a CT, rendered one way everywhere, and the one answer to "were these X-rays rendered like that?".

`render_xrays(ct, data_cfg, size)` is what `hvc prepare` (training data), `hvc drr` and
`hvc infer --ct` call: the CT is resampled onto the canonical cube (RAS+, `fov_mm`, centred on the
body) at `size`³, clipped to the HU window and projected with the configured geometry.

The line integrals depend on the views, the full geometry (beam kind, sid, sdd, detector pixels
and spacing), the cube's field of view, the HU window, μ_water and the render size. `render_settings`
lists exactly those; `check_render_settings` compares two such lists (a model's and a dataset's or
an X-ray file's) and raises one `RenderMismatch` message naming every differing value on both sides.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..config import DataConfig
from .io import CTVolume
from .preprocessing import canonicalize


class RenderMismatch(ValueError):
    """X-rays (a dataset's, a file's) were rendered with other settings than a model expects."""


def render_settings(data_cfg: DataConfig, render_size: int, views: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Everything a rendered X-ray depends on, JSON-ready (the keys a manifest / drr.json carries)."""
    return {
        "views": list(views if views is not None else data_cfg.views),
        "geometry": data_cfg.geometry.model_dump(mode="json"),
        "fov_mm": float(data_cfg.fov_mm),
        "hu_window": [float(v) for v in data_cfg.hu_window],
        "mu_water": float(data_cfg.mu_water),
        "render_size": int(render_size),
    }


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def check_render_settings(want: dict[str, Any], have: dict[str, Any], model: str, source: str) -> None:
    """Refuse X-rays from `source` (settings `have`) for `model` (settings `want`), naming every difference."""
    w, h = _flatten(want), _flatten(have)
    bad = [f"{k} {w[k]!r} (model) vs {h.get(k, 'missing')!r} (data)" for k in w if not _same(w[k], h.get(k))]
    if bad:
        raise RenderMismatch(f"{source} was rendered unlike {model}: {'; '.join(bad)} — re-render it with the "
                             "model's settings (`hvc prepare --config`, `hvc drr --checkpoint`) or give raw CTs")


def render_li(hu: np.ndarray, data_cfg: DataConfig, projector) -> torch.Tensor:
    """Line integrals (V, P, P) of a canonical HU cube, windowed exactly like the `ct_<res>` targets.

    Clipping to the HU window first makes the DRR the one the physics loss computes from a
    perfect prediction (which can only express HU inside the window).
    """
    from ..geometry.physics import hu_to_mu

    lo, hi = data_cfg.hu_window
    n = hu.shape[-1]
    hu_w = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32)).clamp(lo, hi)
    mu = hu_to_mu(hu_w, data_cfg.mu_water)[None, None]  # (1, 1, n, n, n) 1/mm
    with torch.no_grad():
        return projector(mu, data_cfg.fov_mm / n)[0]  # (V, P, P)


def render_xrays(ct: CTVolume, data_cfg: DataConfig, size: int, views: Optional[Sequence[str]] = None,
                 center_mm: Optional[np.ndarray] = None, projector=None) -> tuple[torch.Tensor, np.ndarray]:
    """(line integrals (V, P, P), the canonical HU cube (size³, RAS+) they were cast through) of a CT.

    `center_mm` defaults to the body centre; `projector` may be passed to reuse one across cases.
    """
    from ..geometry.projector import Projector

    views = list(views if views is not None else data_cfg.views)
    if projector is None:
        projector = Projector(data_cfg.geometry, views)
    hu = canonicalize(ct, data_cfg.fov_mm, size, center_mm=center_mm)
    return render_li(hu, data_cfg, projector), hu

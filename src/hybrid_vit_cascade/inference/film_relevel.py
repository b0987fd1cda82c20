"""Films re-levelled by the model's own first estimate, then reconstructed again.

The reader maps a film's in-body histogram onto the training population's X-rays and moves it to the
level its body width predicts (data/radiograph_fit.py): a population's tone, not this patient's line
integrals. A first reconstruction from the film estimates them: its DRRs. The film is then
histogram-matched inside its own body mask to those DRRs (the reader's monotone LUT,
data/xray_stats.match_to_quantiles, so the film's spatial detail is kept and only its tone moves) and
reconstructed again. On the demo's validation films (c9c981b checkpoints, in the field the crops
show, K = 16, no guidance): model input 24.32 → 25.48 dB PSNR from the clean X-rays of that field,
PSNR-3D 23.31 → 23.65 dB (cascade) and 23.42 → 23.71 dB (regression); a second and third round gave
no more (23.63, 23.59). DRR guidance toward the re-levelled film still costs (22.68 dB at 0.5).
The first pass draws at most FIRST_PASS_SAMPLES chains: its DRRs need the mean's tone, not its detail
(4 chains: input 25.30 dB, PSNR-3D 23.57 dB on the same films, for a quarter of the first pass's time).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from hybrid_vit_cascade.data.xray_stats import body_mask, in_body_quantiles, match_to_quantiles

MIN_BODY_PIXELS = 16  # a view whose body mask is smaller is left as it is
MIN_SPREAD = 1e-3  # in-body DRR range (model units) below which the estimate has no tone to give
FIRST_PASS_SAMPLES = 4  # chains of the first reconstruction (fewer if the final one draws fewer)


def relevel_to_estimate(rec, xray: Tensor, views: Optional[Sequence[str]] = None, **reconstruct_kwargs
                        ) -> tuple[Tensor, list[str]]:
    """(X-rays (V, P, P) or (B, V, P, P) with each given view's film histogram-matched in its body to the DRR
    of a first reconstruction from them, what was done per view). `reconstruct_kwargs` go to
    `rec.reconstruct` (seed, samples, guidance, case keys) — the first pass is drawn like the final one, with at
    most FIRST_PASS_SAMPLES chains."""
    single = xray.dim() == 3
    x = xray[None] if single else xray  # (B, V, P, P)
    present = rec.check_views(views)
    kwargs = dict(reconstruct_kwargs)
    if kwargs.get("samples") is not None:  # None: the checkpoint's default (a regression: its one pass)
        kwargs["samples"] = min(int(kwargs["samples"]), FIRST_PASS_SAMPLES)
    first = rec.reconstruct(x, views=present, **kwargs)[-1]
    with torch.no_grad():
        drr = rec.project(first.mean).numpy()  # (B, V, P, P): the estimate's normalised DRRs
    out, notes = x.clone().numpy(), []
    for b in range(x.shape[0]):
        for view, v in zip(present, rec.view_indices(present)):
            img = out[b, v].astype(np.float64)
            mask = body_mask(img)
            if mask.sum() < MIN_BODY_PIXELS:
                notes.append(f"{view}: body too small to re-level ({int(mask.sum())} px); left as read")
                continue
            target = in_body_quantiles(drr[b, v][mask])  # the LUT's knots, as the reader's training statistics
            if target[-1] - target[0] < MIN_SPREAD:  # an estimate without contrast there: nothing to level to
                notes.append(f"{view}: the first reconstruction's DRR is flat in the body; left as read")
                continue
            try:
                out[b, v] = np.clip(match_to_quantiles(img, mask, target), -1.0, 1.0)
            except ValueError as err:  # a film whose body is (nearly) constant
                notes.append(f"{view}: {err}; left as read")
                continue
            notes.append(f"{view}: in-body median {np.median(img[mask]):+.3f} → {np.median(out[b, v][mask]):+.3f}")
    res = torch.from_numpy(out).to(xray.dtype)
    return (res[0] if single else res), notes

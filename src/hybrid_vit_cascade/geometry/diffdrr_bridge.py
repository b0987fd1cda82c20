"""Render our views with DiffDRR (reference checks and benchmarks only; DiffDRR is optional).

DiffDRR's camera frame (diffdrr/detector.py, with ``orientation=None`` so its reorient matrix is the
identity): source at the origin, detector centre at ``(0, 0, sdd)``, image row 0 at +y with rows
running −y, image column 0 at +x with columns running −x when ``reverse_x_axis=True`` (+x otherwise).
A pose is the camera→world rigid transform. So for one of our views (ray direction d, column
direction u, row direction v, source at −sid·d) the pose has rotation columns
``R e_x = ∓u, R e_y = −v, R e_z = d`` and translation ``−sid·d``; ``reverse_x_axis`` is chosen so R is
a proper rotation (AP/PA need it, the left lateral — anterior on the image's left — does not).
DiffDRR integrates ``density`` over ray length in world mm, so giving it μ (1/mm) on our
canonical affine yields line integrals directly comparable with `Projector`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import GeometryConfig
from .views import View, make_view, resolve_det_spacing


def canonical_affine(n: int, spacing_mm: float) -> np.ndarray:
    """Affine of a canonical RAS+ cube centred at the origin (DESIGN.md)."""
    aff = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    aff[:3, 3] = -(n - 1) / 2 * spacing_mm
    return aff


def diffdrr_pose(view: View) -> tuple[torch.Tensor, bool]:
    """(4, 4) camera→world matrix for DiffDRR and its reverse_x_axis flag for one cone-beam view."""
    if view.kind != "cone":
        raise ValueError("DiffDRR renders cone-beam views only")
    d, u, v = (np.asarray(a, dtype=np.float64) for a in (view.direction, view.u, view.v))
    for reverse, ex in ((True, -u), (False, u)):
        R = np.stack([ex, -v, d], axis=1)  # columns: camera x, y, z in world
        if np.linalg.det(R) > 0:
            break
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = -view.sid * d
    return torch.tensor(M, dtype=torch.float32), reverse


def diffdrr_render(
    mu: np.ndarray,
    spacing_mm: float,
    geom: GeometryConfig,
    views: list[str],
    renderer: str = "siddon",
    renderer_init: dict | None = None,
    **render_kwargs,
) -> torch.Tensor:
    """Line integrals (V, P, P) of one canonical μ cube (n, n, n) rendered by DiffDRR.

    `renderer_init` goes to the renderer's constructor (e.g. ``{"mode": "bilinear"}``),
    `render_kwargs` to each call (e.g. ``n_points`` for the trilinear renderer)."""
    from diffdrr.drr import DRR
    from diffdrr.pose import RigidTransform
    from torchio import ScalarImage, Subject

    n = mu.shape[0]
    t = torch.as_tensor(np.ascontiguousarray(mu), dtype=torch.float32)[None]  # (1, n, n, n)
    img = ScalarImage(tensor=t, affine=canonical_affine(n, spacing_mm))
    subject = Subject(volume=img, density=img, mask=None, reorient=torch.eye(4), fiducials=None)
    out = []
    for name in views:
        view = make_view(name, geom)
        pose, reverse = diffdrr_pose(view)
        delx = resolve_det_spacing(view, n * spacing_mm)
        drr = DRR(subject, sdd=view.sdd, height=view.det_pixels, delx=delx, reverse_x_axis=reverse, renderer=renderer, **(renderer_init or {}))
        with torch.no_grad():
            out.append(drr(RigidTransform(pose), **render_kwargs)[0, 0])
    return torch.stack(out)


def example_ct_cube(size: int, fov_mm: float = 360.0) -> tuple[np.ndarray, float]:
    """DiffDRR's example chest CT resampled (trilinear) to a canonical RAS+ HU cube: (hu (n,n,n), spacing mm)."""
    import nibabel as nib
    from scipy.ndimage import map_coordinates

    import diffdrr

    path = Path(diffdrr.__file__).resolve().parent / "data" / "cxr.nii.gz"
    nii = nib.load(str(path))
    data = np.asarray(nii.dataobj, dtype=np.float32)
    aff = nii.affine.copy()
    centre = aff @ np.r_[(np.array(data.shape) - 1) / 2, 1.0]
    aff[:3, 3] -= centre[:3]  # isocentre = the volume centre, as DiffDRR's read() does
    spacing = fov_mm / size
    c = (np.arange(size) - (size - 1) / 2) * spacing
    world = np.stack(np.meshgrid(c, c, c, indexing="ij"), axis=0).reshape(3, -1)  # (3, n³) RAS+ mm
    idx = np.linalg.inv(aff)[:3] @ np.vstack([world, np.ones(world.shape[1])])  # voxel indices
    hu = map_coordinates(data, idx, order=1, mode="constant", cval=-1024.0, prefilter=False)
    return hu.reshape(size, size, size).astype(np.float32), spacing

"""Render our views with DiffDRR (reference checks and benchmarks only; DiffDRR is optional).

DiffDRR's camera frame (diffdrr/detector.py, with ``orientation=None`` so its reorient matrix is the
identity): source at the origin, detector centre at ``(0, 0, sdd)``, image row 0 at +y with rows
running −y, image column 0 at +x with columns running −x when ``reverse_x_axis=True`` (+x otherwise).
A pose is the camera→world transform. So for one of our views (ray direction d, column direction u,
row direction v, source at −sid·d) and ``reverse_x_axis=True`` the pose maps camera x, y, z to
−u, −v, d and the origin to −sid·d (see `diffdrr_pose`).
DiffDRR integrates ``density`` over ray length in world mm, so giving it μ (1/mm) on our
canonical affine yields line integrals directly comparable with `Projector`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import GeometryConfig
from .views import View, canonical_affine, make_view, resolve_det_spacing


def diffdrr_pose(view: View) -> torch.Tensor:
    """(4, 4) camera→world matrix that makes DiffDRR (reverse_x_axis=True) render one of our cone views.

    Rotation columns ``(−u, −v, d)``, translation ``−sid·d``. For the left lateral (anterior on the
    image's left) this matrix is a reflection, det = −1: the display convention mirrors a
    source-side view. DiffDRR applies the pose as a plain matrix, so it renders it correctly and
    AP and lateral can share one batched call.
    """
    if view.kind != "cone":
        raise ValueError("DiffDRR renders cone-beam views only")
    d, u, v = (np.asarray(a, dtype=np.float64) for a in (view.direction, view.u, view.v))
    M = np.eye(4)
    M[:3, :3] = np.stack([-u, -v, d], axis=1)  # columns: camera x, y, z in world
    M[:3, 3] = -view.sid * d
    return torch.tensor(M, dtype=torch.float32)


def make_diffdrr(
    mu: np.ndarray | torch.Tensor,
    spacing_mm: float,
    geom: GeometryConfig,
    views: list[str],
    renderer: str = "siddon",
    renderer_init: dict | None = None,
):
    """A DiffDRR `DRR` holding one canonical μ cube (n, n, n), and the batched poses (V) of our views.

    `renderer_init` goes to the renderer's constructor (e.g. ``{"mode": "bilinear"}``).
    Render with ``drr(poses, **render_kwargs)`` → (V, 1, P, P) line integrals.
    """
    from diffdrr.drr import DRR
    from diffdrr.pose import RigidTransform
    from torchio import ScalarImage, Subject

    n = mu.shape[0]
    t = torch.as_tensor(np.ascontiguousarray(mu), dtype=torch.float32)[None]  # (1, n, n, n)
    img = ScalarImage(tensor=t, affine=canonical_affine(n, spacing_mm))
    # orientation=None in DiffDRR's terms: identity reorient, so a pose is camera→world directly
    subject = Subject(volume=img, density=img, mask=None, reorient=torch.eye(4), fiducials=None)
    vs = [make_view(name, geom) for name in views]
    delx = resolve_det_spacing(vs[0], n * spacing_mm)
    drr = DRR(subject, sdd=vs[0].sdd, height=vs[0].det_pixels, delx=delx, reverse_x_axis=True,
              renderer=renderer, **(renderer_init or {}))
    poses = RigidTransform(torch.stack([diffdrr_pose(v) for v in vs]))  # (V, 4, 4)
    return drr, poses


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

    `render_kwargs` go to each call (e.g. ``n_points`` for the trilinear renderer)."""
    drr, poses = make_diffdrr(mu, spacing_mm, geom, views, renderer, renderer_init)
    with torch.no_grad():
        return drr(poses, **render_kwargs)[:, 0]


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

"""X-ray views defined in patient (world) coordinates, and their detector frames.

Conventions (DESIGN.md "Frames" and "Views"):

World frame is RAS+ in mm: +x toward the patient's Right, +y Anterior, +z Superior; the isocentre is
the world origin and the centre of every canonical volume.

- ``ap``: source anterior at (0, +sid, 0), rays travel −y; image columns run from the patient's
  right to left (u = −x), rows from superior to inferior (v = −z).
- ``pa``: source posterior at (0, −sid, 0), rays travel +y; u = −x, v = −z (as AP).
- ``lateral`` (left lateral): source at the patient's right, (+sid, 0, 0), rays travel −x; columns
  run from anterior to posterior (u = −y), rows superior to inferior (v = −z).

Images are in radiographic display orientation: head at the top (row direction v = −z); AP and PA
show the patient's right on the image's left, as a radiologist facing the patient reads them; the
left lateral shows anterior on the image's left (spine on the right).

Cone beam: point source at ``sid`` from the isocentre on the view axis, flat detector perpendicular
to the central ray at ``sdd`` from the source, ``det_pixels × det_pixels`` square pixels of
``det_spacing`` mm (measured on the detector), centred on the central ray.
Parallel beam: rays parallel to the view axis; ``det_spacing`` is measured in the isocentre plane.

``det_spacing = None`` is resolved per volume by `resolve_det_spacing`: the detector covers the
volume's field of view ``fov_mm`` (its physical edge, D × spacing) magnified to the detector by
``sdd / sid`` (1 for parallel beam), plus a margin of ``DET_MARGIN`` (5 %). This covers the cube's
cross-section at the isocentre plane; in cone beam, parts of the cube's edges nearest the source are
magnified more (up to ``sdd / (sid - fov/2)``) and can project outside the detector (with the
defaults, beyond ≈150 mm off-axis at the cube's source-side face of a 360 mm FOV).
Pixel (row r, column c) has its centre at ``centre + (c - (P-1)/2)·δ·u + (r - (P-1)/2)·δ·v``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..config import GeometryConfig

VIEW_NAMES = ("ap", "pa", "lateral")
DET_MARGIN = 0.05  # fraction added to the magnified FOV when det_spacing is None

# name -> (ray direction d, column direction u, row direction v), unit vectors in RAS+.
_FRAMES: dict[str, tuple[tuple[float, float, float], ...]] = {
    "ap": ((0.0, -1.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "pa": ((0.0, 1.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "lateral": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0)),
}


@dataclass(frozen=True)
class View:
    """One acquisition: ray direction and detector frame in world RAS+ mm."""

    name: str
    kind: str  # "cone" or "parallel"
    direction: tuple[float, float, float]  # d: unit vector along the central ray, RAS+
    u: tuple[float, float, float]  # detector column direction (image left → right), RAS+
    v: tuple[float, float, float]  # detector row direction (image top → bottom), RAS+
    sid: float  # source–isocentre distance, mm (cone only)
    sdd: float  # source–detector distance, mm (cone only)
    det_pixels: int
    det_spacing: float | None  # mm; None = resolve from the volume FOV

    @property
    def source(self) -> tuple[float, float, float]:
        """Source position (mm, RAS+): ``-sid · d`` (cone beam)."""
        return tuple(-self.sid * c for c in self.direction)  # type: ignore[return-value]

    @property
    def principal_axis(self) -> int:
        """World axis (0=x≡D, 1=y≡H, 2=z≡W) the central ray runs along; Joseph slices are across it."""
        return max(range(3), key=lambda i: abs(self.direction[i]))

    def rays(self, det_spacing: float, dtype=torch.float64) -> tuple[Tensor, Tensor]:
        """Ray origins and (unnormalised) directions per pixel, each (P, P, 3) in mm, RAS+."""
        P = self.det_pixels
        d, u, v = (torch.tensor(a, dtype=dtype) for a in (self.direction, self.u, self.v))
        offs = (torch.arange(P, dtype=dtype) - (P - 1) / 2) * det_spacing  # (P,) mm from centre
        # (P rows, P cols, 3): row offset along v, column offset along u
        plane = offs[:, None, None] * v + offs[None, :, None] * u
        if self.kind == "parallel":
            return plane, d.expand(P, P, 3).clone()
        src = -self.sid * d
        pix = src + self.sdd * d + plane  # detector pixel centres
        return src.expand(P, P, 3).clone(), pix - src

    def project(self, points: Tensor, det_spacing: float) -> tuple[Tensor, Tensor, Tensor]:
        """World points (..., 3) mm → (column, row) in pixel units (0 = centre of pixel 0) and
        the signed distance (mm) along the view axis from the isocentre plane (+ toward the detector)."""
        P = self.det_pixels
        d, u, v = (torch.tensor(a, dtype=points.dtype, device=points.device) for a in (self.direction, self.u, self.v))
        axial = points @ d  # (...,) mm past the isocentre plane
        if self.kind == "parallel":
            a, b = points @ u, points @ v
        else:
            # central projection from the source onto the plane at sdd: scale by sdd / (sid + axial)
            mag = self.sdd / (self.sid + axial)
            a, b = (points @ u) * mag, (points @ v) * mag
        col = a / det_spacing + (P - 1) / 2
        row = b / det_spacing + (P - 1) / 2
        return col, row, axial


def make_view(name: str, geom: GeometryConfig) -> View:
    """Build a named view ('ap', 'pa', 'lateral') for the given geometry."""
    key = name.lower()
    if key not in _FRAMES:
        raise ValueError(f"unknown view {name!r}; expected one of {VIEW_NAMES}")
    if geom.kind == "cone" and geom.sdd <= geom.sid:
        raise ValueError(f"sdd ({geom.sdd} mm) must exceed sid ({geom.sid} mm)")
    d, u, v = _FRAMES[key]
    return View(key, geom.kind, d, u, v, float(geom.sid), float(geom.sdd), int(geom.det_pixels), geom.det_spacing)


def resolve_det_spacing(view: View, fov_mm: float) -> float:
    """Detector pixel spacing in mm: the configured value, or the magnified FOV plus a margin over P pixels."""
    if view.det_spacing is not None:
        if not view.det_spacing > 0:
            raise ValueError(f"det_spacing must be positive (mm), got {view.det_spacing}")
        return float(view.det_spacing)
    if not fov_mm > 0:
        raise ValueError(f"fov_mm must be positive, got {fov_mm}")
    mag = 1.0 if view.kind == "parallel" else view.sdd / view.sid
    return fov_mm * mag * (1.0 + DET_MARGIN) / view.det_pixels


def canonical_affine(n: int, spacing_mm: float) -> np.ndarray:
    """Voxel → RAS+ world (mm) affine of a canonical n³ cube of `spacing_mm` voxels centred on the isocentre."""
    aff = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    aff[:3, 3] = -(n - 1) / 2.0 * spacing_mm
    return aff

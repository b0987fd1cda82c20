"""Voxel geometry for the procedural anatomy: a patient-frame grid, boxes, ellipsoids, tubes, noise.

Shapes are evaluated only inside their bounding box (`Grid.box`), and tubes are rasterised in one
vectorised pass over all segments (`tubes`), so a 96³ phantom with a few thousand vessel segments
stays well under a second.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class Grid:
    """Voxel centres of a phantom in the patient frame: mm, RAS+ axes, broadcasting 1-D axes."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float], origin):
        self.shape = tuple(int(n) for n in shape)
        self.spacing = np.asarray(spacing, dtype=np.float64)
        self.origin = np.asarray(origin, dtype=np.float64)  # patient-frame position of voxel (0, 0, 0)
        self.axes = [(self.origin[i] + np.arange(n) * self.spacing[i]).astype(np.float32) for i, n in enumerate(self.shape)]
        self.x = self.axes[0][:, None, None]
        self.y = self.axes[1][None, :, None]
        self.z = self.axes[2][None, None, :]
        self.h = float(np.prod(self.spacing) ** (1.0 / 3.0))  # mean voxel edge, mm

    def box(self, lo, hi) -> tuple[slice, slice, slice] | None:
        """Index slices of the voxels whose centres lie in [lo, hi] (mm), or None if none do."""
        i0 = np.ceil((np.asarray(lo, dtype=np.float64) - self.origin) / self.spacing).astype(int)
        i1 = np.floor((np.asarray(hi, dtype=np.float64) - self.origin) / self.spacing).astype(int) + 1
        i0, i1 = np.maximum(i0, 0), np.minimum(i1, self.shape)
        if np.any(i1 <= i0):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(i0, i1))

    def sub(self, sl) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcasting x, y, z coordinates of a box."""
        return self.x[sl[0]], self.y[:, sl[1]], self.z[:, :, sl[2]]

    def labels_at(self, lab: np.ndarray, pts: np.ndarray) -> np.ndarray:
        """Label of the voxel nearest to each point (N, 3) mm; AIR outside the grid."""
        idx = np.rint((pts - self.origin) / self.spacing).astype(np.int64)
        ok = np.all((idx >= 0) & (idx < np.array(self.shape)), axis=1)
        out = np.zeros(len(pts), dtype=lab.dtype)
        out[ok] = lab[idx[ok, 0], idx[ok, 1], idx[ok, 2]]
        return out


def rotation(axis_u, hint=(0.0, 0.0, 1.0)) -> np.ndarray:
    """3×3 matrix whose columns are unit axes (u, v, w) with u along `axis_u` and v ⟂ u, near ⟂ hint."""
    u = np.asarray(axis_u, dtype=np.float64)
    u = u / np.linalg.norm(u)
    v = np.cross(np.asarray(hint, dtype=np.float64), u)
    if np.linalg.norm(v) < 1e-6:
        v = np.cross((1.0, 0.0, 0.0), u)
    v /= np.linalg.norm(v)
    return np.stack([u, v, np.cross(u, v)], axis=1)


def ellipsoid(grid: Grid, centre, semi, rot: np.ndarray | None = None):
    """(box slices, normalised squared radius q in the box) of an ellipsoid; None outside the grid.

    `rot` columns are the ellipsoid's axes in the patient frame; q ≤ 1 inside.
    """
    c = np.asarray(centre, dtype=np.float64)
    a = np.maximum(np.asarray(semi, dtype=np.float64), 1e-3)
    R = np.eye(3) if rot is None else np.asarray(rot, dtype=np.float64)
    half = np.sqrt(((R * a[None, :]) ** 2).sum(axis=1))
    sl = grid.box(c - half, c + half)
    if sl is None:
        return None
    x, y, z = grid.sub(sl)
    dx, dy, dz = x - np.float32(c[0]), y - np.float32(c[1]), z - np.float32(c[2])
    if rot is None:
        return sl, (dx / np.float32(a[0])) ** 2 + (dy / np.float32(a[1])) ** 2 + (dz / np.float32(a[2])) ** 2
    q = np.zeros(tuple(s.stop - s.start for s in sl), dtype=np.float32)
    for k in range(3):
        comp = dx * np.float32(R[0, k]) + dy * np.float32(R[1, k]) + dz * np.float32(R[2, k])
        q += (comp / np.float32(a[k])) ** 2
    return sl, q


def capsule_distance(grid: Grid, p0, p1, pad: float):
    """(box slices, distance (mm) to the segment p0→p1) for voxels within `pad` of its bounding box."""
    a, b = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    sl = grid.box(np.minimum(a, b) - pad, np.maximum(a, b) + pad)
    if sl is None:
        return None
    x, y, z = grid.sub(sl)
    d = (b - a).astype(np.float32)
    rx, ry, rz = x - np.float32(a[0]), y - np.float32(a[1]), z - np.float32(a[2])
    t = np.clip((rx * d[0] + ry * d[1] + rz * d[2]) / max(float(d @ d), 1e-6), 0.0, 1.0)
    return sl, np.sqrt((rx - t * d[0]) ** 2 + (ry - t * d[1]) ** 2 + (rz - t * d[2]) ** 2)


def local_coords(grid: Grid, sl, centre, rot: np.ndarray) -> list[np.ndarray]:
    """Coordinates (mm) of a box's voxels along the columns of `rot`, relative to `centre`."""
    x, y, z = grid.sub(sl)
    dx, dy, dz = x - np.float32(centre[0]), y - np.float32(centre[1]), z - np.float32(centre[2])
    return [dx * np.float32(rot[0, k]) + dy * np.float32(rot[1, k]) + dz * np.float32(rot[2, k]) for k in range(3)]


def paint(lab: np.ndarray, sl, mask: np.ndarray, label: int, over: np.ndarray | None = None) -> None:
    """Set `label` where `mask` is true inside box `sl`; only over labels flagged in lookup `over`."""
    view = lab[sl]
    if over is not None:
        mask = mask & over[view]
    view[mask] = label


def over(*labels) -> np.ndarray:
    """Boolean lookup (256,) true for the given labels: which labels a structure may replace."""
    lut = np.zeros(256, dtype=bool)
    lut[[int(t) for t in labels]] = True
    return lut


def _split(p0, p1, r, max_len):
    """Cut segments longer than max_len (per segment) into equal pieces, radius interpolated."""
    n = np.maximum(1, np.ceil(np.linalg.norm(p1 - p0, axis=1) / max_len)).astype(int)
    rep = np.repeat(np.arange(len(p0)), n)
    k = np.concatenate([np.arange(m) for m in n]) if len(n) else np.zeros(0, int)
    t0, t1 = (k / n[rep])[:, None], ((k + 1) / n[rep])[:, None]
    d = p1[rep] - p0[rep]
    r0, r1 = r[0][rep], r[1][rep]
    return p0[rep] + t0 * d, p0[rep] + t1 * d, r0 + t0[:, 0] * (r1 - r0), r0 + t1[:, 0] * (r1 - r0)


def tubes(grid: Grid, p0, p1, r0, r1=None) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise tapered capsules p0→p1 (mm, (N, 3)), radii r0→r1: (flat voxel indices, fractions).

    The fraction is a partial-volume estimate: a linear ramp one voxel wide across the tube wall,
    and for tubes thinner than a voxel a one-voxel footprint scaled by (2r/h)², so thin vessels
    fade instead of vanishing or being drawn a full voxel wide. Indices may repeat (overlaps).
    """
    p0 = np.atleast_2d(np.asarray(p0, dtype=np.float64))
    p1 = np.atleast_2d(np.asarray(p1, dtype=np.float64))
    r0 = np.broadcast_to(np.asarray(r0, dtype=np.float64), (len(p0),))
    r1 = r0 if r1 is None else np.broadcast_to(np.asarray(r1, dtype=np.float64), (len(p0),))
    h = grid.h
    a, b, ra, rb = _split(p0, p1, (r0, r1), np.maximum(2.0 * np.maximum(r0, r1), 3.0 * h))
    reach = np.maximum(np.maximum(ra, rb), h / 2.0) + h / 2.0
    shape = np.array(grid.shape)
    lo = np.floor((np.minimum(a, b) - reach[:, None] - grid.origin) / grid.spacing).astype(np.int64)
    hi = np.ceil((np.maximum(a, b) + reach[:, None] - grid.origin) / grid.spacing).astype(np.int64)
    lo, hi = np.maximum(lo, 0), np.minimum(hi, shape - 1)
    ok = np.all(hi >= lo, axis=1)
    a, b, ra, rb, lo, hi = a[ok], b[ok], ra[ok], rb[ok], lo[ok], hi[ok]
    ext = (hi - lo + 1).max(axis=1) if len(lo) else np.zeros(0, int)
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    sp32 = grid.spacing.astype(np.float32)
    out_i, out_f = [], []
    for m in np.unique(ext):
        sel = np.flatnonzero(ext == m)
        mm = np.minimum(m, shape)  # box edge per axis, shifted inward so it stays in the volume
        off = np.stack(np.meshgrid(*[np.arange(k) for k in mm], indexing="ij"), axis=-1).reshape(-1, 3)
        off_flat = off @ strides
        off_mm = (off * sp32).astype(np.float32)
        step = max(1, 300_000 // len(off))
        for s in range(0, len(sel), step):
            j = sel[s:s + step]
            lo_j = np.minimum(lo[j], shape - mm)
            base = (grid.origin + lo_j * grid.spacing).astype(np.float32)  # (n, 3) mm of the box corner
            pa = a[j].astype(np.float32)
            d = (b[j] - a[j]).astype(np.float32)
            rel = (base - pa)[:, None, :] + off_mm[None]  # voxel − segment start, (n, M, 3)
            L2 = np.maximum((d * d).sum(-1), 1e-6)[:, None]
            t = np.clip((rel @ d[:, :, None])[..., 0] / L2, 0.0, 1.0)
            dist = np.sqrt(((rel - t[..., None] * d[:, None, :]) ** 2).sum(-1))
            r = ra[j].astype(np.float32)[:, None] + t * (rb[j] - ra[j]).astype(np.float32)[:, None]
            f = np.clip((np.maximum(r, h / 2.0) - dist) / h + 0.5, 0.0, 1.0) * np.minimum(1.0, (2.0 * r / h) ** 2)
            keep = f > 0.0
            flat = (lo_j @ strides)[:, None] + off_flat[None]
            out_i.append(flat[keep])
            out_f.append(f[keep].astype(np.float32))
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(out_i), np.concatenate(out_f)


def paint_tubes(lab: np.ndarray, grid: Grid, label: int, p0, p1, r0, r1=None, over_lut=None) -> np.ndarray:
    """Paint tubes into the label map where they fill at least half a voxel; returns the flat indices."""
    idx, f = tubes(grid, p0, p1, r0, r1)
    idx = idx[f >= 0.5]
    flat = lab.reshape(-1)
    if over_lut is not None:
        idx = idx[over_lut[flat[idx]]]
    flat[idx] = label
    return idx


def polyline(points, radius) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Segments (p0, p1, r0, r1) of a polyline through `points` with per-point radii."""
    pts = np.asarray(points, dtype=np.float64)
    r = np.broadcast_to(np.asarray(radius, dtype=np.float64), (len(pts),))
    return pts[:-1], pts[1:], r[:-1], r[1:]


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], cells: int) -> np.ndarray:
    """Zero-mean, roughly unit random field, smooth on the scale of shape/cells (float32)."""
    coarse = torch.from_numpy(rng.standard_normal((1, 1) + (cells + 1,) * 3).astype(np.float32))
    # torch's trilinear upsampling is ~10x faster than scipy.ndimage.zoom here
    return F.interpolate(coarse, size=shape, mode="trilinear", align_corners=False)[0, 0].numpy()


_M64 = (1 << 64) - 1


def hashed_uniform(key: int, ids: np.ndarray, slot: int) -> np.ndarray:
    """Uniform [0, 1) numbers keyed by (key, id, slot): the same branch gets the same draw at any size."""
    with np.errstate(over="ignore"):
        z = np.asarray(ids, dtype=np.uint64).reshape(-1) * np.uint64(0x9E3779B97F4A7C15)
        z ^= np.uint64((int(key) * 0xD1B54A32D192ED03 + int(slot) * 0x8CB92BA72F3D8DD7) & _M64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)  # splitmix64 finaliser
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)

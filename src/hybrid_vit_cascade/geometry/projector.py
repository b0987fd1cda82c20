"""Differentiable DRR projector: batched line integrals of attenuation volumes for several views.

Method (Joseph 1982, ray-driven): for each view, the volume is cut into the slices across the view's
principal axis (the world axis its central ray runs along). Every ray meets each slice plane in
exactly one point; the volume is sampled there by bilinear interpolation within the slice, and the
samples are summed with the ray's step between planes, ``spacing / |cos θ|`` (θ = angle between ray
and principal axis). The plane intersections are exact for the cone/parallel geometry; the only
approximation is the interpolation model of the volume, as in any voxel projector.

All slices of all B volumes go through ONE ``grid_sample`` call per view (per chunk of slices): the
slices are the batch, the B volumes are the channels, so the per-sample interpolation weights are
computed once and reused for all volumes; the slices are a strided view of the volume (copied only
when that pays, see `_worth_copying`).
Backward is the exact adjoint, once-differentiable (no double backward): on CPU for the axis-aligned
views a separable GEMM + sparse product (`separable_adjoint`), otherwise grid_sample's input
gradient accumulated in place. The sampling grids depend only on (size, spacing, device,
dtype) and are cached, because training calls the projector every step with the same geometry.

Volumes are canonical RAS+ cubes centred at the isocentre (DESIGN.md): ``mu[b, 0, i, j, k]`` is the
voxel whose centre is at ``((i, j, k) - (n - 1) / 2) * spacing`` mm. Outside the cube μ = 0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..config import GeometryConfig
from .separable_adjoint import SeparableAdjoint
from .views import View, make_view, resolve_det_spacing

# Floats per grid_sample chunk (128 MB): bounds temporaries at 256³ while keeping the op count low;
# many small ops are slow on a shared, oversubscribed CPU (each parallel op waits for its threads).
_CHUNK_ELEMENTS = 1 << 25
_MAX_CACHE = 8  # cached geometries (size, spacing, device, dtype)


def _cached(cache: dict, key: tuple, build):
    """cache[key], built on first use; the oldest entry goes once _MAX_CACHE geometries are held."""
    if key not in cache:
        if len(cache) >= _MAX_CACHE:
            cache.pop(next(iter(cache)))
        cache[key] = build()
    return cache[key]


def _slices(vol: Tensor, axis: int) -> Tensor:
    """(B, n, n, n) → (n, B, n, n) view: slices across world `axis` as the batch, volumes as channels."""
    return vol.movedim(axis + 1, 0)  # strided view; grid_sample reads strides


def _worth_copying(axis: int, n: int, P: int) -> bool:
    """Whether to make the slices contiguous before sampling.

    Slices across axis 0 are contiguous planes already. Across axes 1 and 2 the in-slice rows are
    far apart in memory and grid_sample runs ≈2× slower per sample; a copy costs ∝ n³ and the
    penalty ∝ n·P², measured break-even near n ≈ 1.3 P (2 CPU cores, 128³ and 256³).
    """
    return axis != 0 and n * n <= 2 * P * P


class _JosephProjection(torch.autograd.Function):
    """Joseph projection of (B, n, n, n) volumes for V views → (B, V, P, P), with a hand-written adjoint.

    The backward is `SeparableAdjoint` where it applies (CPU, axis-aligned views), else grid_sample's
    own input gradient (the exact adjoint of the forward's bilinear sampling), called per chunk of
    slices and added straight into one gradient buffer, so no volume-sized temporaries are allocated
    per view (autograd's version allocated, concatenated and permuted several).
    """

    @staticmethod
    def forward(ctx, vol: Tensor, axes: list[int], grids: list[Tensor], steps: list[Tensor], adjoint) -> Tensor:
        B, n = vol.shape[0], vol.shape[1]
        P = steps[0].shape[-1]
        chunk = max(1, _CHUNK_ELEMENTS // (B * P * P))  # bounds the (k, B, P, P) sample buffer
        out = vol.new_empty(B, len(axes), P, P)
        for v, (axis, grid, step) in enumerate(zip(axes, grids, steps)):
            slices = _slices(vol, axis)
            if _worth_copying(axis, n, P):
                slices = slices.contiguous()
            acc = out[:, v]
            acc.zero_()
            for k in range(0, n, chunk):
                s = F.grid_sample(
                    slices[k : k + chunk], grid[k : k + chunk], mode="bilinear", padding_mode="zeros", align_corners=False
                )  # (k, B, P, P) samples at the rays' crossings of these slices
                acc += s.sum(0)
            acc *= step  # mm of ray per slice
        # The input gradient of bilinear sampling depends on the grid only, not on the volume's
        # values, so nothing volume-sized is saved for backward.
        ctx.shape = vol.shape
        ctx.axes, ctx.grids, ctx.steps, ctx.adjoint = axes, grids, steps, adjoint
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        fast = ctx.adjoint() if grad_out.device.type == "cpu" else None  # the fast path is measured on CPU only
        if fast is not None:
            return fast.apply(grad_out, ctx.steps), None, None, None, None
        B, n = ctx.shape[0], ctx.shape[1]
        grad_vol = grad_out.new_zeros(ctx.shape)  # (B, n, n, n)
        chunk = min(n, max(1, _CHUNK_ELEMENTS // (B * n * n)))  # bounds the (k, B, n, n) gradient temporaries
        # grid_sampler_2d_backward needs an input only for its shape (values unused for the input
        # gradient); a contiguous one keeps it on its fast vectorised path.
        shape_only = grad_out.new_empty(chunk, B, n, n)
        for v, (axis, grid, step) in enumerate(zip(ctx.axes, ctx.grids, ctx.steps)):
            g = grad_out[:, v] * step  # (B, P, P)
            grad_slices = _slices(grad_vol, axis)
            for k in range(0, n, chunk):
                g_k = grid[k : k + chunk]
                s_k = shape_only[: g_k.shape[0]]
                go = g.expand(g_k.shape[0], *g.shape)  # every slice receives the whole image gradient
                if go.device.type != "cpu":
                    go = go.contiguous()
                gi, _ = torch.ops.aten.grid_sampler_2d_backward(go, s_k, g_k, 0, 0, False, [True, False])
                grad_slices[k : k + chunk] += gi
        return grad_vol, None, None, None, None


class Projector(nn.Module):
    """Line integrals ∫μ dl of (B, 1, D, H, W) attenuation volumes for the configured views."""

    def __init__(self, geometry: GeometryConfig, views: list[str]):
        super().__init__()
        if not views:
            raise ValueError("Projector needs at least one view")
        if len(set(v.lower() for v in views)) != len(views):
            raise ValueError(f"views must be distinct, got {views}")
        self.geometry = geometry
        self.views: list[View] = [make_view(v, geometry) for v in views]
        self._grids: dict[tuple, list[tuple[Tensor, Tensor]]] = {}
        self._v2d: dict[tuple, tuple[Tensor, Tensor]] = {}
        self._adjoints: dict[tuple, SeparableAdjoint | None] = {}

    @property
    def det_pixels(self) -> int:
        return self.geometry.det_pixels

    def det_spacing(self, fov_mm: float) -> float:
        """Detector pixel spacing (mm) used for a volume of physical edge fov_mm."""
        return resolve_det_spacing(self.views[0], fov_mm)

    def extra_repr(self) -> str:
        g = self.geometry
        return f"views={[v.name for v in self.views]}, kind={g.kind}, sid={g.sid}, sdd={g.sdd}, P={g.det_pixels}"

    # ------------------------------------------------------------------ sampling grids
    def _sampling(self, n: int, spacing_mm: float, device, dtype) -> list[tuple[Tensor, Tensor]]:
        """Per view: grid (n, P, P, 2) in grid_sample coords of each slice, step (P, P) in mm."""
        key = (n, float(spacing_mm), str(device), dtype)
        return _cached(self._grids, key, lambda: [self._view_grid(v, n, spacing_mm, device, dtype) for v in self.views])

    @staticmethod
    def _view_grid(view: View, n: int, spacing_mm: float, device, dtype) -> tuple[Tensor, Tensor]:
        half = n * spacing_mm / 2  # mm, half the cube edge (voxel edges, not centres)
        origin, ray = view.rays(resolve_det_spacing(view, 2 * half))  # (P, P, 3) each, float64 mm
        a = view.principal_axis
        b, c = [i for i in range(3) if i != a]  # slice array axes (rows b, columns c)
        if bool((ray[..., a].abs() < 1e-12).any()):
            raise ValueError(f"view {view.name}: a ray runs parallel to its slices")
        planes = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * spacing_mm  # (n,) slice centres, mm
        # In-plane coordinates of each ray's crossing with plane z (ray parameter t = (z − o_a) / r_a):
        # g = (o + t·r) / half = A + z·B per pixel, with A = (o − o_a·r/r_a) / half, B = r / (r_a·half),
        # both (P, P, 2) in float64; only the (n, P, P, 2) product is formed in `dtype` — at 256 slices
        # of a 620² film detector, float64 (n, P, P) temporaries took 15 s where this takes a fraction.
        # grid_sample (align_corners=False) wants x = the last input dim (c), y = the one before (b),
        # ±1 = the outer voxel edges (±half mm).
        inv = 1.0 / ray[..., a]  # (P, P)
        o2, r2 = origin[..., [c, b]], ray[..., [c, b]]  # (P, P, 2) as (x, y)
        A = ((o2 - origin[..., a, None] * r2 * inv[..., None]) / half).to(dtype)
        B = (r2 * inv[..., None] / half).to(dtype)
        grid = torch.addcmul(A.expand(n, *A.shape), planes.to(dtype)[:, None, None, None], B)  # (n, P, P, 2)
        step = spacing_mm * ray.norm(dim=-1) / ray[..., a].abs()  # (P, P) mm of ray per slice
        return grid.to(device=device), step.to(device=device, dtype=dtype)

    # ------------------------------------------------------------------ forward
    def forward(self, mu: Tensor, spacing_mm: float) -> Tensor:
        """(B, 1, D, H, W) attenuation in 1/mm on a cube of `spacing_mm` voxels → (B, V, P, P) line integrals.

        Non-finite μ propagate to the pixels whose rays meet them (so a trainer can count and skip
        bad steps); CTs are checked for NaN/Inf when read (`data.io.read_ct`).
        """
        if mu.dim() != 5 or mu.shape[1] != 1:
            raise ValueError(f"mu must be (B, 1, D, H, W), got shape {tuple(mu.shape)}")
        B, _, D, H, W = mu.shape
        if not (D == H == W):
            raise ValueError(f"mu must be a canonical cube (D == H == W), got {(D, H, W)}")
        if not mu.is_floating_point():
            raise ValueError(f"mu must be a floating-point tensor, got {mu.dtype}")
        if not (isinstance(spacing_mm, (int, float)) and math.isfinite(spacing_mm) and spacing_mm > 0):
            raise ValueError(f"spacing_mm must be a positive number (mm), got {spacing_mm!r}")
        if mu.dtype in (torch.float16, torch.bfloat16):
            mu = mu.float()  # line integrals sum hundreds of samples: half precision is too coarse
        n = D
        tables = self._sampling(n, spacing_mm, mu.device, mu.dtype)
        axes = [v.principal_axis for v in self.views]
        vol = mu.reshape(B, n, n, n)  # a view: its backward is free, unlike mu[:, 0]
        grids = [g for g, _ in tables]
        key = (n, float(spacing_mm), str(mu.device), mu.dtype)

        def adjoint() -> SeparableAdjoint | None:
            # built at the first backward only: inference never pays for the tap matrices
            return _cached(self._adjoints, key, lambda: SeparableAdjoint.build(axes, grids))

        return _JosephProjection.apply(vol, axes, grids, [s for _, s in tables], adjoint)  # (B, V, P, P)

    # ------------------------------------------------------------------ voxel → detector
    def voxel_to_detector(self, shape: int, spacing_mm: float, device=None) -> tuple[Tensor, Tensor]:
        """Where each voxel centre projects: uv (V, D, H, W, 2) grid_sample coords, depth (V, D, H, W).

        uv follows ``grid_sample(..., align_corners=False)`` on a (P, P) image: x = column, y = row,
        ±1 = the outer edges of the first/last pixel. depth is the voxel's signed distance along the
        view axis from the isocentre plane divided by half the cube edge: −1 at the cube face nearest
        the source, +1 at the face nearest the detector. float32, on `device` (default CPU).
        """
        n = int(shape)
        if n <= 0 or not spacing_mm > 0:
            raise ValueError(f"need a positive shape and spacing, got shape={shape}, spacing_mm={spacing_mm}")
        key = (n, float(spacing_mm), str(device))
        return _cached(self._v2d, key, lambda: self._voxel_to_detector(n, spacing_mm, device))

    def _voxel_to_detector(self, n: int, spacing_mm: float, device) -> tuple[Tensor, Tensor]:
        # voxel_to_detector's uncached computation (float64 geometry, float32 result)
        half = n * spacing_mm / 2
        c = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * spacing_mm  # voxel centres, mm
        pts = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), dim=-1)  # (n, n, n, 3) RAS+ mm
        P = self.det_pixels
        uvs, depths = [], []
        for view in self.views:
            col, row, axial = view.project(pts, resolve_det_spacing(view, 2 * half))
            uvs.append(torch.stack([(2 * col + 1) / P - 1, (2 * row + 1) / P - 1], dim=-1))
            depths.append(axial / half)
        uv = torch.stack(uvs).to(device=device, dtype=torch.float32)  # (V, n, n, n, 2)
        depth = torch.stack(depths).to(device=device, dtype=torch.float32)  # (V, n, n, n)
        return uv, depth

"""Put any CT onto the canonical grid: RAS+ axes, isotropic voxels, a fixed-size cube around the body.

`canonicalize` does reorientation, isotropic resampling and crop/pad in ONE interpolation (an
affine map from the output grid into the source voxels), after an anti-aliasing prefilter whose
width matches the downsampling factor per axis. `resize_cube` moves a canonical cube between
stage resolutions (area averaging for integer factors, Gaussian prefilter + trilinear otherwise);
both keep the cube's physical extent, so voxel centres stay at ((i - (n-1)/2) * fov/n) mm.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .io import CTVolume

AIR_HU = -1024.0  # pad value and floor: scanner padding (-2048, -3024) is air, not "denser vacuum"
BODY_THRESHOLD_HU = -500.0  # body = largest connected region above this (excludes air, lungs inside stay enclosed)


def body_center(ct: CTVolume, threshold_hu: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """World (RAS+, mm) point the cube is centred on: body box centre in-plane, lungs' centre in z.

    The body is the largest connected region above `threshold_hu` (the table and stray objects are
    smaller and disconnected). Along z the cube is centred on the lungs (air enclosed by the body in
    each axial slice), so a chest–abdomen scan still yields a chest cube; without lungs, on the body.
    """
    # Work on a ~4 mm subsampled grid: enough to locate the body, and fast for 512² × 300 scans.
    step = np.array([max(1, int(4.0 // s)) for s in ct.spacing])
    hu = ct.hu[:: step[0], :: step[1], :: step[2]]
    labels, n = ndimage.label(hu > threshold_hu)
    if n == 0:  # nothing above threshold: fall back to the scan's centre
        centre_idx = (np.array(ct.hu.shape, dtype=float) - 1) / 2.0
        return ct.affine[:3, :3] @ centre_idx + ct.affine[:3, 3]
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body_label = int(np.argmax(sizes))
    sl = ndimage.find_objects(labels)[body_label - 1]
    lo = np.array([s.start for s in sl], dtype=float)
    hi = np.array([s.stop for s in sl], dtype=float) - 1
    body = labels == body_label
    # Enclosed air per axial slice: fill holes with in-plane connectivity only.
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    enclosed = ndimage.binary_fill_holes(body, structure=in_plane) & ~body & (hu < -400.0)
    air_labels, n_air = ndimage.label(enclosed)
    voxel_ml = float(np.prod(np.array(ct.spacing) * step)) / 1000.0
    if n_air:
        air_sizes = np.bincount(air_labels.ravel())
        air_sizes[0] = 0
        if air_sizes.max() * voxel_ml > 100.0:  # at least one lung's worth of air
            lungs = np.isin(air_labels, np.flatnonzero(air_sizes >= 0.2 * air_sizes.max()))
            z = np.flatnonzero(lungs.any(axis=(0, 1)))
            lo[2], hi[2] = z.min(), z.max()
    centre_idx = (lo + hi) / 2.0 * step
    return ct.affine[:3, :3] @ centre_idx + ct.affine[:3, 3]


def _block_mean(hu: np.ndarray, affine: np.ndarray, k: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Average k_i × ... blocks (exact box anti-aliasing) and return the matching affine."""
    if all(ki == 1 for ki in k):
        return hu, affine
    n = [s // ki * ki for s, ki in zip(hu.shape, k)]
    hu = hu[: n[0], : n[1], : n[2]].reshape(n[0] // k[0], k[0], n[1] // k[1], k[1], n[2] // k[2], k[2])
    hu = hu.mean(axis=(1, 3, 5), dtype=np.float32)
    new = affine.copy()
    new[:3, :3] = affine[:3, :3] * np.array(k, dtype=float)[None, :]
    new[:3, 3] = affine[:3, :3] @ ((np.array(k, dtype=float) - 1) / 2.0) + affine[:3, 3]  # block centre
    return hu, new


def canonicalize(ct: CTVolume, fov_mm: float, size: int, center_mm: np.ndarray | None = None) -> np.ndarray:
    """Resample a CT onto a size³ RAS+ cube of edge fov_mm centred on the body; HU float32, −1024 outside."""
    if size <= 0 or fov_mm <= 0:
        raise ValueError(f"size and fov_mm must be positive, got size={size}, fov_mm={fov_mm}")
    centre = body_center(ct) if center_mm is None else np.asarray(center_mm, dtype=float)
    out_sp = fov_mm / size  # mm, isotropic
    hu = np.maximum(ct.hu, AIR_HU).astype(np.float32, copy=False)
    affine = ct.affine

    # Crop the source to the part the cube can see (plus a margin for the filter) before filtering.
    corners = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=float)
    world = centre + corners * (fov_mm / 2.0 + 4 * out_sp)
    inv = np.linalg.inv(affine)
    vox = world @ inv[:3, :3].T + inv[:3, 3]
    lo = np.clip(np.floor(vox.min(0)).astype(int), 0, np.array(hu.shape))
    hi = np.clip(np.ceil(vox.max(0)).astype(int) + 1, 0, np.array(hu.shape))
    if np.any(hi - lo < 1):
        return np.full((size,) * 3, AIR_HU, dtype=np.float32)  # the cube misses the scan entirely
    hu = hu[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    affine = affine.copy()
    affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]

    # Anti-aliasing: integer block averaging, then a Gaussian for the remaining factor
    # (sigma = (f - 1) / 2 voxels, as skimage.transform.resize).
    factor = out_sp / np.linalg.norm(affine[:3, :3], axis=0)
    k = [max(1, min(int(f), s)) for f, s in zip(factor, hu.shape)]
    hu, affine = _block_mean(hu, affine, k)
    sigma = np.maximum(0.0, (out_sp / np.linalg.norm(affine[:3, :3], axis=0) - 1.0) / 2.0)
    if np.any(sigma > 0.05):
        hu = ndimage.gaussian_filter(hu, sigma=sigma, mode="nearest", truncate=3.0)

    # Output voxel (i, j, k) sits at world centre + ((i, j, k) - (size-1)/2) * out_sp (RAS+ mm).
    inv = np.linalg.inv(affine)
    matrix = inv[:3, :3] * out_sp
    offset = inv[:3, :3] @ (centre - (size - 1) / 2.0 * out_sp) + inv[:3, 3]
    out = ndimage.affine_transform(
        hu, matrix, offset=offset, output_shape=(size,) * 3, order=1, mode="constant", cval=AIR_HU, prefilter=False
    )
    return out.astype(np.float32, copy=False)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    r = max(1, int(np.ceil(3.0 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur3d(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, 1, D, H, W) with replicate padding."""
    k = _gaussian_kernel(sigma).to(x)
    r = (k.numel() - 1) // 2
    for dim in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + dim] = k.numel()
        pad = [0] * 6
        pad[2 * (2 - dim)] = pad[2 * (2 - dim) + 1] = r  # F.pad lists the last dim first
        x = F.conv3d(F.pad(x, pad, mode="replicate"), k.view(shape))
    return x


def resize_cube(arr, size: int):
    """Resize a canonical cube (numpy (n,n,n) or torch (..., n,n,n)) to size³, same physical extent."""
    is_numpy = isinstance(arr, np.ndarray)
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)) if is_numpy else arr
    lead = x.shape[:-3]
    n = x.shape[-1]
    if not (x.shape[-3] == x.shape[-2] == n):
        raise ValueError(f"resize_cube expects a cube, got shape {tuple(x.shape)}")
    x5 = x.reshape(-1, 1, n, n, n)
    if size == n:
        y = x5.clone()
    elif size < n and n % size == 0:
        y = F.avg_pool3d(x5, kernel_size=n // size)  # area averaging: exact box anti-aliasing
    elif size < n:
        y = F.interpolate(_blur3d(x5, (n / size - 1.0) / 2.0), size=(size,) * 3, mode="trilinear", align_corners=False)
    else:
        y = F.interpolate(x5, size=(size,) * 3, mode="trilinear", align_corners=False)
    y = y.reshape(*lead, size, size, size)
    return y.numpy() if is_numpy else y

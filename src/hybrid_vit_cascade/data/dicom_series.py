"""Read a CT's DICOM series: find the CT image series below a folder, and stack one into a `CTVolume` (RAS+).

Split out of io.py (which re-exports `find_dicom_series` and `read_dicom_series`); every problem with a
slice or the stack raises `CTReadError` naming the file or folder.
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from .io import DICOM_SUFFIXES, LPS_TO_RAS, CTReadError, CTVolume, has_dicom_preamble


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(
        f for f in folder.iterdir()
        if f.is_file() and (f.name.lower().endswith(DICOM_SUFFIXES) or has_dicom_preamble(f))
    )


def find_dicom_series(root: str | os.PathLike, skipped: list[dict] | None = None) -> list[tuple[Path, str, list[Path]]]:
    """All DICOM image series below `root`: (folder, SeriesInstanceUID, files), CT image series only.

    Image series of another modality (MR, PT, ...) are appended to `skipped` as {source, reason}.
    """
    import pydicom

    out = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        folder = Path(dirpath)
        files = _dicom_files(folder)
        if not files:
            continue
        groups: dict[str, list[Path]] = defaultdict(list)
        modality: dict[str, str] = {}
        for f in files:
            try:
                ds = pydicom.dcmread(
                    f, stop_before_pixels=True,
                    specific_tags=["SeriesInstanceUID", "Modality", "ImagePositionPatient", "ImageType", "Rows"],
                )
            except Exception:
                groups["?unreadable"].append(f)  # reported when the series is read
                continue
            # A slice with pixels but no position stays in its series, so reading it names the missing tag
            # (dropped, it would be reported as a gap between its neighbours, or silently shorten the scan).
            if "ImagePositionPatient" not in ds and "Rows" not in ds and "SeriesInstanceUID" in ds:
                continue  # not an image slice (e.g. a structured report in the same folder)
            if any(str(t).upper() == "LOCALIZER" for t in ds.get("ImageType", [])):
                continue  # scout views are 2D projections, not slices of the volume
            uid = str(ds.get("SeriesInstanceUID", "?unknown"))
            groups[uid].append(f)
            modality[uid] = str(ds.get("Modality", ""))
        for uid, fs in groups.items():
            if modality.get(uid, "CT") in ("CT", ""):
                out.append((folder, uid, fs))
            elif skipped is not None:
                skipped.append({"source": str(folder),
                                "reason": f"modality {modality[uid]}: not a CT (series {uid}, {len(fs)} file(s))"})
    return out


def _tag_numbers(f: Path, ds, tag: str, n: int, default: float | None = None) -> np.ndarray:
    """DICOM tag `tag` of slice `f` as `n` finite numbers (`default` if absent); else CTReadError naming both."""
    if tag not in ds:
        if default is None:
            raise CTReadError(f, f"missing DICOM tag {tag}")
        return np.full(n, default)
    from pydicom.multival import MultiValue

    value = None
    try:  # a damaged tag can fail already on access (pydicom converts lazily)
        value = ds[tag].value
        items = value if isinstance(value, (list, tuple, MultiValue)) else [value]
        nums = np.array([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        nums = None
    if nums is None or nums.shape != (n,) or not np.isfinite(nums).all():
        raise CTReadError(f, f"DICOM tag {tag} must hold {n} finite number(s), got {str(value)[:60]!r}")
    return nums


def read_dicom_series(folder: str | os.PathLike, files: list[Path] | None = None) -> CTVolume:
    """Read one DICOM series: exactly `files` if given, else the largest series in `folder`."""
    import pydicom

    folder = Path(folder)
    other: list[dict] = []  # image series of other modalities, to say why nothing was found
    if files:
        series = [(folder, "", list(files))]
    else:
        series = [s for s in find_dicom_series(folder, skipped=other) if s[0] == folder]
    if not series:
        why = [o["reason"] for o in other if o["source"] == str(folder)]
        raise CTReadError(folder, "; ".join(why) if why else "no DICOM CT image files in this folder")
    _, uid, files = max(series, key=lambda s: len(s[2]))
    if uid == "?unreadable":
        raise CTReadError(folder, f"unreadable DICOM file(s): {', '.join(f.name for f in files[:3])}")

    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
            pix = ds.pixel_array
        except Exception as err:
            raise CTReadError(f, f"unreadable DICOM slice ({type(err).__name__}: {err})") from None
        if pix.ndim != 2:
            raise CTReadError(f, f"expected one 2D frame per file, got pixel array of shape {pix.shape}")
        for tag, n in (("ImagePositionPatient", 3), ("ImageOrientationPatient", 6), ("PixelSpacing", 2)):
            _tag_numbers(f, ds, tag, n)
        slope = float(_tag_numbers(f, ds, "RescaleSlope", 1, default=1.0)[0])
        intercept = float(_tag_numbers(f, ds, "RescaleIntercept", 1, default=0.0)[0])
        slices.append((f, ds, pix.astype(np.float32) * slope + intercept))

    if len(slices) < 2:
        raise CTReadError(folder, "a single DICOM slice is a 2D image, not a CT volume")
    ds0 = slices[0][1]
    iop = np.array(ds0.ImageOrientationPatient, dtype=np.float64)
    row_cos, col_cos = iop[:3], iop[3:]  # LPS directions of increasing column / increasing row
    normal = np.cross(row_cos, col_cos)
    for f, ds, pix in slices:
        if not np.allclose(np.array(ds.ImageOrientationPatient, dtype=np.float64), iop, atol=1e-4):
            raise CTReadError(f, "slice orientation differs from the rest of the series")
        if not np.allclose(_tag_numbers(f, ds, "PixelSpacing", 2), _tag_numbers(f, ds0, "PixelSpacing", 2), rtol=1e-3):
            raise CTReadError(f, "pixel spacing differs from the rest of the series")
        if pix.shape != slices[0][2].shape:
            raise CTReadError(f, f"slice size {pix.shape} differs from the series' {slices[0][2].shape}")

    pos = np.array([np.array(ds.ImagePositionPatient, dtype=np.float64) for _, ds, _ in slices])
    order = np.argsort(pos @ normal)
    slices = [slices[i] for i in order]
    pos = pos[order]
    dist = pos @ normal
    gaps = np.diff(dist)
    step = float(np.median(gaps))
    if step <= 1e-6:
        raise CTReadError(folder, "duplicate slice positions (several slices at the same location)")
    bad = np.flatnonzero(np.abs(gaps - step) > 0.2 * step + 1e-3)
    if bad.size:
        i = int(bad[0])
        if gaps[i] < 0.2 * step:
            raise CTReadError(folder, f"two slices at the same position: {slices[i][0].name} and {slices[i + 1][0].name}")
        n_missing = int(round(gaps[i] / step)) - 1
        what = f"{n_missing} missing slice(s)" if n_missing >= 1 else "irregular slice spacing"
        raise CTReadError(
            folder,
            f"{what}: gap of {gaps[i]:.2f} mm between {slices[i][0].name} and {slices[i + 1][0].name} "
            f"(regular spacing {step:.2f} mm)",
        )

    # Voxel (i=column, j=row, k=slice) -> LPS: p0 + i*dc*row_cos + j*dr*col_cos + k*slice_vec.
    dr, dc = (float(v) for v in ds0.PixelSpacing)  # (between rows, between columns), mm
    slice_vec = (pos[-1] - pos[0]) / (len(pos) - 1)  # LPS mm per slice (keeps any gantry tilt)
    # Every slice must sit on one line (a straight, possibly tilted stack): one shifted in-plane (mixed series,
    # moved table) would otherwise be stacked as if aligned. Least-squares line, so an end slice is named too.
    design = np.stack([np.ones_like(dist), dist - dist[0]], axis=1)
    far = np.linalg.norm(pos - design @ np.linalg.lstsq(design, pos, rcond=None)[0], axis=1)
    if far.max() > 0.5 * min(dr, dc):
        i = int(np.argmax(far))
        raise CTReadError(folder, f"slice {slices[i][0].name} lies ~{far[i]:.2f} mm off the line of the other slices' "
                                  "positions (ImagePositionPatient): not one straight stack")
    lps = np.eye(4)
    lps[:3, 0] = row_cos * dc
    lps[:3, 1] = col_cos * dr
    lps[:3, 2] = slice_vec
    lps[:3, 3] = pos[0]
    hu = np.stack([pix.T for _, _, pix in slices], axis=-1)  # (cols, rows, slices)
    meta = {
        "patient_id": str(ds0.get("PatientID", "")),
        "series_uid": str(ds0.get("SeriesInstanceUID", "")),
        "n_slices": len(slices),
    }
    return CTVolume(hu=np.ascontiguousarray(hu, dtype=np.float32), affine=LPS_TO_RAS @ lps, source=str(folder), meta=meta)

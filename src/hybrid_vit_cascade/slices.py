"""Slices of a canonical cube: their names and how they are shown (one convention for every figure).

Canonical arrays are RAS+ (DESIGN.md "Frames"): slices along array axis 0 (x, R) are sagittal,
along axis 1 (y, A) coronal, along axis 2 (z, S) axial. Slices are displayed radiologically, as a
radiologist reads them: axial seen from the feet, anterior at the top and the patient's right on the
image's left; coronal superior at the top, patient's right on the left; sagittal superior at the
top, anterior on the left.
"""
from __future__ import annotations

import numpy as np

AXIS_NAMES = ("sagittal", "coronal", "axial")  # the plane of the slices across array axis 0, 1, 2


def display_slice(vol: np.ndarray, plane: str, index: int | None = None) -> np.ndarray:
    """Slice `index` (default: the middle) of a RAS+ cube in `plane` (one of AXIS_NAMES), in display orientation."""
    if plane not in AXIS_NAMES:
        raise ValueError(f"unknown plane {plane!r}; expected one of {', '.join(AXIS_NAMES)}")
    axis = AXIS_NAMES.index(plane)
    idx = vol.shape[axis] // 2 if index is None else index
    s = np.take(vol, idx, axis=axis)  # remaining axes in RAS order, e.g. (x, y) for axial
    # Row 0 = high second axis (A or S), column 0 = high first axis (R, or A for sagittal).
    return s[::-1, ::-1].T

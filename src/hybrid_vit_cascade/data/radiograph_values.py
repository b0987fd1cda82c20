"""A DICOM radiograph's stored pixels as values, bright = attenuating (radiograph.py step 1), and the file read.

Modality LUT / rescale, the log of a film linear in exposure, the VOI LUT or window ("for presentation"),
MONOCHROME1 negated, PixelPaddingValue pixels read as air; the compressed syntaxes' decoders checked.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Sequence as SequenceABC
from typing import Optional

import numpy as np

# The fewest pixels a side of a film may have. A radiograph has thousands a side, even a downsampled export
# hundreds; a film of a few pixels is a damaged header or an icon, and the collimation, body and field searches
# that follow need lines to work on (a 1×1 film ended in an IndexError there). Not more: pydicom's 50×10 JPEG-LS
# sample is read in the decoder tests.
MIN_FILM_PIXELS = 8


def as_values(v) -> list:
    """A DICOM element's value as a list: a multi-valued one's items, a single value (text too) alone, [] if absent."""
    if v is None:
        return []
    return list(v) if isinstance(v, SequenceABC) and not isinstance(v, (str, bytes)) else [v]


class XrayReadError(ValueError):
    """An X-ray file could not be used; `path` and `reason` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), " ".join(str(reason).splitlines())  # one line, even quoting a library
        super().__init__(f"{self.path}: {self.reason}")


def _load_decoder(ds, path: str) -> None:
    """Import the plugin pydicom decodes this file's compressed pixel data with; a clear error when it is missing.

    Clinical CR/DX exports are often JPEG (baseline, 12-bit extended, lossless), JPEG 2000 or JPEG-LS;
    RLE and uncompressed data need nothing beyond pydicom.
    """
    from pydicom import uid

    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    for family, module, package in ((uid.JPEGTransferSyntaxes, "libjpeg", "pylibjpeg-libjpeg"),
                                    (uid.JPEG2000TransferSyntaxes, "openjpeg", "pylibjpeg-openjpeg"),
                                    (uid.JPEGLSTransferSyntaxes, "jpeg_ls", "pyjpegls")):
        if syntax in family:
            try:
                importlib.import_module(module)
            except ImportError:
                raise XrayReadError(path, f"{syntax.name} pixel data needs the {package} decoder "
                                          f"(pip install {package})") from None


def _lut(values: np.ndarray, item, ds, what: str, path: str) -> np.ndarray:
    """A Modality / VOI LUT Sequence item applied to `values` (entries from the descriptor's first value, clamped).

    Not pydicom's: pydicom 3.0 indexes with the entries' own dtype, so a VOI LUT of 4096 8-bit entries
    (a 12-bit film to 8-bit display) wraps its indices modulo 256, and a 12-bit Modality LUT fails.
    """
    try:
        n, first, bits = (int(v) for v in item.LUTDescriptor)
        data = item["LUTData"].value
    except (AttributeError, KeyError, TypeError, ValueError):
        raise XrayReadError(path, f"{what} item without a valid LUTDescriptor and LUTData") from None
    n = n or 65536
    if isinstance(data, (bytes, bytearray)):
        big = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", "")) == "1.2.840.10008.1.2.2"
        table = np.frombuffer(data, np.uint8 if bits == 8 and len(data) < 2 * n else ">u2" if big else "<u2")
    else:
        table = np.atleast_1d(np.asarray(data, dtype=np.float64))
    if table.size < n:
        raise XrayReadError(path, f"{what} has {table.size} entries but its LUTDescriptor says {n}")
    idx = np.clip(np.floor(values) - first, 0, n - 1).astype(np.int64)
    return table[:n].astype(np.float64)[idx]


def _padding(arr: np.ndarray, ds) -> Optional[np.ndarray]:
    """Pixels at PixelPaddingValue (up to PixelPaddingRangeLimit): outside the image (e.g. a rotated film's corners)."""
    value, limit = ds.get("PixelPaddingValue"), ds.get("PixelPaddingRangeLimit")
    if not isinstance(value, (int, np.integer)):
        return None
    lo, hi = (value, value) if not isinstance(limit, (int, np.integer)) else sorted((value, limit))
    pad = (arr >= lo) & (arr <= hi)
    return pad if pad.any() else None


def padded_border(pad: np.ndarray) -> np.ndarray:
    """The border rows and columns that are padding from end to end (from each side inward)."""
    out = np.zeros_like(pad)
    for lines, axis in ((pad.all(1), 0), (pad.all(0), 1)):  # not all True: a film all padding is refused
        n, first, last = len(lines), int(np.argmin(lines)), int(np.argmin(lines[::-1]))
        out[(slice(None),) * axis + (np.r_[0:first, n - last:n],)] = True
    return out


def film_values(ds, path: str, info: dict) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Stored pixels → (bright-is-attenuating values, padding mask): modality LUT, log of LIN, VOI, MONOCHROME1."""
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_modality_lut, apply_windowing

    _load_decoder(ds, path)
    try:
        arr = ds.pixel_array
    except Exception as err:  # a syntax no decoder handles, truncated data, ...
        raise XrayReadError(path, f"cannot decode DICOM pixel data ({err})") from None
    if arr.ndim != 2:
        raise XrayReadError(path, f"unexpected DICOM pixel layout {arr.shape} for a greyscale radiograph")
    if min(arr.shape) < MIN_FILM_PIXELS:
        raise XrayReadError(path, f"a film of {arr.shape[0]}×{arr.shape[1]} pixels is too small for a radiograph "
                                  f"(at least {MIN_FILM_PIXELS}×{MIN_FILM_PIXELS})")
    pad = _padding(arr, ds)
    if pad is not None and pad.all():
        raise XrayReadError(path, f"every pixel is PixelPaddingValue {ds.PixelPaddingValue}: no image")
    modality_lut = next(iter(ds.get("ModalityLUTSequence") or []), None)
    px = (_lut(arr, modality_lut, ds, "ModalityLUTSequence", path) if modality_lut is not None
          else np.asarray(apply_modality_lut(arr, ds), dtype=np.float64))
    info["modality_lut"] = ("ModalityLUTSequence" if "ModalityLUTSequence" in ds else
                            {"slope": float(ds.get("RescaleSlope", 1) or 1), "intercept": float(ds.get("RescaleIntercept", 0) or 0)})
    relation = str(ds.get("PixelIntensityRelationship", "")).upper() or None
    sign = ds.get("PixelIntensityRelationshipSign")
    info["intensity_relationship"] = relation
    if relation == "LIN" and sign in (None, 1):
        # proportional to the beam intensity behind the patient: −log is the line integral (+ a constant)
        px = np.log(np.maximum(px, max(float(px.max()), 1.0) * 1e-6))
        info["log_applied"] = True
    intent = str(ds.get("PresentationIntentType", "")).upper() or None
    info["presentation_intent"] = intent
    if intent != "FOR PROCESSING":
        voi_lut = next(iter(ds.get("VOILUTSequence") or []), None)
        if voi_lut is not None and "LUTDescriptor" in voi_lut and "LUTData" in voi_lut:
            info["voi"] = "VOI LUT sequence"
            px = _lut(px, voi_lut, ds, "VOILUTSequence", path)
        elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
            # several windows (and the two counts may differ): the first of each, as pydicom applies them
            c, w = as_values(ds.WindowCenter), as_values(ds.WindowWidth)
            info["voi"] = {"window_center": float(c[0]), "window_width": float(w[0]),
                           "function": str(ds.get("VOILUTFunction", "LINEAR"))}
            # pydicom scales the window's output by the rescale slope: a negative slope would flip it
            window = Dataset()
            for key in ("WindowCenter", "WindowWidth", "VOILUTFunction", "BitsStored", "PixelRepresentation",
                        "PhotometricInterpretation"):
                if key in ds:
                    window[key] = ds[key]
            px = np.asarray(apply_windowing(px, window), dtype=np.float64)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    info["photometric"], info["inverted"] = photometric, photometric == "MONOCHROME1"
    if photometric == "MONOCHROME1":
        px = -px  # low values display bright: negated, attenuating is bright
    if pad is not None:
        # Padding is no exposure: read as the film's air, its darkest value (whole padded border lines are
        # excluded from the usable area by read_radiograph, like collimation).
        px[pad] = px[~pad].min()
        info["padding_px"] = int(pad.sum())
        info["notes"].append(f"{int(pad.sum())} pixels of PixelPaddingValue (outside the image) read as air")
    if sign is not None and float(ds.get("RescaleSlope", 1) or 1) > 0 and (sign == 1) != (photometric == "MONOCHROME1") \
            and relation != "LIN":
        info["warnings"].append(f"PixelIntensityRelationshipSign {sign} contradicts {photometric}; "
                                "the photometric interpretation was followed")
    if str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE" and photometric == "MONOCHROME2":
        # DX requires IDENTITY with MONOCHROME2; viewers disagree on what INVERSE then means
        info["warnings"].append("PresentationLUTShape INVERSE with MONOCHROME2: read as MONOCHROME2 (low values "
                                "dark); check that the body is bright in the film the model gets")
    return px, pad


def read_dicom(path: str):
    """pydicom's dataset of `path`, also of a file written without the Part 10 preamble and 'DICM' marker."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        pass
    except (OSError, ValueError) as err:
        raise XrayReadError(path, f"not a readable DICOM file ({err})") from None
    try:  # older exports store the bare data set: read it raw, and keep it only if it holds an image
        ds = pydicom.dcmread(path, force=True)
        if "PixelData" in ds and "Rows" in ds:
            if "TransferSyntaxUID" not in ds.file_meta:  # no file meta: the encoding pydicom found is the syntax
                implicit, little = ds.original_encoding
                ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian if implicit else (
                    pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian)
            return ds
    except Exception:  # noqa: BLE001 — whatever a forced read of a non-DICOM file raises, it is no DICOM image
        pass
    raise XrayReadError(path, "not a readable DICOM file (no DICOM preamble, and no image data set without one)")

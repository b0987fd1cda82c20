"""Read X-rays for inference and bring them to the model's normalisation (INFERENCE.md "Inputs").

Two kinds of input:
- **line integrals** ∫μ dl (dimensionless): `.npy`, NIfTI, and 16-bit PNGs written by `hvc drr`
  (`write_drr_png` stores the scale in the PNG's text chunks, so they invert to line integrals up
  to 16-bit quantisation). These become `xray = 2 * li / li_max - 1` with the checkpoint's li_max —
  exactly what the training DRRs went through.
- **display radiographs** (PNG/JPEG/TIFF 8/16-bit, DICOM CR/DX) whose pixels are processed
  intensities, not line integrals. They are mapped to [-1, 1] by robust percentiles — the
  `LOW_PCT` percentile to -1 and the `HIGH_PCT` percentile to 1 (bright = attenuating).
  This is an approximation: clinical processing (log, unsharp masking, LUTs) is not undone, so
  expect a domain gap. Greyscale DICOM films are read by `data/radiograph.py` (modality and
  VOI LUTs, MONOCHROME1, view, orientation, physical scale, collimation); given the checkpoint's
  field (`field=`), `data/radiograph_fit.py` crops them to the model's physical field and
  histogram-matches them to the training X-rays instead.

Arrays are `(H, W)` in radiographic display orientation (DESIGN.md "Views"): row 0 superior; AP:
column 0 = patient right; lateral: column 0 = anterior. `.npy` arrays are taken as stored, `(H, W)`
(or `(V, H, W)` for all views in one file, as `hvc drr` writes `<ct>_li.npy`). NIfTI images follow
the NIfTI/viewer convention that `hvc drr` writes: array axis 0 = image column (x, left → right),
axis 1 = image row counted from the bottom (y up), an optional axis 2 = view; they are turned into
`(H, W)` by `a[:, ::-1].T`. Non-square images are centre-cropped to a square, then resampled to
the detector's `det_pixels`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hybrid_vit_cascade.data.io import DICOM_SUFFIXES, NIFTI_SUFFIXES, has_dicom_preamble
from hybrid_vit_cascade.data.radiograph import XrayReadError  # noqa: F401 (raised here; importers find it here)
from hybrid_vit_cascade.data.xray_stats import percentile_normalize
from hybrid_vit_cascade.files import atomic_write

# Text chunks of the PNGs written by `write_drr_png`.
PNG_ENCODING_KEY, PNG_ENCODING = "hvc-encoding", "line-integral-uint16-v1"
PNG_LI_MAX_KEY, PNG_VIEW_KEY = "hvc-li-max", "hvc-view"
PNG_RENDER_KEY = "hvc-render"  # JSON of data/render.render_settings: what the DRR was rendered with
COLOUR_TOLERANCE = 0.02  # channel spread (99th pct) above 2% of the range = a colour image


@dataclass
class RawXray:
    """One view as read from disk, before normalisation."""

    path: str
    kind: str  # "line_integral" or "intensity" (bright = attenuating)
    pixels: np.ndarray  # (H, W) float64
    view: str | None = None  # view recorded in the file itself (hvc PNGs), if any
    note: str = ""  # how the file was interpreted, for the log
    render: dict | None = None  # render settings recorded in the file (hvc PNGs), checked against the model
    radiograph: object = None  # a clinical DICOM film: data.radiograph.Radiograph (header, scale, collimation)
    info: dict | None = None  # what was inferred for a film on its way into the model (radiograph_fit)


# ------------------------------------------------------------------------------------- writing


def write_drr_png(path: str | os.PathLike, li: np.ndarray, view: str | None = None,
                  render: dict | None = None) -> None:
    """Save line integrals (H, W) as a 16-bit PNG that `read_xray` inverts (bright = attenuating)."""
    from PIL import Image, PngImagePlugin

    li = np.asarray(li, dtype=np.float64)
    if li.ndim != 2 or not np.isfinite(li).all():
        raise ValueError(f"line integrals must be a finite (H, W) array, got shape {li.shape}")
    li_max = float(max(li.max(), 1e-12))
    q = np.round(np.clip(li, 0, None) / li_max * 65535.0).astype(np.uint16)
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_ENCODING_KEY, PNG_ENCODING)
    info.add_text(PNG_LI_MAX_KEY, repr(li_max))
    if view:
        info.add_text(PNG_VIEW_KEY, view)
    if render is not None:
        info.add_text(PNG_RENDER_KEY, json.dumps(render, sort_keys=True))
    atomic_write(path, lambda f: Image.fromarray(q).save(f, format="PNG", pnginfo=info))


# ------------------------------------------------------------------------------------- reading


def _grey_from_channels(path: str, rgb: np.ndarray) -> np.ndarray:
    """(H, W, C≥3) -> (H, W); a colour image (distinct channels) is an error."""
    rgb = rgb[..., :3].astype(np.float64)
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    rng = float(rgb.max() - rgb.min()) or 1.0
    # Tolerance, not equality: a grey image saved as RGB JPEG has small chroma noise.
    if np.percentile(spread, 99) > COLOUR_TOLERANCE * rng:
        raise XrayReadError(path, "colour image (3 distinct channels); X-rays must be greyscale — "
                                  "convert it to a single-channel image first")
    return rgb.mean(axis=-1)


def _read_pil(path: str) -> RawXray:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise XrayReadError(path, f"not a readable image ({err})") from None
    if getattr(img, "n_frames", 1) > 1:
        raise XrayReadError(path, f"has {img.n_frames} frames; give one image per view")
    text = getattr(img, "text", None) or {}
    mode = img.mode
    if mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        pixels = _grey_from_channels(path, np.asarray(img.convert("RGB")))
    elif mode in ("LA", "La"):
        pixels = np.asarray(img.getchannel(0), dtype=np.float64)
    elif mode == "1":
        pixels = np.asarray(img.convert("L"), dtype=np.float64)
    else:  # L, I;16*, I, F
        pixels = np.asarray(img).astype(np.float64)
    if pixels.ndim != 2:
        raise XrayReadError(path, f"unexpected image layout {pixels.shape} (mode {mode})")
    if text.get(PNG_ENCODING_KEY) == PNG_ENCODING:
        if mode not in ("I;16", "I;16B", "I;16L", "I"):
            raise XrayReadError(path, f"hvc line-integral PNG must be 16-bit, got mode {mode}")
        try:
            li_max = float(text[PNG_LI_MAX_KEY])
        except (KeyError, ValueError):
            raise XrayReadError(path, f"hvc PNG without a valid '{PNG_LI_MAX_KEY}' entry") from None
        if not (np.isfinite(li_max) and li_max > 0):
            raise XrayReadError(path, f"hvc PNG with an invalid '{PNG_LI_MAX_KEY}' of {li_max!r} "
                                      "(the line-integral scale must be a positive number)")
        try:
            render = json.loads(text[PNG_RENDER_KEY]) if PNG_RENDER_KEY in text else None
        except ValueError:
            raise XrayReadError(path, f"hvc PNG with an unreadable '{PNG_RENDER_KEY}' entry") from None
        return RawXray(path, "line_integral", pixels / 65535.0 * li_max, text.get(PNG_VIEW_KEY),
                       note=f"hvc DRR PNG, line integrals up to {li_max:.4g}", render=render)
    bits = {"L": 8, "1": 1, "P": 8, "RGB": 8, "RGBA": 8}.get(mode, 16 if mode.startswith("I;16") else 32)
    return RawXray(path, "intensity", pixels, note=f"{Path(path).suffix.lstrip('.').upper()} {mode} "
                   f"({bits}-bit) display image, percentile-mapped")


def _read_dicom(path: str) -> RawXray:
    from hybrid_vit_cascade.data.radiograph import read_dicom

    ds = read_dicom(path)  # also a bare data set without the Part 10 preamble
    modality = str(getattr(ds, "Modality", "?"))
    if modality in ("CT", "MR", "PT"):
        raise XrayReadError(path, f"is a {modality} image, not a radiograph (use `hvc infer --ct` for CTs)")
    if "PixelData" not in ds:
        raise XrayReadError(path, "DICOM file has no pixel data")
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        raise XrayReadError(path, f"multi-frame DICOM ({ds.NumberOfFrames} frames); give one image per view")
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        from hybrid_vit_cascade.data.radiograph import read_radiograph

        rad = read_radiograph(path, ds=ds)  # LUTs, polarity, view, orientation, scale, collimation
        note = f"DICOM {modality} {photometric}" + (" (inverted)" if rad.info["inverted"] else "")
        return RawXray(path, "intensity", rad.pixels, rad.view, note=note, radiograph=rad)
    try:
        arr = ds.pixel_array
    except Exception as err:  # missing decoder for a compressed transfer syntax, truncated data, ...
        raise XrayReadError(path, f"cannot decode DICOM pixel data ({err})") from None
    if arr.ndim != 3 or photometric not in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        raise XrayReadError(path, f"unexpected DICOM pixel layout {arr.shape} ({photometric})")
    pixels = _grey_from_channels(path, np.asarray(arr))
    return RawXray(path, "intensity", pixels, note=f"DICOM {modality} {photometric}, percentile-mapped")


def _read_array(path: str) -> RawXray:
    try:
        if path.lower().endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
        else:
            import nibabel as nib

            arr = np.asanyarray(nib.load(path).dataobj)
    except Exception as err:
        raise XrayReadError(path, f"cannot read array ({err})") from None
    if arr.dtype.kind not in "biuf":  # strings, records, dates, complex: not line integrals
        raise XrayReadError(path, f"array of dtype {arr.dtype}, expected real numbers (line integrals)")
    arr = np.asarray(arr, dtype=np.float64)
    if arr.size == 0:
        raise XrayReadError(path, f"empty array of shape {arr.shape}, expected an (H, W) image")
    is_nifti = not path.lower().endswith(".npy")
    if is_nifti:
        # (x, y[, 1][, V]) → (H, W) or (V, H, W): x = column, y = row from the bottom.
        if arr.ndim == 4 and arr.shape[2] == 1:
            arr = arr[:, :, 0, :]
        elif arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim == 2:
            arr = arr[:, ::-1].T
        elif arr.ndim == 3:
            arr = np.stack([arr[:, ::-1, v].T for v in range(arr.shape[2])])
    else:
        arr = arr.reshape([s for s in arr.shape if s != 1] or [1])  # drop singleton axes
    if arr.ndim not in (2, 3):
        raise XrayReadError(path, f"expected line integrals of shape (H, W) or (V, H, W), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise XrayReadError(path, "contains NaN or Inf")
    if arr.min() < -1e-3 * max(abs(arr.max()), 1e-12):
        raise XrayReadError(path, f"line integrals must be ≥ 0, found {arr.min():.3g} "
                                  "(is this an already-normalised image in [-1, 1]?)")
    return RawXray(path, "line_integral", np.ascontiguousarray(arr),
                   note="line integrals" + (" (NIfTI: x = column, y = row from the bottom)" if is_nifti else ""))


def _bare_dicom(path: str) -> bool:
    """True if the file starts like a DICOM data set written without the preamble: a group 0002 or 0008 tag."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return head in (b"\x02\x00", b"\x08\x00")  # little endian; no image format starts so


def read_xray(path: str | os.PathLike) -> RawXray:
    """Read one X-ray file (see the module docstring for formats); errors name the file."""
    path = str(path)
    if not os.path.exists(path):
        raise XrayReadError(path, "file not found")
    if os.path.isdir(path):
        raise XrayReadError(path, "is a directory, expected an X-ray image file")
    name = path.lower()
    if name.endswith(".npy") or name.endswith(NIFTI_SUFFIXES):
        return _read_array(path)
    if name.endswith(DICOM_SUFFIXES) or has_dicom_preamble(path) or _bare_dicom(path):
        try:
            return _read_dicom(path)
        except XrayReadError:
            raise
        except Exception as err:
            # pydicom converts tags lazily: a damaged one (RescaleSlope 'abc', a 2-valued slope, ...) fails
            # wherever it is first used, with any exception type (found by tests/test_properties.py).
            raise XrayReadError(path, f"cannot interpret this DICOM file ({type(err).__name__}: {err})") from None
    return _read_pil(path)


# ------------------------------------------------------------------------------ normalisation


def resample_square(img: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop (H, W) to a square and resample to (size, size): area average down, bilinear up."""
    H, W = img.shape
    s = min(H, W)
    top, left = (H - s) // 2, (W - s) // 2
    img = img[top:top + s, left:left + s]
    if s == size:
        return img.copy()
    t = torch.as_tensor(np.ascontiguousarray(img), dtype=torch.float64)[None, None]  # (1, 1, s, s)
    if s > size:  # each detector pixel integrates its footprint, as a coarser detector would
        out = F.interpolate(t, size=(size, size), mode="area")
    else:
        out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


# Line integrals above this multiple of the model's li_max are not a body X-ray (the training DRRs
# stay near or below 1 × li_max): wrong units, or garbage that would overflow the sampler.
LI_RANGE_FACTOR = 4.0


def check_view(raw: RawXray, li_max: float) -> None:
    """Refuse an (H, W) view the model cannot use: non-finite, constant, or out-of-range line integrals."""
    px = raw.pixels
    if not np.isfinite(px).all():
        raise XrayReadError(raw.path, f"{int(px.size - np.isfinite(px).sum())} NaN/Inf pixel(s)")
    lo, hi = float(px.min()), float(px.max())
    if hi - lo <= 1e-9 * max(abs(hi), abs(lo), 1e-12):
        raise XrayReadError(raw.path, f"constant image (every pixel {hi:g}): no contrast to reconstruct from")
    if raw.kind == "line_integral" and hi > LI_RANGE_FACTOR * li_max:
        raise XrayReadError(raw.path, f"line integrals up to {hi:.4g}, more than {LI_RANGE_FACTOR:g} × the model's "
                                      f"li_max {li_max:.4g}: not line integrals of a body (wrong units?)")


def to_model_input(raw: RawXray, li_max: float, det_pixels: int, field=None) -> np.ndarray:
    """One RawXray (H, W) -> (det_pixels, det_pixels) in the model's X-ray range.

    `field` (data.radiograph_fit.ModelField): the checkpoint's detector field and training X-ray
    statistics; with it a DICOM film is cropped to that physical field and histogram-matched.
    """
    from hybrid_vit_cascade.geometry.physics import normalize_xray

    check_view(raw, li_max)
    if raw.radiograph is not None and field is not None:
        from hybrid_vit_cascade.data.radiograph_fit import radiograph_to_model

        x, raw.info = radiograph_to_model(raw.radiograph, field, raw.view)
        return x
    if raw.kind == "line_integral":
        x = normalize_xray(torch.as_tensor(raw.pixels, dtype=torch.float64), li_max).numpy()
    else:
        try:
            x = percentile_normalize(raw.pixels)
        except ValueError as err:
            raise XrayReadError(raw.path, str(err)) from None
    out = resample_square(x, det_pixels)
    if not np.ptp(out) > 1e-6:  # e.g. a 1-pixel-high image: its centre square is one pixel
        raise XrayReadError(raw.path, f"no contrast left in the centre square of this {raw.pixels.shape[0]} × "
                                      f"{raw.pixels.shape[1]} image at {det_pixels} × {det_pixels} pixels")
    return out


def load_xrays(paths: Sequence[str | os.PathLike], model_views: Sequence[str], li_max: float,
               det_pixels: int, views: Sequence[str] | None = None, field=None) -> tuple[torch.Tensor, list[RawXray]]:
    """Read the X-rays of one case -> ((V, P, P) float32 in the model's order, the RawXrays given).

    Any non-empty subset of the model's views may be given: the slots of absent views are zeros, and
    the returned RawXrays (in the model's order) say which views are present (`r.view`). `views`
    names the view of each path; without it, the views recorded in the files (hvc PNGs) are used if
    every file has one, else the paths are taken in the model's view order (then all views are
    needed). A single `.npy`/NIfTI file may hold all views as (V, H, W).
    """
    model_views = list(model_views)
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError(f"no X-ray given; the checkpoint expects {len(model_views)} ({', '.join(model_views)})")
    raws = [read_xray(p) for p in paths]
    # Unstack a (V, H, W) array file into one RawXray per view.
    if len(raws) == 1 and raws[0].pixels.ndim == 3:
        r = raws[0]
        raws = [RawXray(r.path, r.kind, r.pixels[v], None, r.note + f" [view {v}]") for v in range(r.pixels.shape[0])]
    for r in raws:
        if r.pixels.ndim != 2:
            raise XrayReadError(r.path, f"holds {r.pixels.shape[0]} images; with several files give one (H, W) per file")
    from hybrid_vit_cascade.data.radiograph import settle_views

    settle_views(raws, model_views, views)  # DICOM films: header view (ViewPosition), --views wins with a warning
    got = ", ".join(paths)
    if len(raws) > len(model_views):
        raise ValueError(f"the checkpoint was trained on {len(model_views)} view(s) ({', '.join(model_views)}) "
                         f"but {len(raws)} X-ray image(s) were given ({got}); give at most one per view")
    if views is None:
        recorded = [r.view for r in raws]
        if all(recorded):
            views = recorded
        elif len(raws) == len(model_views):
            views = list(model_views)
        else:
            raise ValueError(f"{len(raws)} X-ray image(s) ({got}) for a checkpoint with views "
                             f"{', '.join(model_views)}: name the view of each with --views (e.g. --views "
                             f"{' '.join(model_views[:len(raws)])})")
    views = list(views)
    if len(views) != len(raws):
        raise ValueError(f"{len(views)} view name(s) ({', '.join(views)}) for {len(raws)} X-ray image(s)")
    if any(v not in model_views for v in views) or len(set(views)) != len(views):
        raise ValueError(f"views {views} do not match the checkpoint's views {model_views} "
                         "(give each of them at most once)")
    for r, v in zip(raws, views):
        if r.view is not None and r.view != v:
            raise XrayReadError(r.path, f"was rendered as view '{r.view}' but is given as '{v}'")
        r.view = v
    by_view = {r.view: r for r in raws}
    ordered = [by_view[v] for v in model_views if v in by_view]
    x = np.zeros((len(model_views), det_pixels, det_pixels))  # absent views stay zeros (masked out)
    for r in ordered:
        x[model_views.index(r.view)] = to_model_input(r, li_max, det_pixels, field)
    films = {r.view: r for r in ordered if r.radiograph is not None and field is not None}
    if films:  # the films' levels from their bodies' widths (one film's width is the other's thickness)
        from hybrid_vit_cascade.data.radiograph_fit import level_films

        levelled = level_films({v: x[model_views.index(v)] for v in films}, {v: r.info for v, r in films.items()},
                               field)
        for v in films:
            x[model_views.index(v)] = levelled[v]
    return torch.as_tensor(x, dtype=torch.float32), ordered

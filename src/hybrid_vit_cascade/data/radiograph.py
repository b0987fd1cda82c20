r"""Clinical radiographs (DICOM CR / DX) into the model's frame: pixels, view, orientation, scale, field.

`read_radiograph(path)` undoes what the header says was done to the pixels, and records it in `info`:

1. **Values.** Modality LUT / rescale (pydicom `apply_modality_lut`); an image linear in exposure
   (PixelIntensityRelationship LIN, "for processing") is taken to its logarithm; the VOI LUT or
   window (`apply_voi_lut`) for CR and for DX "for presentation"; MONOCHROME1 is negated. From here
   on bright = attenuating. PixelPaddingValue pixels are no image: padded border lines are outside the
   usable area, the rest reads as air.
2. **View** from ViewPosition (AP, PA, LL, RL, LATERAL), else the View Code Sequence, or the caller's
   (`--views`), which wins.
3. **Orientation.** PatientOrientation (0020,0020) names where the image's columns and rows run;
   the image is transposed / flipped into the model's display convention (DESIGN.md "Views": rows
   toward the feet; AP and PA columns toward the patient's left; lateral columns toward posterior).
   Without it the films are taken as hung for reading: AP/PA `L\F`, left lateral `P\F`, right
   lateral `A\F` (seen from the side nearest the detector) — so a right lateral is mirrored into
   the model's left lateral. `LATERAL` without a side is taken as a left lateral.
4. **Scale at the isocentre** (the body's mid-plane, where the model's cube is centred): PixelSpacing
   calibrated to the patient (PixelSpacingCalibrationType, or smaller than ImagerPixelSpacing) as is;
   otherwise the detector pitch (ImagerPixelSpacing, else PixelSpacing) divided by the magnification:
   EstimatedRadiographicMagnificationFactor, else DistanceSourceToDetector / DistanceSourceToPatient,
   else the defaults below.
5. **Collimation**: a rectangular ShutterShape / CollimatorShape in the header, and border rows and
   columns of the film that are flat at the image's brightest value (unexposed), are outside the
   usable area. Border lines flat at the darkest value (electronic black masking, or saturated
   direct exposure — the two look alike) are recorded and read as air (a border far below the air
   inside it is raised to that air's level): they lie outside the body mask, so they take no part
   in the centring or the intensity statistics.

`radiograph_to_model(rad, field)` (radiograph_fit.py) then crops the model's field of view around
the body, resamples it onto the model's detector and maps the intensities.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from hybrid_vit_cascade.data.radiograph_values import XrayReadError, as_values, film_values, padded_border, read_dicom


# Source–detector distance (mm) when the header has none: erect PA and lateral chest films are taken
# at 180 cm (72 in), supine / portable AP films at about 100 cm (40 in) — standard radiographic
# positioning practice (e.g. Bontrager & Lampignano, "Textbook of Radiographic Positioning").
DEFAULT_SDD_MM = {"pa": 1800.0, "ap": 1000.0, "lateral": 1800.0}
# Isocentre (the body's mid-plane) to detector (mm), when neither DistanceSourceToPatient nor a
# magnification factor is given: half an adult chest's depth (≈ 22 cm front to back; the phantoms
# span 18–25 cm) or width (≈ 32 cm; phantoms 26–34 cm), plus ≈ 4 cm from the skin to the detector's
# sensitive layer (cover, anti-scatter grid).
DEFAULT_ISO_DETECTOR_MM = {"pa": 150.0, "ap": 150.0, "lateral": 200.0}
MAGNIFICATION_RANGE = (1.0, 2.5)  # a chest radiograph's plausible magnification at the body mid-plane

# DICOM ViewPosition → the film's view in the model's terms; decubitus and oblique films are no model view.
HEADER_VIEWS = {"AP": "ap", "PA": "pa", "LL": "lateral", "RL": "lateral", "LATERAL": "lateral", "LAT": "lateral"}
UNUSABLE_VIEWS = {"RLD", "LLD", "RLO", "LLO", "LAO", "RAO", "LPO", "RPO"}
# ViewCodeSequence codes (CID 4010 "DX View": SNOMED CT, and the older SNOMED RT of AP / PA) as ViewPosition values
VIEW_CODES = {"399348003": "AP", "272479007": "PA", "399173006": "LL", "399198007": "RL", "399067008": "LATERAL",
              "R-10206": "AP", "R-10214": "PA"}
# (column direction, row direction) as DICOM PatientOrientation letters: the model's convention, and
# what a film without the tag is assumed to be (how it is hung for reading).
MODEL_ORIENTATION = {"ap": ("L", "F"), "pa": ("L", "F"), "lateral": ("P", "F")}
ASSUMED_ORIENTATION = {"AP": ("L", "F"), "PA": ("L", "F"), "LL": ("P", "F"), "RL": ("A", "F")}
_AXIS = {"L": "x", "R": "x", "A": "y", "P": "y", "H": "z", "F": "z"}

FLAT_TOLERANCE = 0.02  # a border line is flat if its 5–95 % spread is below 2 % of the image's range …
MARK_FRACTION = 0.25  # … once marks far from its median (at most this fraction: text, markers) are left out
EXTREME_FRACTION = 0.1  # … and its median lies within 10 % of the range from the image's max or min
MAX_BORDER = 0.45  # collimation never takes more than 45 % of the film from one side
DARK_FLOOR_PERCENTILE = 0.1  # black borders are raised to this percentile of the field inside them …
DARK_GAP_FRACTION = 0.05  # … when they lie more than 5 % of the film's range below it


@dataclass
class Radiograph:
    """A clinical film in the model's display convention, bright = attenuating, and what was inferred."""

    path: str
    pixels: np.ndarray  # (H, W) float64
    view: Optional[str]  # the film's view in the model's terms ('ap', 'pa', 'lateral'); None: unknown
    spacing_mm: Optional[tuple[float, float]]  # (row, column) pitch at the isocentre plane; None: unknown
    usable: tuple[int, int, int, int]  # (top, bottom, left, right) inside the collimation, half-open
    info: dict


def _pair(ds, key: str, path: str, info: dict) -> Optional[tuple[float, float]]:
    """(row, column) spacing in `key`, mm; None if absent. One value is read as isotropic, with a warning."""
    values = as_values(ds.get(key))
    if not any(str(s).strip() for s in values):  # absent, or present but empty
        return None
    try:
        nums = [float(s) for s in values]
    except (TypeError, ValueError):  # pydicom keeps a DS it cannot convert ('abc') as its text
        nums = []
    if not 1 <= len(nums) <= 2 or len(nums) != len(values) or not all(np.isfinite(n) and n > 0 for n in nums):
        shown = "\\".join(str(s) for s in values)
        raise XrayReadError(path, f"{key} '{shown}' is not a pixel spacing (one or two positive numbers, mm: row\\column)")
    if len(nums) == 1:  # DICOM wants two (row, column); some exports write one
        info["warnings"].append(f"{key} has one value ({nums[0]:g} mm), DICOM wants two (row\\column): "
                                "read as square pixels")
        nums *= 2
    return nums[0], nums[1]


def _number(ds, key: str) -> Optional[float]:
    v = ds.get(key)
    try:
        v = float(v) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return v if v is not None and np.isfinite(v) and v > 0 else None


def _view_code(ds) -> Optional[str]:
    """ViewCodeSequence (DICOM CID 4010, SNOMED) as a ViewPosition value: the coded view a film without ViewPosition may carry."""
    item = next(iter(ds.get("ViewCodeSequence") or []), None)
    if item is None:
        return None
    code, meaning = str(item.get("CodeValue", "")).strip(), str(item.get("CodeMeaning", "")).strip().lower()
    if code in VIEW_CODES:
        return VIEW_CODES[code]
    meaning = meaning.split("(")[0].replace("-", "").replace(" projection", "").strip()  # "… (qualifier value)"
    return {"anteroposterior": "AP", "posteroanterior": "PA", "left lateral": "LL", "right lateral": "RL",
            "lateral": "LATERAL"}.get(meaning, meaning.upper() or None)  # others: named in the refusal / warning


def _header_view(ds, path: str) -> tuple[Optional[str], Optional[str]]:
    """(ViewPosition as written, upper case — else ViewCodeSequence's; the film's view in the model's terms) — (None, None) if absent."""
    raw, tag = str(ds.get("ViewPosition", "") or "").strip().upper(), "ViewPosition"
    if not raw:
        raw, tag = _view_code(ds), "ViewCodeSequence"
    if not raw:
        return None, None
    if raw in UNUSABLE_VIEWS or "OBLIQUE" in raw or "DECUBITUS" in raw:
        raise XrayReadError(path, f"{tag} {raw} (a decubitus or oblique film) is not a view the model "
                                  "knows (AP, PA, left or right lateral)")
    return raw, HEADER_VIEWS.get(raw)


def _orientation(ds, path: str) -> Optional[tuple[str, str]]:
    po = as_values(ds.get("PatientOrientation"))
    if not any(str(p).strip() for p in po):  # absent, or present but empty ('' or '\\')
        return None
    parts = [str(p).strip().upper() for p in po]
    if len(parts) != 2 or not all(p and set(p) <= set(_AXIS) for p in parts):
        shown = "\\".join(parts)
        raise XrayReadError(path, f"PatientOrientation '{shown}' is not two directions of A/P/R/L/H/F")
    return parts[0][0], parts[1][0]  # oblique values (e.g. 'LF'): their dominant direction


def _orient(px: np.ndarray, mask: np.ndarray, po: tuple[str, str], target: tuple[str, str]):
    """Transpose / flip (pixels, usable mask) so columns run toward target[0] and rows toward target[1].

    Returns (pixels, mask, operations) or None when `po` cannot be brought to `target` (other axes).
    """
    col, row = po
    ops = []
    if _AXIS[col] == _AXIS[target[1]] and _AXIS[row] == _AXIS[target[0]]:
        px, mask, col, row = px.T, mask.T, row, col
        ops.append("transposed")
    if _AXIS[col] != _AXIS[target[0]] or _AXIS[row] != _AXIS[target[1]]:
        return None
    if col != target[0]:
        px, mask = px[:, ::-1], mask[:, ::-1]
        ops.append("columns mirrored")
    if row != target[1]:
        px, mask = px[::-1], mask[::-1]
        ops.append("rows flipped")
    return np.ascontiguousarray(px), np.ascontiguousarray(mask), ops


def _scale(ds, view: Optional[str], path: str, info: dict) -> Optional[tuple[float, float]]:
    """(row, column) pixel pitch at the isocentre plane, mm, and how it was found (into `info`)."""
    ips, ps = _pair(ds, "ImagerPixelSpacing", path, info), _pair(ds, "PixelSpacing", path, info)
    calibrated = ps is not None and ("PixelSpacingCalibrationType" in ds or
                                     (ips is not None and max(p / i for p, i in zip(ps, ips)) < 0.999))
    if calibrated:
        info["spacing_source"] = "PixelSpacing (calibrated to the patient)"
        info["detector_spacing_mm"] = list(ips) if ips else None
        info["magnification"] = round(ips[0] / ps[0], 6) if ips else None
        info["magnification_source"] = "ImagerPixelSpacing / PixelSpacing" if ips else None
        return ps
    det = ips or ps
    if ps is not None and ips is not None and any(p > 1.001 * i for p, i in zip(ps, ips)):
        # The rule (INFERENCE.md) takes the detector pitch; an export downsampled after acquisition that
        # kept the detector's ImagerPixelSpacing would then be read too small by the ratio of the two.
        info["warnings"].append(f"PixelSpacing {ps[0]:g}\\{ps[1]:g} mm is larger than ImagerPixelSpacing "
                                f"{ips[0]:g}\\{ips[1]:g} mm: the scale is taken from ImagerPixelSpacing; if the "
                                "film was downsampled on export, that is stale and the body's size is wrong")
    info["spacing_source"] = "ImagerPixelSpacing" if ips else "PixelSpacing (taken at the detector)" if ps else None
    info["detector_spacing_mm"] = list(det) if det else None
    if det is None:
        return None
    key = view or "pa"
    sdd, sod = _number(ds, "DistanceSourceToDetector"), _number(ds, "DistanceSourceToPatient")
    ermf = _number(ds, "EstimatedRadiographicMagnificationFactor")
    info["source_detector_defaulted"] = sdd is None and sod is None and ermf is None
    info["isocentre_detector_defaulted"] = sod is None and ermf is None
    if ermf is not None:
        mag, how = ermf, "EstimatedRadiographicMagnificationFactor"
    elif sdd is not None and sod is not None:
        mag, how = sdd / sod, "DistanceSourceToDetector / DistanceSourceToPatient"
    elif sdd is not None:
        sod = sdd - DEFAULT_ISO_DETECTOR_MM[key]
        mag, how = sdd / sod, f"DistanceSourceToDetector, default isocentre–detector {DEFAULT_ISO_DETECTOR_MM[key]:g} mm"
    elif sod is not None:
        sdd = sod + DEFAULT_ISO_DETECTOR_MM[key]
        mag, how = sdd / sod, f"DistanceSourceToPatient, default isocentre–detector {DEFAULT_ISO_DETECTOR_MM[key]:g} mm"
    else:
        sdd = DEFAULT_SDD_MM[key]
        sod = sdd - DEFAULT_ISO_DETECTOR_MM[key]
        mag, how = sdd / sod, (f"defaults for a{'n' if key == 'ap' else ''} {key.upper()} chest film: "
                               f"source–detector {sdd:g} mm, isocentre–detector {sdd - sod:g} mm")
    info["source_detector_mm"] = sdd
    info["source_isocentre_mm"] = sod
    info["magnification"], info["magnification_source"] = round(float(mag), 6), how
    if not MAGNIFICATION_RANGE[0] <= mag <= MAGNIFICATION_RANGE[1]:
        raise XrayReadError(path, f"magnification {mag:.3g} (from {how}) is outside the plausible "
                                  f"{MAGNIFICATION_RANGE[0]:g}–{MAGNIFICATION_RANGE[1]:g} of a chest radiograph")
    return det[0] / mag, det[1] / mag


def _shutter(ds, shape: tuple[int, int], info: dict) -> np.ndarray:
    """Usable-area mask from a rectangular ShutterShape / CollimatorShape (DICOM edges: 1-based, inclusive)."""
    mask = np.ones(shape, dtype=bool)
    for kind in ("Shutter", "Collimator"):
        shapes = [str(v).upper() for v in as_values(ds.get(f"{kind}Shape"))]
        edges = [ds.get(f"{kind}{e}") for e in ("UpperHorizontalEdge", "LowerHorizontalEdge",
                                                "LeftVerticalEdge", "RightVerticalEdge")]
        if "RECTANGULAR" in shapes and all(e is not None for e in edges):
            top, bottom, left, right = (int(e) for e in edges)
            box = np.zeros(shape, dtype=bool)
            box[max(top - 1, 0):bottom, max(left - 1, 0):right] = True
            mask &= box
            info["collimation_source"].append(f"{kind}Shape RECTANGULAR")
        elif shapes:
            info["notes"].append(f"{kind}Shape {'/'.join(shapes)} not used (only rectangular ones are)")
    return mask


def _trim(img: np.ndarray, box: tuple[int, int, int, int], kind: str) -> tuple[int, int, int, int]:
    """Shrink `box` past border lines that are flat at the image's brightest ("bright") or darkest ("dark") value."""
    lo, hi = np.percentile(img[box[0]:box[1], box[2]:box[3]], [0.5, 99.5])
    span = max(hi - lo, 1e-12)

    def flat(line: np.ndarray) -> bool:
        if line.size == 0:  # a tiny film trimmed from both sides to nothing (tests/test_properties.py)
            return False
        p50 = float(np.median(line))
        extreme = p50 >= hi - EXTREME_FRACTION * span if kind == "bright" else p50 <= lo + EXTREME_FRACTION * span
        # Marks on the border (white text or a lead marker on a black mask) are left out of the spread:
        # they cover more than 5 % of some lines, which used to end the border there and leave a strip of
        # it inside the field. A line more than MARK_FRACTION marked is no border.
        off = line - p50 if kind == "dark" else p50 - line
        rest = line[off <= FLAT_TOLERANCE * span]
        if rest.size < (1 - MARK_FRACTION) * line.size:
            return False
        p5, p95 = np.percentile(rest, [5, 95])
        return p95 - p5 <= FLAT_TOLERANCE * span and extreme

    t, b, l, r = box
    H, W = b - t, r - l
    # One line always stays: on a film of few lines the two sides' limits meet (a flat 16×16 film was trimmed
    # to nothing, and the percentiles of the empty rest ended in an IndexError).
    for _ in range(2):  # a second pass: corners trimmed from one side can free the other
        while t < box[0] + MAX_BORDER * H and b - t > 1 and flat(img[t, l:r]):
            t += 1
        while b > box[1] - MAX_BORDER * H and b - t > 1 and flat(img[b - 1, l:r]):
            b -= 1
        while l < box[2] + MAX_BORDER * W and r - l > 1 and flat(img[t:b, l]):
            l += 1
        while r > box[3] - MAX_BORDER * W and r - l > 1 and flat(img[t:b, r - 1]):
            r -= 1
    return t, b, l, r


def read_radiograph(path: str | os.PathLike, view: Optional[str] = None, ds=None) -> Radiograph:
    """Read a CR / DX radiograph into the model's display convention; `view` ('ap', 'pa', 'lateral') overrides the header."""
    path = str(path)
    if ds is None:
        ds = read_dicom(path)
    info: dict = {"file": path, "modality": str(ds.get("Modality", "?")), "notes": [], "warnings": [],
                  "collimation_source": []}
    px, pad = film_values(ds, path, info)
    header, header_film = _header_view(ds, path)
    if view is not None and view not in MODEL_ORIENTATION:
        raise ValueError(f"unknown view {view!r}; expected one of {sorted(MODEL_ORIENTATION)}")
    film = view or header_film
    forced = view is not None and header_film is not None and view != header_film
    info.update(header_view=header, view=film,
                view_source="--views" if view is not None else None if not header_film else
                "ViewPosition" if str(ds.get("ViewPosition", "") or "").strip() else "ViewCodeSequence")
    if header and header_film is None:
        info["warnings"].append(f"ViewPosition {header!r} is not one of {sorted(HEADER_VIEWS)}; give --views")
    if forced:
        info["warnings"].append(f"the header says {header} but the film is read as {view} (--views)")
    mask = _shutter(ds, px.shape, info)
    if pad is not None and padded_border(pad).any():  # padded border lines: outside the image, like collimation
        mask &= ~padded_border(pad)
        info["collimation_source"].append("PixelPaddingValue")
    po = _orientation(ds, path)
    info["patient_orientation"] = list(po) if po else None
    if film is not None:
        side = header if header in ASSUMED_ORIENTATION and HEADER_VIEWS[header] == film else None
        assumed = ASSUMED_ORIENTATION[side or {"ap": "AP", "pa": "PA", "lateral": "LL"}[film]]
        if header == "LATERAL" or header == "LAT":
            info["notes"].append(f"ViewPosition {header} names no side: taken as a left lateral")
        if po is None:
            info["notes"].append(f"no PatientOrientation: taken as {assumed[0]}\\{assumed[1]}, how a "
                                 f"{side or film.upper()} film is hung for reading")
        oriented = _orient(px, mask, po or assumed, MODEL_ORIENTATION[film])
        if oriented is None:
            label = "a lateral" if film == "lateral" else f"an {film.upper()}"
            msg = f"PatientOrientation {po[0]}\\{po[1]} does not fit {label} film"
            if not forced:
                raise XrayReadError(path, msg)
            info["warnings"].append(msg + "; the image is used as stored")
            oriented = px, mask, []
        px, mask, info["orientation_ops"] = oriented
    else:
        info["orientation_ops"] = []
        info["notes"].append("no ViewPosition: the view and orientation come from --views or the model's order")
    spacing = _scale(ds, film, path, info)
    if spacing is not None and "transposed" in info["orientation_ops"]:
        spacing = spacing[::-1]
    info["isocentre_spacing_mm"] = [round(s, 6) for s in spacing] if spacing else None
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows) or not len(cols):
        raise XrayReadError(path, "the shutter / collimator edges in the header leave no image")
    shutter = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    box = _trim(px, shutter, "bright")  # unexposed (collimated) borders: excluded, nothing is known there
    if box != shutter:
        info["collimation_source"].append("pixels")
    info["collimation_px"] = list(box)  # (top, bottom, left, right), model display orientation
    # Black borders (electronic masking, or saturated direct exposure) read as air: kept, outside the body.
    dark = _trim(px, box, "dark")
    info["dark_border_px"] = [dark[0] - box[0], box[1] - dark[1], dark[2] - box[2], box[3] - dark[3]]
    if dark != box and dark[1] > dark[0] and dark[3] > dark[2]:
        # A masked border far below the darkest air inside it would be a class of its own in the body
        # mask's three-class Otsu, which then counts the air around the body as body (a uniform black
        # shutter on a film whose body the tone curve compressed: crops 10 cm off). Such a border is
        # raised to that air; one at the air's own level (saturated direct exposure) is left as it is.
        # The field: the box inside the dark border, and whatever was trimmed with it above the border's
        # level (flat air is trimmed too; without it the lungs would pass for the film's air).
        vals = px[box[0]:box[1], box[2]:box[3]]
        border = float(vals.min())
        gap = DARK_GAP_FRACTION * (float(vals.max()) - border)
        keep = vals > border + gap
        keep[dark[0] - box[0]:dark[1] - box[0], dark[2] - box[2]:dark[3] - box[2]] = True
        inner = vals[keep]
        floor, median = (float(v) for v in np.percentile(inner, [DARK_FLOOR_PERCENTILE, 50]))
        # (the field inside must hold something darker than its middle: a body that fills it has no air)
        if floor - border > gap and median - floor > gap:
            px = np.maximum(px, floor)
            info["notes"].append("black border far below the film's air: raised to the air's level")
    if spacing:
        info["usable_mm"] = [round((box[3] - box[2]) * spacing[1], 1), round((box[1] - box[0]) * spacing[0], 1)]
    return Radiograph(path, px, film, spacing, box, info)


def model_slot(film_view: str, model_views: Sequence[str]) -> str:
    """The model view a film of `film_view` is fed as: itself, or AP ↔ PA when the checkpoint has only the other."""
    if film_view in model_views:
        return film_view
    other = {"ap": "pa", "pa": "ap"}.get(film_view)
    return other if other in model_views else film_view


def settle_views(raws: list, model_views: Sequence[str], views: Optional[Sequence[str]] = None) -> None:
    """Set `r.view` of every film among the RawXrays from its header, or from `views` (--views) when given.

    A film's header view goes to the model's slot of that view (`model_slot`); `--views` that
    disagrees with a header wins, with a warning, and the film is re-read as that view.
    """
    for i, r in enumerate(raws):
        rad = getattr(r, "radiograph", None)
        if rad is None:
            continue
        slot = model_slot(rad.view, model_views) if rad.view else None
        want = views[i] if views is not None and i < len(views) else None
        if want is not None and want != slot:
            rad = read_radiograph(rad.path, view=want)
            slot = want
        if slot is not None and rad.view is not None and slot != rad.view:
            rad.info["notes"].append(
                f"{rad.view.upper()} film fed as the model's {slot.upper()} view (the checkpoint has no "
                f"{rad.view.upper()}): scaled at the isocentre; which side is magnified more cannot be undone in 2D")
        rad.info["model_view"] = slot
        r.radiograph, r.pixels, r.view = rad, rad.pixels, slot

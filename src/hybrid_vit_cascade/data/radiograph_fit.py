"""A read radiograph (radiograph.py) onto the model's detector: the field around the body, resampled, intensity-matched.

The model's detector covers `det_pixels × det_spacing` mm at the detector, i.e. `det_spacing × sid / sdd`
mm per pixel at the isocentre (`ModelField.pixel_mm`; parallel beam: `det_spacing`). The film is
cropped to that physical field at the isocentre, centred as the training cube is (on the body
across, on the lungs vertically: data/preprocessing.body_center): a first guess from the film's body
mask and lungs (data/xray_stats.body_anchor), refined by registering the film to the training
X-rays' mean image (translation, normalised cross-correlation, each candidate field
intensity-matched as the final cut is; older checkpoints: the first guess). Each model pixel is the exact area mean of the film pixels under it. Beyond the
usable film (its edge or collimation) the field may be filled with air only where the body does
not reach that edge; otherwise the film does not cover the field and `XrayReadError` says by how much.

Intensities: the training X-rays' in-body quantiles (data_info.json `xray_stats`, data/xray_stats.py)
are the target of a monotone LUT estimated by histogram matching inside the film's own body mask;
`patient_levels` then moves a case's films from that population level to the level their bodies'
widths predict (xray_stats `level_fits`).
A checkpoint without them falls back to the robust-percentile map, with a note. Not undone: the
differential magnification of the film's geometry (which side of the body is nearer the source),
and non-monotone processing (unsharp masking) — the measured domain gap is in INFERENCE.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from scipy import ndimage

from hybrid_vit_cascade.config import GeometryConfig
from hybrid_vit_cascade.data.radiograph import Radiograph, XrayReadError, read_radiograph
from hybrid_vit_cascade.data.xray_stats import (area_resample, body_anchor, body_level, body_mask, body_width,
                                                match_to_quantiles, percentile_normalize)
from hybrid_vit_cascade.geometry.translate import crop_placement
from hybrid_vit_cascade.geometry.views import make_view, resolve_det_spacing

PAD_TOLERANCE = 0.5  # model pixels of the field allowed beyond the film without padding rules
# Where the body runs off the film (a 35 cm PA film is ~32 cm wide at the isocentre; the chest often
# fills it), up to this fraction of the field per side is continued from the film's edge, with a
# warning; beyond it the film is refused.
EDGE_FILL_FRACTION = 0.1
SEARCH = 0.15  # registration searches ±15 % of the field (±57 mm of 378) around the first guess
REGISTER_SUB = 4  # registration steps: a quarter of the mean image's cell (378 mm / 32 / 4 ≈ 3 mm)
REGISTER_ROUNDS = 3  # searches, each re-centred on the last one's edge peak: up to ±45 % of the field
LEVEL_RATIO_RANGE = (2 / 3, 1.5)  # a body-width level correction beyond this is a failed width: clamped


@dataclass(frozen=True)
class ModelField:
    """What a checkpoint's detector sees: its geometry, the cube's field of view, the training X-ray statistics."""

    geometry: GeometryConfig
    fov_mm: float
    xray_stats: Optional[dict] = None

    @property
    def det_pixels(self) -> int:
        return int(self.geometry.det_pixels)

    @property
    def pixel_mm(self) -> float:
        """A model detector pixel at the isocentre plane, mm."""
        view = make_view("ap", self.geometry)  # every view shares the detector
        spacing = resolve_det_spacing(view, self.fov_mm)
        return spacing * view.sid / view.sdd if view.kind == "cone" else spacing

    @property
    def field_mm(self) -> float:
        """Edge of the square the detector covers at the isocentre plane, mm."""
        return self.det_pixels * self.pixel_mm


def model_field(rec) -> ModelField:
    """The field of a loaded checkpoint (an inference.pipeline.Reconstructor)."""
    return ModelField(rec.cfg.data.geometry, float(rec.fov_mm), rec.data_info.get("xray_stats"))


def _cut(film: np.ndarray, body: np.ndarray, centre: tuple[float, float], spacing: tuple[float, float],
         P: int, pix: float, edge_fill: bool = False) -> tuple[np.ndarray, dict, list[str]]:
    """The (P, P) field of `pix` mm pixels centred at `centre` (film pixels), air beyond the film.

    With `edge_fill`, a side the body reaches is continued by repeating the film's edge row or column
    instead (the body goes on past the film there; air would cut it off). Returns (image, mm missing
    per side, sides where the body reaches a missing edge).
    """
    sr, sc = spacing
    half_r, half_c = P * pix / 2 / sr, P * pix / 2 / sc  # half the field, film pixels
    r0, c0 = centre[0] - half_r, centre[1] - half_c
    short = {"top": -r0, "bottom": r0 + 2 * half_r - film.shape[0],
             "left": -c0, "right": c0 + 2 * half_c - film.shape[1]}  # film pixels missing per side
    touches = {"top": body[0].any(), "bottom": body[-1].any(), "left": body[:, 0].any(), "right": body[:, -1].any()}
    mm = {"top": sr, "bottom": sr, "left": sc, "right": sc}
    missing = {s: round(v * mm[s], 1) for s, v in short.items() if v * mm[s] > PAD_TOLERANCE * pix}
    pads = {s: max(0, math.ceil(short[s])) for s in ("top", "bottom", "left", "right")}
    arr, air = film, float(film.min())
    for side, axis, before in (("top", 0, True), ("bottom", 0, False), ("left", 1, True), ("right", 1, False)):
        if pads[side]:
            width = [(0, 0), (0, 0)]
            width[axis] = (pads[side], 0) if before else (0, pads[side])
            if edge_fill and touches[side]:
                arr = np.pad(arr, width, mode="edge")
            else:
                arr = np.pad(arr, width, constant_values=air)
    x = area_resample(arr, r0 + pads["top"], pix / sr, c0 + pads["left"], pix / sc, P)
    return x, missing, [s for s in missing if touches[s]]


def _intensities(x: np.ndarray, stats: Optional[dict], path: str) -> tuple[np.ndarray, np.ndarray]:
    """(model-range image, its body mask): histogram-matched to `stats`, or percentile-mapped without them."""
    mask = body_mask(x)
    if stats is None:
        return percentile_normalize(x), mask
    try:
        return match_to_quantiles(x, mask, np.asarray(stats["in_body_quantiles"])), mask
    except ValueError as err:
        raise XrayReadError(path, str(err)) from None


def _features(img: np.ndarray) -> np.ndarray:
    """An image flattened and standardised for correlation (NaN when flat)."""
    f = img.ravel()
    sd = f.std()
    return (f - f.mean()) / sd if sd > 0 else np.full_like(f, np.nan)


def _register_once(film: np.ndarray, body: np.ndarray, centre: tuple[float, float],
                   spacing: tuple[float, float], P: int, pix: float, stats: dict,
                   path: str) -> tuple[tuple[float, float], list[float], float, bool]:
    """Refine the field's centre by translation: best normalised cross-correlation with the training mean.

    The first guess (the body anchor) and the training cube's centre differ by the anatomy's and the
    guess's quirks. Every candidate field within ±SEARCH of the guess, on a grid of a quarter of the
    mean image's cell (n = its size; a cell is the field / n), is cut, averaged to n × n cells and
    intensity-matched exactly as the final cut will be, then compared with the training X-rays' mean
    image: whole-cell steps first, then the neighbours of the best at half and quarter cells (the
    score varies smoothly over a cell: the mean image is that coarse), then a parabola through the
    peak's neighbours for the sub-step offset. (Matching once on the
    wide search area instead, with its extra air and collimation, skewed the peak: 20–85 mm misses
    on some simulated films.) Returns (centre, shift in mm (down, right), peak NCC, whether the peak
    lies on the search area's edge).
    """
    mean = np.asarray(stats["mean_image"], dtype=np.float64)
    n = mean.shape[0]
    t = _features(mean)
    sub = REGISTER_SUB
    w = P * pix / (n * sub)  # mm per working pixel
    S = max(1, int(round(SEARCH * n * sub)))  # search radius, working pixels
    wide, _, _ = _cut(film, body, centre, spacing, n * sub + 2 * S, w)  # one resampling for every candidate
    scores: dict[tuple[int, int], float] = {}

    def score(dy: int, dx: int) -> float:
        if (dy, dx) not in scores:
            cells = wide[dy:dy + n * sub, dx:dx + n * sub].reshape(n, sub, n, sub).mean(axis=(1, 3))
            try:
                x, _ = _intensities(cells, stats, path)
            except XrayReadError:  # no body in this window
                scores[(dy, dx)] = -np.inf
                return -np.inf
            x = _features(x)
            scores[(dy, dx)] = float((x * t).mean()) if np.isfinite(x).all() else -np.inf
        return scores[(dy, dx)]

    # whole cells over the search area, then the 3 × 3 neighbours at half the step, down to one working pixel
    by, bx = max(((dy, dx) for dy in range(0, 2 * S + 1, sub) for dx in range(0, 2 * S + 1, sub)),
                 key=lambda o: score(*o))
    step = sub // 2
    while step >= 1:
        by, bx = max(((min(max(by + a * step, 0), 2 * S), min(max(bx + b * step, 0), 2 * S))
                      for a in (-1, 0, 1) for b in (-1, 0, 1)), key=lambda o: score(*o))
        step //= 2

    def vertex(a: float, b: float, c: float) -> float:  # parabola through three samples: offset of the peak
        den = a - 2 * b + c
        return 0.0 if not np.isfinite(den) or den >= 0 else float(np.clip((a - c) / (2 * den), -0.5, 0.5))

    fy = vertex(score(by - 1, bx), score(by, bx), score(by + 1, bx)) if 0 < by < 2 * S else 0.0
    fx = vertex(score(by, bx - 1), score(by, bx), score(by, bx + 1)) if 0 < bx < 2 * S else 0.0
    dy_mm, dx_mm = (by + fy - S) * w, (bx + fx - S) * w
    new = (centre[0] + dy_mm / spacing[0], centre[1] + dx_mm / spacing[1])
    return new, [dy_mm, dx_mm], scores[(by, bx)], bool({by, bx} & {0, 2 * S})


def _register(film: np.ndarray, body: np.ndarray, centre: tuple[float, float], spacing: tuple[float, float],
              P: int, pix: float, stats: dict, path: str) -> tuple[tuple[float, float], list[float], float]:
    """`_register_once`, moved on while the best field lies on the search area's edge (a first guess
    far off: up to ~10 cm on some simulated films), at most REGISTER_ROUNDS times; (centre, total
    shift in mm (down, right), peak NCC)."""
    total = [0.0, 0.0]
    for _ in range(REGISTER_ROUNDS):
        centre, shift, score, on_edge = _register_once(film, body, centre, spacing, P, pix, stats, path)
        total = [total[0] + shift[0], total[1] + shift[1]]
        if not on_edge:
            break
    return centre, [round(total[0], 1), round(total[1], 1)], score


def radiograph_to_model(rad: Radiograph, field: ModelField, view: Optional[str] = None) -> tuple[np.ndarray, dict]:
    """(det_pixels, det_pixels) model input in [-1, 1] from a read film, and everything inferred.

    `view`: the model slot the film is fed as (default: the film's view); it picks the training
    statistics and, for a film whose header named no view, the orientation and scale defaults.
    """
    if rad.view is None and view is not None:
        rad = read_radiograph(rad.path, view=view)
        rad.info["notes"].append(f"read as {view.upper()} (--views or the model's view order)")
    info = {**rad.info, "model_view": view or rad.view}
    if rad.spacing_mm is None:
        raise XrayReadError(rad.path, "no ImagerPixelSpacing or PixelSpacing in the header: the film's physical "
                                      "scale is unknown (convert it to PNG to use it centre-cropped, unscaled)")
    t, b, l, r = rad.usable
    film = rad.pixels[t:b, l:r]
    try:
        body = body_mask(film)
    except ValueError as err:
        raise XrayReadError(rad.path, str(err)) from None
    (sr, sc), P, pix = rad.spacing_mm, field.det_pixels, field.pixel_mm
    key = view or rad.view
    stats = (field.xray_stats or {}).get("views", {}).get(key)
    crow, ccol, how = body_anchor(film, body)
    shift = None
    if stats is not None and "mean_image" in stats:
        (crow, ccol), shift, score = _register(film, body, (crow, ccol), (sr, sc), P, pix, stats, rad.path)
        how += f"; registered to the training X-rays' mean (NCC {score:.2f})"
    x, missing, cut = _cut(film, body, (crow, ccol), (sr, sc), P, pix, edge_fill=True)
    too_far = [side for side in cut if missing[side] > EDGE_FILL_FRACTION * P * pix]
    if too_far:
        where = "inside the collimation " if rad.info.get("collimation_source") else ""
        raise XrayReadError(rad.path, f"the film covers {film.shape[1] * sc:.0f} × {film.shape[0] * sr:.0f} mm "
                                      f"at the isocentre {where}(width × height); the model needs {P * pix:.0f} × "
                                      f"{P * pix:.0f} mm centred on the body, which reaches the film's "
                                      f"{' and '.join(too_far)} edge (more than "
                                      f"{EDGE_FILL_FRACTION * P * pix:.0f} mm beyond it)")
    x, mask = _intensities(x, stats, rad.path)
    if cut:
        info["warnings"] = info["warnings"] + [
            "the body runs off the film's " + " and ".join(f"{side} edge ({missing[side]:g} mm of the field beyond it)"
                                                           for side in cut)
            + ": continued by repeating the film's edge; expect errors near that edge"]
    info["crop"] = {
        "field_mm": round(P * pix, 1), "model_pixel_mm": round(pix, 4), "centred_on": how,
        # the field's centre from the film's centre (mm at the isocentre; + = toward the image's bottom / right)
        "centre_offset_mm": [round((crow + t - rad.pixels.shape[0] / 2) * sr, 1),
                             round((ccol + l - rad.pixels.shape[1] / 2) * sc, 1)],
        "air_padded_mm": {side: mm for side, mm in missing.items() if side not in cut},
        "edge_filled_mm": {side: missing[side] for side in cut},  # the body runs off the film there
        "registration_shift_mm": shift,  # from the body anchor to the registered centre (down, right)
    }
    info["body_fraction"] = round(float(mask.mean()), 4)
    if stats is not None:
        info["intensity"] = f"histogram-matched to the training X-rays' in-body quantiles ({key})"
        train = info["training_body_fraction"] = float(stats["body_fraction"])
        if not 2 / 3 <= info["body_fraction"] / max(train, 1e-6) <= 1.5:
            info["warnings"] = info["warnings"] + [
                f"the body covers {100 * info['body_fraction']:.0f} % of the model's field here but "
                f"{100 * train:.0f} % in training: check the pixel spacing and magnification"]
    else:
        info["intensity"] = "robust percentiles (this checkpoint stores no training X-ray statistics)"
        info["notes"] = info["notes"] + ["no xray_stats in data_info.json (trained before they were stored): "
                                         "percentile mapping instead of histogram matching"]
    return np.clip(x, -1.0, 1.0), info


def patient_levels(xs: dict[str, np.ndarray], field: ModelField) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Histogram-matched films (view → (P, P)) moved from the training population's in-body level to the
    level their patient's body width predicts (xray_stats `level_fits`); (films, what was done per view).

    Each view's level comes from another view's width when that film is there (its width is this
    view's thickness), else from its own width. (x + 1) — the line integral up to li_max / 2 — is
    scaled, so air stays at −1 and the LUT stays monotone. Views without fits are returned unchanged.
    """
    stats = (field.xray_stats or {}).get("views", {})
    out, notes = dict(xs), {}
    masks = {v: body_mask(x) for v, x in xs.items()}
    for view, x in xs.items():
        fits = stats.get(view, {}).get("level_fits", {})
        source = next((w for w in xs if w != view and w in fits), view if view in fits else None)
        width = body_width(masks[source]) if source else 0.0
        if source is None or width <= 0:
            continue
        a, b = fits[source]
        if not masks[view].any():  # no body found in this film: nothing to scale
            continue
        ratio = math.exp(a + b * math.log(width)) / body_level(x, masks[view])
        lo, hi = LEVEL_RATIO_RANGE
        clamped = not lo <= ratio <= hi
        ratio = float(np.clip(ratio, lo, hi))
        out[view] = np.clip((x + 1.0) * ratio - 1.0, -1.0, 1.0)
        notes[view] = (f"in-body level × {ratio:.3f} from the {source} film's body width ({width:.1f} px)"
                       + (" (clamped: check the film's body outline)" if clamped else ""))
    return out, notes


def level_films(xs: dict[str, np.ndarray], infos: dict[str, dict], field: ModelField) -> dict[str, np.ndarray]:
    """`patient_levels` of a case's films (view → (P, P)), each note appended to that film's info["intensity"]."""
    levelled, notes = patient_levels(xs, field)
    for view, note in notes.items():
        infos[view]["intensity"] = f"{infos[view].get('intensity', '')}; {note}"
    return levelled


def film_placement_mm(infos: dict[str, dict], geometry: GeometryConfig) -> np.ndarray:
    """Where films' crops put the model's cube: Δ (3,) mm RAS+ from the point their central rays meet.

    `infos`: model view → the reader's info of the film fed as it (`crop.centre_offset_mm`, in that
    view's image frame); geometry/translate.crop_placement does the sum.
    """
    views = list(infos)
    offsets = torch.tensor([[infos[v]["crop"]["centre_offset_mm"] for v in views]], dtype=torch.float64)  # (1, V, 2)
    return crop_placement(offsets, [make_view(v, geometry) for v in views])[0].numpy()


def describe(info: dict) -> str:
    """One line of what was inferred from a film's header, for `hvc infer`'s log."""
    parts = [f"{info.get('modality', '?')} {info.get('header_view') or 'no ViewPosition'}"
             f" → {str(info.get('model_view') or info.get('view') or '?').upper()}"]
    sp = info.get("isocentre_spacing_mm")
    if sp:
        mag = info.get("magnification")
        parts.append(f"{sp[0]:.3f} × {sp[1]:.3f} mm/px at the isocentre"
                     + (f" (magnification {mag:.3f}: {info.get('magnification_source')})" if mag else ""))
    if info.get("orientation_ops"):
        parts.append(", ".join(info["orientation_ops"]))
    if info.get("inverted"):
        parts.append("MONOCHROME1 inverted")
    if info.get("voi"):
        v = info["voi"]
        parts.append("VOI LUT" if isinstance(v, str) else f"window {v['window_center']:g}/{v['window_width']:g}")
    if info.get("collimation_source"):
        parts.append(f"collimation ({'+'.join(info['collimation_source'])}) rows/cols {info['collimation_px']}")
    crop = info.get("crop")
    if crop:
        off = crop["centre_offset_mm"]
        parts.append(f"crop {crop['field_mm']:.0f} × {crop['field_mm']:.0f} mm centred {off[0]:+.0f} mm down, "
                     f"{off[1]:+.0f} mm right of the film centre ({crop['centred_on']})")
    if info.get("intensity"):
        parts.append(info["intensity"])
    return "; ".join(parts)

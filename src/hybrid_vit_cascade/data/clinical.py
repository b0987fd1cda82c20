"""A simulated clinical radiograph of a CT: what a CR / DX chest film is, written as a DICOM file.

The training DRRs are line integrals on the model's detector; a clinical film is processed display
intensities on a larger detector. `simulate_film` turns a canonical HU cube into such a film:

1. **Larger field, finer pitch.** The view is rendered with the model's source geometry (sid, sdd,
   beam kind, same central ray) on a detector `field` = 1.3–1.6× the model's detector extent per side
   (portrait/landscape drawn independently), read out at `pitch_mm` 0.1–0.2 mm — CR plates 0.1 mm
   (Fuji, Agfa) to 0.168 mm (Carestream), flat panels 0.125–0.2 mm (Canon 0.125/0.16, Trixell
   0.143/0.148, Varian 0.139). The CT holds no detail finer than its voxel, so the line integrals are
   rendered at half the model's pixel (`data/render.render_li` with a modified geometry) and
   interpolated to the pitch; noise is added per film pixel. At most MAX_FILM_PIXELS a side (the
   pitch is raised if needed; the largest CR read-outs are ~4300 px).
2. **Transmission and dose.** I = I0·exp(−li). The automatic exposure control sets the detector air
   kerma behind the body (median transmission of the body) to `dose_ugy` 1.5–5 µGy, IEC 62494-1
   exposure index 150–500 (manufacturers' chest targets: CR ~250, DR 150–300). Quanta per pixel =
   kerma × FLUENCE_PER_UGY (≈3·10⁴ photons/mm²/µGy, IEC 62220-1 RQA5/RQA9) × DQE × pixel area; DQE
   at low frequency 0.2–0.35 for CR, 0.5–0.7 for DR (DX).
3. **Scatter.** Scatter-to-primary ratio `scatter_spr` 0–0.3 at the detector behind an anti-scatter
   grid (chest with grid: ~0.2–0.5 in the lungs, higher behind the mediastinum), as a wide blur
   (σ = SCATTER_SIGMA_MM) of the primary.
4. **Detector noise.** Poisson quanta plus Gaussian electronic noise equivalent to
   `electronic_ugy` 0.02–0.3 µGy of kerma.
5. **Log or gamma, then the LUT.** `curve` "log" (CR read-outs and most DR raw data are logarithmic)
   or "gamma" (a power law I^γ, γ 0.3–0.5); auto-ranged between the 0.5th and 99.5th percentile of the
   body (exposure-field recognition / histogram analysis as in Fuji EDR, Carestream EVP), then a
   sigmoid tone curve (characteristic curve) of contrast `lut_contrast` 3–8 around `lut_centre`
   0.35–0.65 of the range that puts the body's range at display `display_range` (lungs 0.1–0.25,
   densest 0.85–0.95: the anatomy stays on the curve's straight part); beyond it the curve runs
   linearly to black / white within `toe` 0.1–0.3 of the range, so direct exposure (a few
   log units above the lungs) is black. Bright = attenuating.
6. **Unsharp masking.** d + g·(d − G_σ * d) with σ `usm_sigma_mm` 1–4 mm, gain `usm_gain` 0.5–1
   (Fuji frequency processing RN/RE, Agfa MUSICA edge contrast; kernels of a few mm).
7. **12-bit quantisation**, `photometric` MONOCHROME2 (bright = high value) or MONOCHROME1 (stored
   inverted, as many CR systems write), a Modality LUT (`rescale` slope, intercept) and a VOI window
   spanning 85–100 % of the stored range.
8. **Collimation.** A rectangular shutter band on each side, 2 % of the film up to 80 % of the margin
   outside the model's field: "white" (unexposed: only scatter reaches it, below the auto-ranged
   exposures, so the tone curve renders it at its white end, 95–100 % of full scale) or "black"
   (electronic masking).

`write_film_dicom` writes a CR (CR Image Storage) or DX "for presentation" file with the header a
reader needs (Modality, PhotometricInterpretation, BitsStored 12, ImagerPixelSpacing,
DistanceSourceToDetector/Patient, EstimatedRadiographicMagnificationFactor, ViewPosition,
PatientOrientation, RescaleSlope/Intercept, WindowCenter/Width). Every parameter is drawn from a seed
(`sample_film_params`), so the chain can also serve as training augmentation. ViewPosition RL (a right
lateral) is rendered from the patient's left on the mirrored cube and shown anterior-right.
9. **Marks** (data/film_marks.py): a lead side marker (L/R, 15–30 mm) inside the exposure in an upper
   outer corner on 90 % of films, and 1–3 lines of burned-in white text in a corner on half of them
   (over the collimation band or the image).
Not modelled: beam hardening (the DRR is monoenergetic), heel effect.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from scipy import ndimage

from ..config import DataConfig
from ..files import atomic_write
from ..geometry.views import make_view, resolve_det_spacing
from .film_marks import add_lead_marker, burn_in_text
from .render import render_li

# DICOM ViewPosition → the projector's view; the model's view → its DICOM ViewPosition.
PROJECTOR_VIEW = {"AP": "ap", "PA": "pa", "LL": "lateral", "RL": "lateral"}
VIEW_POSITION = {"ap": "AP", "pa": "PA", "lateral": "LL"}
# (column direction, row direction) of the displayed image, DICOM PatientOrientation letters.
PATIENT_ORIENTATION = {"AP": ("L", "F"), "PA": ("L", "F"), "LL": ("P", "F"), "RL": ("A", "F")}
SOP_CLASS = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}  # DX: for presentation

FLUENCE_PER_UGY = 3.0e4  # photons / mm² / µGy (IEC 62220-1 RQA5 29 653, RQA9 ~31 000)
SCATTER_SIGMA_MM = 40.0  # width of the scatter blur (scatter kernels of chest films span ~20–60 mm)
MAX_FILM_PIXELS = 4096
RENDER_OVERSAMPLE = 2  # render pixels per model pixel
BODY_LI = 0.05  # line integral above which a ray crossed the body (air: 0)
MAX_STORED = 4095  # 12 bits
AUTORANGE_PCT = (0.5, 99.5)


@dataclass(frozen=True)
class FilmParams:
    """Every choice of the chain for one film (ranges: module docstring)."""

    view_position: str  # AP, PA, LL, RL
    modality: str = "CR"  # CR or DX (for presentation)
    photometric: str = "MONOCHROME2"
    field: tuple[float, float] = (1.45, 1.35)  # film extent / model detector extent (rows, columns)
    pitch_mm: float = 0.15
    dose_ugy: float = 2.5
    dqe: float = 0.3
    electronic_ugy: float = 0.1
    scatter_spr: float = 0.15
    curve: str = "log"  # log or gamma
    gamma: float = 0.4
    lut_contrast: float = 5.0
    lut_centre: float = 0.5
    display_range: tuple[float, float] = (0.15, 0.9)  # display values of the body's auto-ranged ends
    toe: float = 0.2  # auto-ranged units beyond the body's ends to full black / white
    usm_sigma_mm: float = 2.5
    usm_gain: float = 0.7
    shutter: str = "white"  # white or black
    shutter_level: float = 0.95  # grey level of a white band, fraction of full scale
    shutter_frac: tuple[float, float, float, float] = (0.04, 0.04, 0.04, 0.04)  # top, bottom, left, right
    rescale: tuple[float, float] = (1.0, 0.0)  # slope, intercept
    window_fraction: float = 1.0  # VOI window width / stored range
    kvp: float = 120.0
    noise_seed: int = 0
    marker: str = ""  # lead side marker on the detector, "L" or "R" ("" = none; data/film_marks.py)
    marker_mm: float = 20.0  # its letter height on the film
    marker_at: tuple[float, float] = (0.1, 0.1)  # its top-left corner, fractions of the film (rows, columns)
    text_lines: int = 0  # lines of burned-in white text
    text_at: tuple[float, float] = (0.9, 0.05)  # the text block's top-left corner, fractions of the film


@dataclass
class Film:
    """A simulated film: stored pixels (rows, cols) uint16 and what the header says about them."""

    pixels: np.ndarray
    params: FilmParams
    sid: Optional[float]  # mm, None for a parallel beam
    sdd: Optional[float]
    model_extent_mm: float  # the model's detector edge on the same plane, mm
    exposure_index: float  # IEC 62494-1: 100 × µGy behind the body

    @property
    def display(self) -> np.ndarray:
        """Display values in [0, 1] of the stored pixels, bright = attenuating (MONOCHROME1 inverted back)."""
        d = self.pixels.astype(np.float64) / MAX_STORED
        return 1.0 - d if self.params.photometric == "MONOCHROME1" else d


def model_extent_mm(data_cfg: DataConfig, view: str) -> float:
    """Edge (mm, on the detector) of the model's square detector for a projector view."""
    v = make_view(view, data_cfg.geometry)
    return float(resolve_det_spacing(v, data_cfg.fov_mm) * data_cfg.geometry.det_pixels)


def sample_film_params(seed: int, view_position: str, data_cfg: DataConfig, **fixed) -> FilmParams:
    """Draw every parameter of a film from `seed`; keyword arguments fix chosen fields (e.g. pitch_mm)."""
    vp = view_position.upper()
    if vp not in PROJECTOR_VIEW:
        raise ValueError(f"view_position must be one of {sorted(PROJECTOR_VIEW)}, got {view_position!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & ((1 << 63) - 1), 0xF11]))
    # Every draw is made whatever is fixed, so fixing one field leaves the others' values unchanged.
    modality = fixed.get("modality", str(rng.choice(["CR", "DX"])))
    field = fixed.get("field", tuple(float(f) for f in rng.uniform(1.3, 1.6, 2)))
    margins = [(1 - 1 / f) / 2 for f in field]  # film fraction outside the model's field, per side
    shutter = [rng.uniform(0.02, max(0.021, 0.8 * margins[i // 2])) for i in range(4)]
    plain, slope, intercept = rng.random() < 0.5, float(rng.choice([0.5, 1.0, 2.0])), float(rng.integers(-1000, 1001))
    slope, intercept = (1.0, 0.0) if plain else (slope, intercept)  # most files: identity Modality LUT
    drawn = dict(
        modality=modality, photometric=str(rng.choice(["MONOCHROME1", "MONOCHROME2"])), field=field,
        pitch_mm=float(rng.uniform(0.1, 0.2)), dose_ugy=float(rng.uniform(1.5, 5.0)),
        dqe=float(rng.uniform(0.2, 0.35) if modality == "CR" else rng.uniform(0.5, 0.7)),
        electronic_ugy=float(rng.uniform(0.02, 0.3)), scatter_spr=float(rng.uniform(0.0, 0.3)),
        curve=str(rng.choice(["log", "gamma"])), gamma=float(rng.uniform(0.3, 0.5)),
        lut_contrast=float(rng.uniform(3.0, 8.0)), lut_centre=float(rng.uniform(0.35, 0.65)),
        display_range=(float(rng.uniform(0.1, 0.25)), float(rng.uniform(0.85, 0.95))),
        toe=float(rng.uniform(0.1, 0.3)),
        usm_sigma_mm=float(rng.uniform(1.0, 4.0)), usm_gain=float(rng.uniform(0.5, 1.0)),
        shutter=str(rng.choice(["white", "black"])), shutter_level=float(rng.uniform(0.95, 1.0)),
        shutter_frac=tuple(float(s) for s in shutter), rescale=(slope, intercept),
        window_fraction=float(rng.uniform(0.85, 1.0)),
        kvp=float(rng.uniform(80, 100) if vp == "AP" else rng.uniform(110, 125)),  # portable AP vs PA/lateral
        noise_seed=int(rng.integers(1 << 62)),
    )
    # Marks (drawn last: the draws above are those of films made before marks were simulated). The lead
    # letter lies inside the exposure in an upper outer corner (upper 25 %, outer 25 % of the film); the
    # side is the patient's left on most frontal films, the detector side on a lateral.
    extent = [f * model_extent_mm(data_cfg, PROJECTOR_VIEW[vp]) for f in field]  # film (rows, cols), mm
    letter = "L" if vp == "LL" else "R" if vp == "RL" else str(rng.choice(["L", "R"], p=[0.7, 0.3]))
    present, height = rng.random() < 0.9, float(rng.uniform(15.0, 30.0))
    top = shutter[0] + 0.01
    row = float(rng.uniform(top, max(top, 0.25 - height / extent[0])))
    w = height * 5 / 7 / extent[1]
    left = bool(rng.random() < 0.5)
    lo, hi = (shutter[2] + 0.01, 0.25 - w) if left else (0.75, 1 - shutter[3] - 0.01 - w)
    col = float(rng.uniform(lo, max(lo, hi)))
    lines = int(rng.integers(1, 4)) if rng.random() < 0.5 else 0
    text_at = (float(rng.choice([0.01, 0.92])), float(rng.choice([0.02, 0.55])))
    drawn.update(marker=letter if present else "", marker_mm=height, marker_at=(row, col), text_lines=lines,
                 text_at=text_at)
    unknown = set(fixed) - set(drawn)
    if unknown:
        raise ValueError(f"unknown film parameter(s) {sorted(unknown)}")
    drawn.update(fixed)
    p = FilmParams(view_position=vp, **drawn)
    _check(p)
    # A pitch that would exceed MAX_FILM_PIXELS is raised to fit (documented cap, not an error).
    extent = max(p.field) * model_extent_mm(data_cfg, PROJECTOR_VIEW[vp])
    if extent / p.pitch_mm > MAX_FILM_PIXELS:
        p = dataclasses.replace(p, pitch_mm=extent / MAX_FILM_PIXELS)
    return p


def _check(p: FilmParams) -> None:
    bad = []
    if p.view_position not in PROJECTOR_VIEW:
        bad.append(f"view_position {p.view_position!r}")
    if p.modality not in SOP_CLASS:
        bad.append(f"modality {p.modality!r} (CR or DX)")
    if p.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        bad.append(f"photometric {p.photometric!r}")
    if p.curve not in ("log", "gamma") or p.shutter not in ("white", "black"):
        bad.append(f"curve {p.curve!r} / shutter {p.shutter!r}")
    if not all(f > 1.0 for f in p.field) or not p.pitch_mm > 0 or not p.dose_ugy > 0 or not 0 < p.dqe <= 1:
        bad.append(f"field {p.field} (> 1), pitch {p.pitch_mm}, dose {p.dose_ugy}, dqe {p.dqe}")
    if not p.lut_contrast > 0 or p.rescale[0] == 0 or not 0 < p.window_fraction <= 1:
        bad.append(f"lut_contrast {p.lut_contrast}, rescale slope {p.rescale[0]}, window {p.window_fraction}")
    if p.marker not in ("", "L", "R") or not p.marker_mm > 0 or p.text_lines < 0:
        bad.append(f"marker {p.marker!r} ('', 'L' or 'R'), marker_mm {p.marker_mm}, text_lines {p.text_lines}")
    if not 0 < p.display_range[0] < p.display_range[1] < 1 or not p.toe > 0:
        bad.append(f"display_range {p.display_range} (0 < low < high < 1), toe {p.toe}")
    if bad:
        raise ValueError("invalid film parameters: " + "; ".join(bad))


def _linear_at(img: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Separable linear interpolation of img at fractional pixel positions (edges clamped)."""
    def along(a: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
        n = a.shape[axis]
        pos = np.clip(pos, 0, n - 1)
        i0 = np.minimum(np.floor(pos).astype(np.int64), n - 2) if n > 1 else np.zeros(len(pos), np.int64)
        w = (pos - i0).astype(a.dtype)
        a0, a1 = np.take(a, i0, axis=axis), np.take(a, np.minimum(i0 + 1, n - 1), axis=axis)
        shape = [1, 1]
        shape[axis] = -1
        return a0 + (a1 - a0) * w.reshape(shape)

    return along(along(img, rows, 0), cols, 1)


def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur; wide kernels on a block-averaged copy (they only carry low frequencies)."""
    k = max(1, int(sigma_px // 3))
    if k == 1:
        return ndimage.gaussian_filter(img, sigma_px, mode="nearest")
    H, W = img.shape
    h, w = -(-H // k), -(-W // k)
    pad = np.pad(img, ((0, h * k - H), (0, w * k - W)), mode="edge")
    small = ndimage.gaussian_filter(pad.reshape(h, k, w, k).mean(axis=(1, 3)), sigma_px / k, mode="nearest")
    # block j's centre sits at fine position j·k + (k−1)/2
    return _linear_at(small, (np.arange(H) - (k - 1) / 2) / k, (np.arange(W) - (k - 1) / 2) / k)


def film_line_integrals(hu: np.ndarray, data_cfg: DataConfig, p: FilmParams,
                        outside: Optional[tuple[np.ndarray, float]] = None) -> np.ndarray:
    """Line integrals (rows, cols) of the film's field at its pitch, display orientation of `p.view_position`.

    `hu`: the model's canonical cube; `outside`: (HU cube, its edge in mm) of the patient around it, air
    inside the model's cube (data/film_inputs.case_film_scene), whose integrals add to the cube's — a
    film sees the arms, shoulders and abdomen beyond the model's cube. None: air beyond the cube.
    """
    view = PROJECTOR_VIEW[p.view_position]
    cube = hu[::-1] if p.view_position == "RL" else hu  # RL: the mirrored patient seen as a left lateral
    delta = model_extent_mm(data_cfg, view) / data_cfg.geometry.det_pixels / RENDER_OVERSAMPLE
    extent = [f * model_extent_mm(data_cfg, view) for f in p.field]
    rows, cols = (int(round(e / p.pitch_mm)) for e in extent)
    if max(rows, cols) > MAX_FILM_PIXELS:
        raise ValueError(f"film of {rows}×{cols} pixels exceeds {MAX_FILM_PIXELS}: raise pitch_mm ({p.pitch_mm})")
    n_render = int(np.ceil(max(extent) / delta)) + 2
    n_render += 1 - n_render % 2  # odd: the model's pixel centres are render pixel centres
    geom = data_cfg.geometry.model_copy(update={"det_pixels": n_render, "det_spacing": delta})
    from ..geometry.projector import Projector

    projector = Projector(geom, [view])
    li = render_li(np.ascontiguousarray(cube), data_cfg, projector)[0].numpy().astype(np.float64)
    if outside is not None:  # line integrals add: the cube's at its own voxels, the rest at the scene's
        out_hu, out_fov = outside
        out_hu = out_hu[::-1] if p.view_position == "RL" else out_hu
        li += render_li(np.ascontiguousarray(out_hu), data_cfg.model_copy(update={"fov_mm": float(out_fov)}),
                        projector)[0].numpy().astype(np.float64)
    centre = (n_render - 1) / 2
    rpos = (np.arange(rows) - (rows - 1) / 2) * p.pitch_mm / delta + centre
    cpos = (np.arange(cols) - (cols - 1) / 2) * p.pitch_mm / delta + centre
    out = np.clip(_linear_at(li, rpos, cpos), 0.0, None)
    return out[:, ::-1].copy() if p.view_position == "RL" else out  # RL shown anterior on the right


def tone_curve(z: np.ndarray, contrast: float, centre: float) -> np.ndarray:
    """Sigmoid characteristic curve on [0, 1]: 0 → 0, 1 → 1, monotone (clipped outside)."""
    s = lambda x: 1.0 / (1.0 + np.exp(-contrast * (x - centre)))  # noqa: E731
    lo, hi = s(0.0), s(1.0)
    return np.clip((s(np.asarray(z, dtype=np.float64)) - lo) / (hi - lo), 0.0, 1.0)


def display_curve(z: np.ndarray, p: FilmParams) -> np.ndarray:
    """Auto-ranged exposure position z (0 = the body's most transmitted end, 1 = its densest) → display [0, 1].

    The tone curve inside [0, 1] scaled to `display_range`; linear toe / shoulder to 0 / 1 within `toe`.
    """
    z = np.asarray(z, dtype=np.float64)
    lo, hi = p.display_range
    d = lo + (hi - lo) * tone_curve(z, p.lut_contrast, p.lut_centre)
    d = np.where(z < 0, lo * (1 + z / p.toe), d)
    d = np.where(z > 1, hi + (1 - hi) * (z - 1) / p.toe, d)
    return np.clip(d, 0.0, 1.0)


def _body(li: np.ndarray) -> np.ndarray:
    """The pixels whose rays crossed the body; an error when (almost) none did."""
    body = li > BODY_LI
    if body.sum() < 16:
        raise ValueError("the film shows (almost) no body: nothing attenuates the beam")
    return body


def expose(li: np.ndarray, p: FilmParams) -> tuple[np.ndarray, float]:
    """Line integrals → (display values in [0, 1] before collimation, bright = attenuating; exposure index)."""
    rng = np.random.default_rng(p.noise_seed)
    body = _body(li)
    t = np.exp(-li)
    quanta_per_ugy = FLUENCE_PER_UGY * p.dqe * p.pitch_mm ** 2  # noise-equivalent quanta per pixel per µGy
    q0 = p.dose_ugy / float(np.median(t[body])) * quanta_per_ugy  # unattenuated beam, quanta per pixel
    primary = q0 * t
    mean = primary + p.scatter_spr * _blur(primary, SCATTER_SIGMA_MM / p.pitch_mm)
    counts = rng.poisson(mean).astype(np.float64)
    counts += rng.normal(0.0, np.sqrt(p.electronic_ugy * quanta_per_ugy), counts.shape)
    signal = np.maximum(counts, 0.5) / q0  # relative transmission; ≥ half a quantum keeps the log finite
    s = np.log(signal) if p.curve == "log" else signal ** p.gamma
    lo, hi = np.percentile(s[body], AUTORANGE_PCT)
    z = 1.0 - (s - lo) / max(hi - lo, 1e-12)  # 0 = most transmitted part of the body, 1 = densest
    d = display_curve(z, p)
    d = np.clip(d + p.usm_gain * (d - _blur(d, p.usm_sigma_mm / p.pitch_mm)), 0.0, 1.0)
    return d, 100.0 * p.dose_ugy


def collimate(d: np.ndarray, p: FilmParams) -> np.ndarray:
    """The shutter band: display value shutter_level (white) or 0 (black) on each side of the film."""
    out = d.copy()
    H, W = d.shape
    t, b, left, r = (int(round(f * n)) for f, n in zip(p.shutter_frac, (H, H, W, W)))
    level = p.shutter_level if p.shutter == "white" else 0.0
    out[:t], out[H - b:], out[:, :left], out[:, W - r:] = level, level, level, level
    return out


def simulate_film(hu: np.ndarray, data_cfg: DataConfig, p: FilmParams,
                  outside: Optional[tuple[np.ndarray, float]] = None) -> Film:
    """The whole chain on a canonical HU cube (RAS+, fov_mm, as `render_xrays` returns it) and, if given,
    the patient `outside` it (film_line_integrals)."""
    _check(p)
    li = film_line_integrals(hu, data_cfg, p, outside)
    _body(li)  # before the lead marker, which attenuates too
    d, ei = expose(add_lead_marker(li, p.marker, p.marker_mm, p.marker_at, p.pitch_mm), p)
    d = burn_in_text(collimate(d, p), p.text_lines, p.text_at, p.pitch_mm, p.noise_seed + 1)
    q = np.rint(d * MAX_STORED).astype(np.uint16)  # 12-bit display values
    stored = MAX_STORED - q if p.photometric == "MONOCHROME1" else q
    g = data_cfg.geometry
    cone = g.kind == "cone"
    extent = model_extent_mm(data_cfg, PROJECTOR_VIEW[p.view_position])
    return Film(stored.astype(np.uint16), p, g.sid if cone else None, g.sdd if cone else None, extent, ei)


def write_film_dicom(path: str | os.PathLike, film: Film, patient_id: str = "SIMULATED",
                     root: Optional[str | os.PathLike] = None) -> Path:
    """Write `film` as a CR, or DX for presentation, DICOM file (deterministic bytes for equal input)."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    p = film.params
    ent = [patient_id, p.view_position, str(p.noise_seed)]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASS[p.modality]
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=ent + ["sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[patient_id, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=ent + ["series"])
    ds.PatientID = ds.PatientName = patient_id
    ds.StudyDate = ds.SeriesDate = "20000101"  # fixed: the bytes depend on the inputs only
    ds.Modality, ds.BodyPartExamined = p.modality, "CHEST"
    ds.Manufacturer = "hybrid_vit_cascade (simulated)"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.DerivationDescription = "simulated clinical film from a CT (hybrid_vit_cascade.data.clinical)"
    ds.SeriesDescription = f"simulated {p.modality} chest {p.view_position}"
    if p.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ViewPosition = p.view_position
    ds.PatientOrientation = list(PATIENT_ORIENTATION[p.view_position])
    ds.ImagerPixelSpacing = [f"{p.pitch_mm:.6g}", f"{p.pitch_mm:.6g}"]
    if film.sid is not None:
        ds.DistanceSourceToDetector = f"{film.sdd:.6g}"
        ds.DistanceSourceToPatient = f"{film.sid:.6g}"
        ds.EstimatedRadiographicMagnificationFactor = f"{film.sdd / film.sid:.6g}"
    else:
        ds.EstimatedRadiographicMagnificationFactor = "1"
    ds.KVP = f"{p.kvp:.0f}"
    ds.ExposureIndex = f"{film.exposure_index:.1f}"
    ds.PixelIntensityRelationship = "LOG"
    # −1: higher values = less beam (bright = attenuating, MONOCHROME2); +1 for the inverted storage
    ds.PixelIntensityRelationshipSign = 1 if p.photometric == "MONOCHROME1" else -1
    slope, intercept = p.rescale
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:g}", f"{intercept:g}", "US"
    width = p.window_fraction * MAX_STORED * abs(slope)
    ds.WindowCenter = f"{(MAX_STORED / 2) * slope + intercept:.1f}"
    ds.WindowWidth = f"{width:.1f}"
    ds.VOILUTFunction = "LINEAR"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, p.photometric
    ds.Rows, ds.Columns = film.pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.ascontiguousarray(film.pixels.astype("<u2")).tobytes()
    return atomic_write(path, lambda f: pydicom.dcmwrite(f, ds, enforce_file_format=True), root=root)

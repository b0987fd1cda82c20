"""A CT's views as the model sees them through a clinical film: simulated, written, read back.

One home for the round trip both sides need: `hvc evaluate --clinical` scores reconstructions from
it (inference/clinical_eval.py) and training with `training.film_augment` shows the model such
inputs (training/film_cache.py). Each view is rendered as a CR/DX DICOM film (data/clinical.py),
written to disk, and read back by the same reader a user's film goes through (data/radiograph.py:
header, orientation, collimation; data/radiograph_fit.py: the model's field, histogram matching to
the training X-rays' statistics) — so what training sees is exactly what inference makes of a film,
crop-centring errors included.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from scipy import ndimage

from ..config import DataConfig
from ..geometry.physics import unit_to_hu
from .preprocessing import AIR_HU
from .clinical import FilmParams, simulate_film, write_film_dicom
from .radiograph import XrayReadError, read_radiograph
from .radiograph_fit import ModelField, level_films, radiograph_to_model


FILM_SCENE_FACTOR = 1.75  # the films' scene edge / fov_mm: a film's field is up to 1.6 × the model's detector
FILM_SCENE_MAX = 128  # voxels per edge of that scene (its detail is the periphery's; the cube keeps its own)


def case_cube_hu(ds, index: int, render_size: int, window: tuple[float, float]) -> np.ndarray:
    """The HU cube (render_size³, RAS+) the dataset's clean X-rays of case `index` were rendered from."""
    case = ds.cases[index]
    key = f"ct_{render_size}"
    with np.load(ds.root / case["file"]) as z:
        if key not in z:
            raise ValueError(f"case {case['case_id']}: no {key} in {case['file']} (the DRRs' render size); "
                             "re-prepare the dataset")
        unit = torch.from_numpy(np.ascontiguousarray(z[key], dtype=np.float32))
    return unit_to_hu(unit, window).numpy()


def _source_path(ds, case: dict) -> Optional[Path]:
    """The case's source CT as the manifest names it (relative to where `hvc prepare` ran, or the dataset)."""
    src = case.get("source")
    if not src:
        return None
    p = Path(src)
    for cand in ([p] if p.is_absolute() else [p, ds.root / p, ds.root.parent / p, ds.root.parent.parent / p]):
        if cand.exists():
            return cand
    return None


def case_film_scene(ds, index: int, render_size: int, data_cfg: DataConfig,
                    ct=None) -> tuple[Optional[tuple[np.ndarray, float]], str]:
    """(the patient around the model's cube as `film_line_integrals` takes it, or None; where it came from).

    A film shows everything between the source and the detector: neck, shoulders and abdomen above and
    below the model's cube, and the body in front of and behind it. The source CT is resampled over
    FILM_SCENE_FACTOR × fov_mm around the cube's own centre (the manifest's body_center_mm), at the
    cube's voxel size up to FILM_SCENE_MAX voxels an edge, with the model's cube itself set to air (it
    is rendered from its own voxels). Across the patient (x) the scene keeps the cube's own width: a
    lateral chest film is taken with the arms raised, out of the beam, while a CT's arms lie at the
    sides; and a CT's field cuts the arms of an off-centre patient, an edge no film shows (with it, AP
    crops missed across by 14 mm rms instead of 7.6 on the demo's phantoms). Without the source CT
    (moved, or not recorded) the film sees air beyond the cube, as the training X-rays do. `ct`: the
    source CT if the caller read it already (data/io.CTVolume).
    """
    from .io import CTReadError, read_ct
    from .preprocessing import canonicalize

    case, fov = ds.cases[index], float(data_cfg.fov_mm)
    path = _source_path(ds, case)
    if path is None or case.get("body_center_mm") is None:
        return None, "the model's cube only (source CT not found): air beyond it"
    g = data_cfg.geometry
    factor = FILM_SCENE_FACTOR if g.kind == "parallel" else min(FILM_SCENE_FACTOR, 1.9 * g.sid / fov)
    n = int(min(FILM_SCENE_MAX, round(render_size * factor)))
    edge = factor * fov
    try:
        hu = canonicalize(ct if ct is not None else read_ct(path), edge, n, np.asarray(case["body_center_mm"], dtype=float))
    except (CTReadError, OSError, ValueError) as err:
        return None, f"the model's cube only (source CT {path} unreadable: {err}): air beyond it"
    c = (np.arange(n) - (n - 1) / 2) * edge / n  # voxel centres, mm from the cube's centre
    inside = np.abs(c) < fov / 2
    hu[~inside] = AIR_HU  # across (RAS x): the cube's width only (see above)
    hu[np.ix_(inside, inside, inside)] = AIR_HU
    return (hu, edge), f"source CT {path.name} over {edge:.0f} mm ({n}³) around the model's cube"


def source_ct(ds, index: int):
    """Case `index`'s source CT (data/io.CTVolume) as the manifest names it, or None (not found, unreadable)."""
    from .io import CTReadError, read_ct

    path = _source_path(ds, ds.cases[index])
    try:
        return None if path is None else read_ct(path)
    except (CTReadError, OSError, ValueError):
        return None


def placed_ct_hu(ct, centre_mm: Sequence[float], fov_mm: float, size: int, delta_mm: Sequence[float]) -> np.ndarray:
    """The HU cube (size³, RAS+) a film's crop shows, from the source CT: the field centred Δ mm from the
    cube centred at `centre_mm`, with air beyond that cube's width across (x), as case_film_scene's films."""
    from .preprocessing import canonicalize

    delta = np.asarray(delta_mm, dtype=float)
    hu = canonicalize(ct, fov_mm, size, np.asarray(centre_mm, dtype=float) + delta)
    w = fov_mm / size
    x = (np.arange(size) - (size - 1) / 2) * w + delta[0]  # voxel centres, mm from the dataset cube's centre
    inside = np.clip((fov_mm / 2 - (np.abs(x) - w / 2)) / w, 0.0, 1.0)  # share of each slice within its width
    return (AIR_HU + (hu - AIR_HU) * inside[:, None, None]).astype(np.float32)


def placed_cube_hu(hu: np.ndarray, fov_mm: float, outside: Optional[tuple[np.ndarray, float]],
                   delta_mm: Sequence[float]) -> np.ndarray:
    """The HU cube (n³, RAS+) a film's crop shows: the model's field centred Δ mm (RAS+) from the cube `hu`.

    The world is the one the film was rendered from: the cube, plus `outside` (case_film_scene; None:
    air) around it. Both hold air where the other has the patient, so their attenuations add, as the
    film's line integrals do (trilinear, air beyond both). Sub-voxel moves blur it: with the source CT
    at hand, `placed_ct_hu` resamples the patient instead.
    """
    n = hu.shape[0]
    c = (np.arange(n) - (n - 1) / 2) * fov_mm / n  # the placed cube's voxel centres, mm from its centre
    pts = np.stack(np.meshgrid(*(c + float(d) for d in delta_mm), indexing="ij"))  # (3, n, n, n) mm
    out = np.full(hu.shape, AIR_HU, dtype=np.float32)
    sources = [(hu, fov_mm)] + ([outside] if outside is not None else [])
    for vol, edge in sources:
        m = vol.shape[0]
        idx = pts * (m / edge) + (m - 1) / 2  # mm → that volume's voxel index
        out += ndimage.map_coordinates(vol.astype(np.float32) - AIR_HU, idx, order=1, mode="constant", cval=0.0)
    return out


def film_round_trip(hu: np.ndarray, data_cfg: DataConfig, field: ModelField, views: Sequence[str],
                    params: Sequence[FilmParams], case_id: str, folder: str | os.PathLike,
                    root: Optional[str | os.PathLike] = None, keep: bool = False,
                    outside: Optional[tuple[np.ndarray, float]] = None) -> tuple[np.ndarray, list[dict], list[Path]]:
    """(V, P, P) float32 model input from one simulated film per view, the reader's info per film, the files.

    `hu`: the canonical HU cube (RAS+) the clean X-rays were rendered from; `params[v]` the film of
    `views[v]` (sample_film_params); `outside` the patient around the cube (case_film_scene). Files go to `folder` (inside `root` if given) and are deleted
    after reading unless `keep`. A film the reader takes for another view is an error: the header's
    view must survive the round trip, as it does for a user's film.
    """
    if len(params) != len(views):
        raise ValueError(f"{len(params)} film parameter set(s) for {len(views)} view(s)")
    paths: list[Path] = []
    try:
        for view, p in zip(views, params):
            film = simulate_film(hu, data_cfg, p, outside)
            paths.append(write_film_dicom(Path(folder) / f"{case_id}_{view}.dcm", film, case_id, root=root))
        xs, infos = [], []
        for view, path in zip(views, paths):
            rad = read_radiograph(path)
            if rad.view != view:
                raise XrayReadError(path, f"the reader took the {view} film for {rad.view!r}")
            x, info = radiograph_to_model(rad, field, view=view)
            xs.append(x)
            infos.append(info)
        levelled = level_films(dict(zip(views, xs)), dict(zip(views, infos)), field)  # as `hvc infer` does
        xs = [np.asarray(levelled[v], dtype=np.float32) for v in views]
    finally:
        if not keep:
            for path in paths:
                path.unlink(missing_ok=True)
    return np.stack(xs), infos, paths

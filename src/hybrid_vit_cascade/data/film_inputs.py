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

from ..config import DataConfig
from ..geometry.physics import unit_to_hu
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


def case_film_scene(ds, index: int, render_size: int, data_cfg: DataConfig) -> tuple[Optional[tuple[np.ndarray, float]], str]:
    """(the patient around the model's cube as `film_line_integrals` takes it, or None; where it came from).

    A film shows everything between the source and the detector: neck, shoulders and abdomen above and
    below the model's cube, and the body in front of and behind it. The source CT is resampled over
    FILM_SCENE_FACTOR × fov_mm around the cube's own centre (the manifest's body_center_mm), at the
    cube's voxel size up to FILM_SCENE_MAX voxels an edge, with the model's cube itself set to air (it
    is rendered from its own voxels). Across the patient (x) the scene keeps the cube's own width: a
    lateral chest film is taken with the arms raised, out of the beam, while a CT's arms lie at the
    sides; and a CT's field cuts the arms of an off-centre patient, an edge no film shows (with it, AP
    crops missed across by 14 mm rms instead of 7.6 on the demo's phantoms). Without the source CT
    (moved, or not recorded) the film sees air beyond the cube, as the training X-rays do.
    """
    from .io import CTReadError, read_ct
    from .preprocessing import AIR_HU, canonicalize

    case, fov = ds.cases[index], float(data_cfg.fov_mm)
    path = _source_path(ds, case)
    if path is None or case.get("body_center_mm") is None:
        return None, "the model's cube only (source CT not found): air beyond it"
    g = data_cfg.geometry
    factor = FILM_SCENE_FACTOR if g.kind == "parallel" else min(FILM_SCENE_FACTOR, 1.9 * g.sid / fov)
    n = int(min(FILM_SCENE_MAX, round(render_size * factor)))
    edge = factor * fov
    try:
        hu = canonicalize(read_ct(path), edge, n, np.asarray(case["body_center_mm"], dtype=float))
    except (CTReadError, OSError, ValueError) as err:
        return None, f"the model's cube only (source CT {path} unreadable: {err}): air beyond it"
    c = (np.arange(n) - (n - 1) / 2) * edge / n  # voxel centres, mm from the cube's centre
    inside = np.abs(c) < fov / 2
    hu[~inside] = AIR_HU  # across (RAS x): the cube's width only (see above)
    hu[np.ix_(inside, inside, inside)] = AIR_HU
    return (hu, edge), f"source CT {path.name} over {edge:.0f} mm ({n}³) around the model's cube"


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

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


def film_round_trip(hu: np.ndarray, data_cfg: DataConfig, field: ModelField, views: Sequence[str],
                    params: Sequence[FilmParams], case_id: str, folder: str | os.PathLike,
                    root: Optional[str | os.PathLike] = None,
                    keep: bool = False) -> tuple[np.ndarray, list[dict], list[Path]]:
    """(V, P, P) float32 model input from one simulated film per view, the reader's info per film, the files.

    `hu`: the canonical HU cube (RAS+) the clean X-rays were rendered from; `params[v]` the film of
    `views[v]` (sample_film_params). Files go to `folder` (inside `root` if given) and are deleted
    after reading unless `keep`. A film the reader takes for another view is an error: the header's
    view must survive the round trip, as it does for a user's film.
    """
    if len(params) != len(views):
        raise ValueError(f"{len(params)} film parameter set(s) for {len(views)} view(s)")
    paths: list[Path] = []
    try:
        for view, p in zip(views, params):
            film = simulate_film(hu, data_cfg, p)
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

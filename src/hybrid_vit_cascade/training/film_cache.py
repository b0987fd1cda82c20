"""Film-augmented training inputs (training.film_augment): each training case's views as clinical films, made once.

A user's film reaches the model through the reader (data/radiograph*.py): crop centred by
registration, intensities histogram-matched to the training X-rays, scatter and unsharp masking
left in. A model trained on clean line integrals only has never seen that input. With
`training.film_augment` > 0, every training case gets `training.film_variants` simulated films per
view (data/clinical.py, parameters drawn from (training.seed, variant, case, view)), each read back
by the same reader with this run's training X-ray statistics (data/film_inputs.py), cached as
`<data.cache_dir>/film_cache/films_<key>/<case_id>.npy` (F, V, P, P) float32 — the same per-case
store as the conditioning cache — with where the reader centred each crop, `<case_id>.crops.npy`
(F, V, 2): a film sample trains on the cube its crop shows (training/step.py). The key hashes what the films depend on (not the model), so a
rerun and another model on the same data (the regression baseline) reuse them; any change rebuilds. Training then swaps a sample's X-rays for one of its films with probability
`film_augment` (training/step.py); the physics loss keeps the clean line integrals.
Films are rendered at `film_pitch_mm`: FILM_PITCH_MM, or half a model pixel where that is finer
(clinical plates are 0.1–0.2 mm; every model pixel is then the area mean of ≥ 4 film pixels, and
tests/test_clinical_gap.py measured ±0.1 dB between 2 and 0.5 mm on the demo). Cost per film on the
2-core CPU of BENCHMARKS.md: 0.1 s for the demo (24³ cube, 32-px detector), 0.2 s at 128³ / 128 px,
1.0 s at 256³ / 256 px (0.74 mm pitch), single-threaded — every training process makes its share of the
cases, and a lone one spreads them over a pool of forked processes, one per CPU (the demo's 38 cases
on 2 cores: 33 s → 17 s, the same films bit for bit).
Training films show the model's cube only (air beyond it), like the training DRRs; `evaluate --clinical`
renders its films with the patient beyond the cube (data/film_inputs.case_film_scene), as a real film
is. Training on such films too was measured on the demo (one run each, same seeds), worse on both:
with the scene's full width, clean biplanar 27.12 → 26.58 dB and those films 21.61 → 21.06 dB (cascade),
21.10 → 20.69 dB (regression); with today's scene (the cube's width across), 27.12 → 26.74 dB and
22.10 → 21.25 dB (cascade), 22.00 → 21.17 dB (regression), the real chest CT 25.57 → 25.16 dB.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from hybrid_vit_cascade import parallel
from hybrid_vit_cascade.config import Config
from hybrid_vit_cascade.data.clinical import VIEW_POSITION, sample_film_params
from hybrid_vit_cascade.data.film_inputs import case_cube_hu, film_round_trip
from hybrid_vit_cascade.data.radiograph_fit import ModelField
from hybrid_vit_cascade.files import atomic_write, inside
from hybrid_vit_cascade.progress import progress_bar
from hybrid_vit_cascade.runtime.seeding import mix_seed
from hybrid_vit_cascade.training.cond_cache import ConditionCache

FILM_PITCH_MM = 2.0  # the films' pixel pitch at the isocentre, at most half a model pixel (film_pitch_mm)
# A lone training process makes its films in a pool of forked workers (parallel.py) from this many cases on
# (below it, one process is about as quick).
POOL_MIN_CASES = 12
FILM_VERSION = 6  # bump when the film chain or the reader changes what a film becomes (6: crops stored)


def film_case_id(case_id: str, f: int) -> str:
    """The id film f of a case goes by in the conditioning cache (stage k−1's sample from that film)."""
    return f"{case_id}.film{f}"


class FilmCache(ConditionCache):
    """The training films, `<case_id>.npy` (F, V, P, P), and where the reader centred each film's crop,
    `<case_id>.crops.npy` (F, V, 2): (down, right) mm at the isocentre from the film's centre."""

    def crops_path(self, case_id: str) -> Path:
        return self.path(case_id).with_suffix(".crops.npy")

    def save_crops(self, case_id: str, crops: np.ndarray) -> None:
        atomic_write(self.crops_path(case_id), lambda f: np.save(f, crops.astype(np.float32)), root=self.root)

    def film_cases(self, case_ids: list[str]) -> list[tuple[str, "torch.Tensor"]]:
        """[(film case id, (V, P, P) film input)] of every film of `case_ids`, for the conditioning cache."""
        import torch

        out = []
        for cid in case_ids:
            films = self.load(cid)  # (F, V, P, P)
            out += [(film_case_id(cid, f), torch.from_numpy(np.ascontiguousarray(x))) for f, x in enumerate(films)]
        return out

    def has(self, case_id: str) -> bool:
        """Are the case's films and crop centres both stored (an interrupted build made the crops first)?"""
        return self.path(case_id).is_file() and self.crops_path(case_id).is_file()

    def load_crops(self, case_id: str) -> np.ndarray:
        p = self.crops_path(case_id)
        if not p.is_file():
            raise FileNotFoundError(f"film cache {self.root} has no crop centres for case {case_id!r}; "
                                    "delete the folder to rebuild it")
        return np.load(p)


def film_pitch_mm(field: ModelField) -> float:
    """Training films' pitch: FILM_PITCH_MM, or half a model pixel where that is finer (a 256-px detector's
    1.5 mm pixel would otherwise be fed from 2 mm film pixels, blurrier than any clinical plate)."""
    return min(FILM_PITCH_MM, field.pixel_mm / 2)


def film_cache_key(cfg: Config, data_id: str, render_size: int, xray_stats: dict) -> str:
    """Hash of everything the training films depend on."""
    pitch = film_pitch_mm(ModelField(cfg.data.geometry, float(cfg.data.fov_mm)))
    d = {"data": cfg.data.model_dump(mode="json"), "data_id": data_id, "render_size": render_size,
         "stats": xray_stats, "seed": cfg.training.seed, "variants": cfg.training.film_variants,
         "pitch_mm": pitch, "version": FILM_VERSION}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _film_case(i: int, cfg: Config, ds, cache: FilmCache, field: ModelField, pitch: float, render_size: int,
               tmp: str) -> None:
    """Make, read back and store the training films of case i of `ds` (every variant, every view)."""
    tc, views = cfg.training, list(cfg.data.views)
    cid = ds.cases[i]["case_id"]
    hu = case_cube_hu(ds, i, render_size, tuple(float(v) for v in cfg.data.hu_window))
    films, crops = [], []
    for f in range(tc.film_variants):
        params = [sample_film_params(mix_seed("train-film", tc.seed, f, cid, v), VIEW_POSITION[v], cfg.data,
                                     pitch_mm=pitch) for v in views]
        x, infos, _ = film_round_trip(hu, cfg.data, field, views, params, cid, tmp)
        films.append(x)
        crops.append([info["crop"]["centre_offset_mm"] for info in infos])
    cache.save_crops(cid, np.asarray(crops))  # (F, V, 2): before the films, which mark the case done
    cache.save(cid, np.stack(films))  # (F, V, P, P)


def build_film_cache(cfg: Config, ds, cache_root: Path, data_id: str, render_size: int, xray_stats: dict,
                     log: Callable[[str], None] = print, progress: bool = True, rank: int = 0, world: int = 1,
                     barrier: Callable[[], None] = lambda: None) -> Optional[FilmCache]:
    """Films of every case of `ds` (a CTXrayDataset of the training split), reusing a complete cache;
    None when training.film_augment is 0. Cases are split over `world` ranks; `barrier` synchronises them."""
    tc = cfg.training
    if tc.film_augment <= 0:
        return None
    key = film_cache_key(cfg, data_id, render_size, xray_stats)  # objective and stages are not in it: shared
    cache = FilmCache(inside(Path(cache_root) / f"films_{key}", cache_root, "film cache"), 0, key)
    if cache.complete:
        log(f"film augmentation: reusing the training films in {cache.root}")
        return cache
    field = ModelField(cfg.data.geometry, float(cfg.data.fov_mm), xray_stats)
    pitch = film_pitch_mm(field)
    log(f"film augmentation: {tc.film_variants} simulated film(s) per view for {len(ds)} training cases "
        f"(p = {tc.film_augment:g})")
    todo = [i for i in range(len(ds)) if i % world == rank and not cache.has(ds.cases[i]["case_id"])]
    # A lone training process (world 1) makes its films on every free CPU: a film is single-threaded numpy.
    workers = parallel.pool_workers(len(todo), POOL_MIN_CASES) if world == 1 else 1
    with tempfile.TemporaryDirectory(prefix="hvc_films_") as tmp:
        made = parallel.fork_map(lambda i: _film_case(i, cfg, ds, cache, field, pitch, render_size, tmp), todo, workers)
        desc = "films" if workers == 1 else f"films ({workers} processes)"
        for _ in progress_bar(made, desc, "case", progress, total=len(todo)):
            pass
    cache.seal([c["case_id"] for c in ds.cases], {"films": tc.film_variants, "key": key, "cases": len(ds)},
               "film cache", rank, barrier)
    return cache

"""Training data plumbing: a resumable shuffled order and the stage dataset view."""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from hybrid_vit_cascade.runtime.seeding import mix_seed


class EpochShuffleSampler(Sampler[int]):
    """A permutation of range(n) that depends only on (seed, epoch): resuming mid-epoch replays it."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(mix_seed("order", self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class StageDataset(Dataset):
    """A split of the prepared dataset as one stage sees it.

    item = {"x0": (1, D, D, D) CT at the stage resolution in [-1, 1], "xray": (V, P, P),
    "index": dataset index, "case_id": str, and "prev": (1, d, d, d) — the previous stage's cached
    sample at its own resolution d (runtime.conditioning upsamples it) — when `cond_cache` is given}.
    `view_caches` {view-set label: cache} (training.view_dropout) add "prev_views": {label: (1, d, d, d)},
    the previous stage's sample from that view set alone, for the samples that show only it.
    `films` (training.film_augment, training/film_cache.py) add "films": (F, V, P, P), the case's X-rays
    as the reader makes them from F simulated clinical films, and "film_crops_mm": (F, V, 2), where the
    reader centred each film's crop; the step decides which sample uses one. `film_conds` {view-set label:
    cache} (stage k ≥ 2 with films) add "prev_films": {label: (F, 1, d, d, d)}, stage k−1's sample from
    each film shown with that view set (training/film_cache.film_case_id).
    """

    def __init__(self, base: Dataset, resolution: int, cond_cache=None, view_caches: Optional[dict] = None,
                 films=None, film_conds: Optional[dict] = None):
        self.base = base
        self.film_conds = film_conds or {}
        self.resolution = resolution
        self.cond_cache = cond_cache
        self.view_caches = view_caches or {}
        self.films = films

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = self.base[i]
        ct = item["ct"]
        if self.resolution not in ct:
            raise KeyError(f"dataset item has no CT at resolution {self.resolution} (has {sorted(ct)})")
        case_id = str(item["meta"]["case_id"])
        out = {
            "x0": torch.as_tensor(ct[self.resolution], dtype=torch.float32),
            "xray": torch.as_tensor(item["xray"], dtype=torch.float32),
            "index": i,
            "case_id": case_id,
        }
        if self.cond_cache is not None:
            out["prev"] = _load(self.cond_cache, case_id)
        if self.view_caches:
            out["prev_views"] = {label: _load(c, case_id) for label, c in self.view_caches.items()}
        if self.films is not None:
            out["films"] = _load(self.films, case_id)
            out["film_crops_mm"] = torch.from_numpy(np.asarray(self.films.load_crops(case_id), dtype=np.float32))
        if self.film_conds:
            from hybrid_vit_cascade.training.film_cache import film_case_id

            n = out["films"].shape[0]
            out["prev_films"] = {label: torch.stack([_load(c, film_case_id(case_id, f)) for f in range(n)])
                                 for label, c in self.film_conds.items()}
        return out


def _load(cache, case_id: str) -> torch.Tensor:
    return torch.from_numpy(np.asarray(cache.load(case_id), dtype=np.float32))


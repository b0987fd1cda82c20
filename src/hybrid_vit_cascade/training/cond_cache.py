"""Conditioning cache: the frozen stage k−1 samples every case ONCE; stage k trains on those samples.

Stage k is conditioned on what stage k−1 really produces at inference (its *sampled* output), not
on the ground truth downsampled — otherwise stage k would learn to trust a perfect input it never
gets. Sampling is slow, so at the start of stage k every train/val case is sampled once with the fast
sampler (training.cond_sample_steps) and cached to disk under a key that hashes the weights of
stages 1..k−1, their configs and the data, so a rerun reuses it and any change invalidates it.
How a cached sample becomes stage k's condition (upsampling, noise augmentation) is
runtime/conditioning.py, shared with inference.

With training.view_dropout, stage k also trains on samples that show one view only, and such a
sample must be conditioned on what stage k−1 produces from that same view: the cache is then built
once per view set (all views, each view alone; `views`), each set in its own folder whose key
names the set, stage j of a set conditioned on stage j−1 of the same set.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from hybrid_vit_cascade.config import Config
from hybrid_vit_cascade.files import atomic_write, inside, safe_component, write_json_atomic
from hybrid_vit_cascade.runtime.checkpoint import weights_hash
from hybrid_vit_cascade.runtime.conditioning import make_condition, stage_model_fn, subset_label
from hybrid_vit_cascade.runtime.objective import Objective
from hybrid_vit_cascade.runtime.sampling import resolve_sampling
from hybrid_vit_cascade.runtime.seeding import case_seed, mix_seed, sample_generators

COMPLETE = "complete.json"


class ConditionCache:
    """Stage j's sampled outputs, one `<case_id>.npy` (1, r, r, r) float32 per case, under a hashed key.

    training/film_cache.py keeps its films (F, V, P, P) in the same store (stage 0).
    """

    def __init__(self, root: Path, stage: int, key: str):
        self.root = Path(root)
        self.stage = stage
        self.key = key

    @property
    def complete(self) -> bool:
        return (self.root / COMPLETE).is_file()

    def path(self, case_id: str) -> Path:
        # Case ids are checked where a manifest is loaded; re-checked here because this path is written.
        return self.root / f"{safe_component(case_id, 'case id')}.npy"

    def load(self, case_id: str) -> np.ndarray:
        p = self.path(case_id)
        if not p.is_file():
            raise FileNotFoundError(
                f"conditioning cache {self.root} has no sample for case {case_id!r}; delete the folder to rebuild it"
            )
        return np.load(p)

    def save(self, case_id: str, arr: np.ndarray) -> None:
        atomic_write(self.path(case_id), lambda f: np.save(f, arr.astype(np.float32)), root=self.root)

    def seal(self, case_ids: Sequence[str], record: dict, what: str, rank: int = 0,
             barrier: Callable[[], None] = lambda: None) -> None:
        """After every rank saved its cases: rank 0 checks all `case_ids` are there and marks the cache
        complete with `record`; `what` names the cache in the error."""
        barrier()
        if rank == 0:
            missing = [c for c in case_ids if not self.path(c).is_file()]
            if missing:
                raise RuntimeError(f"{what} {self.root} is missing cases {missing[:5]}")
            write_json_atomic(self.root / COMPLETE, record)
        barrier()


def cache_key(cfg: Config, j: int, stage_weights: dict[str, Tensor], prev_key: Optional[str], data_id: str,
              views: Optional[Sequence[str]] = None) -> str:
    """Hash of everything stage j's cached samples depend on (`views`: a proper subset of the views)."""
    d = {
        "stage": j,
        "stage_cfg": cfg.stages[j - 1].model_dump(mode="json"),
        "weights": weights_hash(stage_weights),
        "prev": prev_key,
        "data": cfg.data.model_dump(mode="json"),
        "data_id": data_id,
        "diffusion": cfg.diffusion.model_dump(mode="json"),
        "objective": cfg.training.objective,
        "steps": cfg.training.cond_sample_steps,
        "seed": cfg.training.seed,
    }
    if views is not None:  # every view: no "views" entry, the key as computed before view sets existed
        d["views"] = list(views)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def build_condition_cache(
    cfg: Config,
    j: int,
    stages: Sequence[torch.nn.Module],
    cases: Sequence[tuple[str, Tensor]],
    cache_root: Path,
    data_id: str,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] = lambda: None,
    autocast=None,
    log: Callable[[str], None] = print,
    batch_size: int = 4,
    views: Optional[Sequence[str]] = None,
) -> ConditionCache:
    """Sampled outputs of stage j (1-based) for `cases` [(case_id, xray (V,P,P))], reusing a cache.

    Stage j is conditioned on stage j−1's cached outputs (built recursively). Cases are split over
    ranks; `barrier` synchronises them. `stages` hold the frozen (EMA) weights in eval mode.
    `views`: sample from these views only (the others masked out), None = every view.
    """
    all_views = list(cfg.data.views)
    if views is not None and list(views) == all_views:
        views = None
    if views is not None and (not views or any(v not in all_views for v in views)):
        raise ValueError(f"conditioning cache: views {list(views)} are not a subset of {all_views}")
    prev_cache = None
    if j >= 2:
        prev_cache = build_condition_cache(
            cfg, j - 1, stages, cases, cache_root, data_id, device, rank, world, barrier, autocast, log, batch_size,
            views,
        )
    stage = stages[j - 1]
    key = cache_key(cfg, j, stage.state_dict(), prev_cache.key if prev_cache else None, data_id, views)
    tag = "" if views is None else f"_{subset_label(views)}"
    folder = inside(Path(cache_root) / f"stage{j}_{cfg.stages[j - 1].name}{tag}_{key}", cache_root,
                    "conditioning cache")
    cache = ConditionCache(folder, j, key)
    what = f"stage-{j} samples" + ("" if views is None else f" from {subset_label(views)} alone")
    if cache.complete:
        log(f"conditioning: reusing cached {what} in {cache.root}")
        return cache
    res = cfg.stages[j - 1].resolution
    level = cfg.stages[j - 1].cond_noise_level
    objective = Objective(cfg)
    # One unguided chain per case, the config's sampler with training.cond_sample_steps.
    settings = resolve_sampling(cfg, steps=cfg.training.cond_sample_steps, samples=1, guidance_scale=0.0)
    mine = [c for i, c in enumerate(cases) if i % world == rank and not cache.path(c[0]).is_file()]
    log(f"conditioning: sampling {what} ({res}³, {settings.describe()}) for {len(cases)} cases")
    stage.eval()
    for b in range(0, len(mine), batch_size):
        chunk = mine[b : b + batch_size]
        ids = [c[0] for c in chunk]
        xray = torch.stack([c[1] for c in chunk]).to(device)  # (B, V, P, P)
        gens = sample_generators([mix_seed("cond-sample", cfg.training.seed, j, case_seed(c)) for c in ids], device)
        prev = cond_noise = None
        if prev_cache is not None:
            low = torch.stack([torch.from_numpy(prev_cache.load(c)) for c in ids]).to(device)
            aug_gens = sample_generators([mix_seed("cond-aug", cfg.training.seed, j, case_seed(c)) for c in ids], device)
            prev, cond_noise = make_condition(low, res, cfg, aug_gens, level)
        mask = None
        if views is not None:  # the same views for every case of this cache
            mask = torch.tensor([v in views for v in all_views], device=device).expand(len(ids), -1)
        model_fn = stage_model_fn(stage, xray, prev, cond_noise, autocast, view_mask=mask, reuse_condition=True)
        with torch.no_grad():
            out = objective.generate(model_fn, (len(ids), 1, res, res, res), device, gens, settings)
        for c, o in zip(ids, out.cpu().numpy()):
            cache.save(c, o)
    cache.seal([c for c, _ in cases], {"stage": j, "key": key, "cases": len(cases)}, "conditioning cache", rank,
               barrier)
    return cache

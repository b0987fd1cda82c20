"""Shared helpers for the training tests: a tiny 16³→32³ config and a phantom dataset in a tmp dir."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from hybrid_vit_cascade.config import config_from_dict

TINY_STAGE = {
    "voxel_dim": 32, "vit_depth": 1, "num_heads": 4, "patch_size": 4, "depth_bins": 8, "lift_channels": 4,
    "encoder_channels": 8, "refine_channels": 8, "prior_grid": 8, "unpatch_channels": 4,
}


def tiny_dict(dataset: str | Path | None, stages=(16, 32), n_cases: int = 8, cache_dir: str | Path | None = None,
              **training) -> dict:
    """A tiny config dict: 16³ (→ 32³) at width 32, 32-px detector, on a prepared dataset (or phantoms in cache_dir)."""
    d = {
        "stages": [{"name": f"s{r}", "volume_size": [r, r, r], **TINY_STAGE} for r in stages],
        "training": {"batch_size": 2, "num_epochs": 2, "learning_rate": 1e-3, "num_workers": 0, "warmup_steps": 2,
                     "val_samples": 1, "cond_sample_steps": 2, "log_every": 1, "seed": 0},
        "data": {"dataset": None if dataset is None else str(dataset),
                 "cache_dir": str(cache_dir or Path(dataset or ".") / "cache"), "phantoms": {"n": n_cases, "size": 32}, "geometry": {"det_pixels": 32},
                 "split": [0.75, 0.25, 0.0]},
        "diffusion": {"sample_steps": 3},
    }
    d["training"].update(training)
    return d


def tiny_cfg(dataset, stages=(16, 32), n_cases: int = 8, **training):
    return config_from_dict(tiny_dict(dataset, stages, n_cases, **training))


def write_cfg(path: Path, d: dict) -> Path:
    path.write_text(json.dumps(d, indent=1))
    return path


def metrics_by_step(checkpoint_dir: Path, key: str) -> dict[int, float]:
    """{step: value} of a scalar from CHECKPOINT_DIR/metrics.jsonl (last record wins)."""
    out = {}
    for line in (Path(checkpoint_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if key in rec:
            out[rec["step"]] = float(rec[key])
    return out


def prepare_tiny_dataset(cache: Path, n_cases: int = 8, split=(0.75, 0.25, 0.0)) -> Path:
    """Phantoms (32³) prepared at 16³ and 32³ with a 32-px detector into `cache`; returns the dataset dir."""
    from hybrid_vit_cascade.data.prepare import ensure_default_dataset

    d = tiny_dict(None, n_cases=n_cases, cache_dir=cache)
    d["data"]["split"] = list(split)
    return Path(ensure_default_dataset(config_from_dict(d).data, [16, 32], progress=False))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """The tiny phantom dataset (8 cases: 6 train / 2 val), prepared once per session."""
    return prepare_tiny_dataset(tmp_path_factory.mktemp("hvc_data"))


def clone(d: dict) -> dict:
    return copy.deepcopy(d)

"""Training data plumbing: a resumable shuffled order, per-sample generators, the stage dataset view."""
from __future__ import annotations

import hashlib
import zlib
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler


def mix_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across runs and machines)."""
    h = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def case_seed(case_id: str) -> int:
    return zlib.crc32(case_id.encode())


def sample_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One torch.Generator per seed, on `device`."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


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


def upsample_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Trilinear resize of (B, 1, d, d, d) or (1, d, d, d) to edge `size` (identity if equal)."""
    squeeze = x.dim() == 4
    if squeeze:
        x = x[None]
    if x.shape[-1] != size:
        x = F.interpolate(x.float(), size=(size, size, size), mode="trilinear", align_corners=False)
    return x[0] if squeeze else x


class StageDataset(Dataset):
    """A split of the prepared dataset as one stage sees it.

    item = {"x0": (1, D, D, D) CT at the stage resolution in [-1, 1], "xray": (V, P, P),
    "index": dataset index, "case_id": str, and "prev": (1, D, D, D) — the previous stage's cached
    sample upsampled to D — when `cond_cache` is given}.
    """

    def __init__(self, base: Dataset, resolution: int, cond_cache=None):
        self.base = base
        self.resolution = resolution
        self.cond_cache = cond_cache

    def __len__(self) -> int:
        return len(self.base)

    def case_id(self, i: int) -> str:
        ids = getattr(self.base, "case_ids", None)
        if ids is not None:
            return str(ids[i])
        return str(self.base[i]["meta"]["case_id"])

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
            prev = torch.from_numpy(np.asarray(self.cond_cache.load(case_id), dtype=np.float32))
            out["prev"] = upsample_to(prev, self.resolution)
        return out


def subset_indices(n: int, k: Optional[int]) -> list[int]:
    """The first k indices (all if k is None) — the fixed validation samples."""
    return list(range(n if k is None else min(k, n)))

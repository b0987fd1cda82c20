"""Per-sample randomness: every draw of a case comes from its own generator seeded by a stable tuple.

A sample's noise then depends only on (purpose, seed, stage, case, …) — not on the batch size,
gradient accumulation, the rank or a resume point — in training, validation, the conditioning
cache and inference alike.
"""
from __future__ import annotations

import hashlib
import zlib
from typing import Sequence

import torch
from torch import Tensor


def mix_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across runs and machines)."""
    h = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def case_seed(case_id: str) -> int:
    """A stable 32-bit integer of a case id (for seeds that take ints)."""
    return zlib.crc32(case_id.encode())


def sample_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One torch.Generator per seed, on `device`."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def per_sample_randn(gens: Sequence[torch.Generator], shape: Sequence[int], device, dtype=torch.float32) -> Tensor:
    """(B, *shape) standard normal, item b drawn from gens[b]."""
    return torch.stack([torch.randn(tuple(shape), generator=g, device=device, dtype=dtype) for g in gens])


def per_sample_rand(gens: Sequence[torch.Generator], device, dtype=torch.float32) -> Tensor:
    """(B,) uniform [0, 1), item b drawn from gens[b]."""
    return torch.cat([torch.rand(1, generator=g, device=device, dtype=dtype) for g in gens])

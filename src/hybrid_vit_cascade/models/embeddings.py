"""Embeddings: continuous-time / noise-level embedding, 3D sin-cos positions, 3D patch embedding,
and the pooled X-ray embedding that joins the conditioning vector (DiT-style)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

# Continuous t ∈ [0, 1] is scaled to the range of discrete DDPM steps so the sinusoid frequencies
# (designed for integer steps up to ~1000) resolve small differences in t.
TIME_SCALE = 1000.0


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding (B, dim) of continuous times t (B,) in [0, 1]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * TIME_SCALE)[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """t (B,) in [0, 1] → (B, hidden): sinusoid then a two-layer MLP (also used for the conditioning noise level)."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


def _sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """(N,) positions → (N, dim) sin-cos embedding; dim must be even."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.double()[:, None] * omega[None]  # (N, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_pos_embed_3d(dim: int, grid: int) -> Tensor:
    """Fixed 3D sin-cos positional embedding (grid³, dim), tokens in (d, h, w) raster order."""
    # Split the width into three even parts (one per axis); any odd remainder is a zero channel.
    even = dim - dim % 2
    per = [2 * (even // 6)] * 3
    for i in range((even - sum(per)) // 2):
        per[i] += 2
    coords = torch.arange(grid, dtype=torch.float64)
    gd, gh, gw = torch.meshgrid(coords, coords, coords, indexing="ij")  # matches Conv3d flatten order
    parts = [_sincos_1d(n, g.reshape(-1)) for n, g in zip(per, (gd, gh, gw)) if n > 0]
    emb = torch.cat(parts, dim=1)
    if emb.shape[1] < dim:
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], dim - emb.shape[1])], dim=1)
    return emb.float()


class PatchEmbed3D(nn.Module):
    """Non-overlapping 3D patches → tokens: Conv3d with kernel = stride = patch."""

    def __init__(self, in_channels: int, hidden: int, patch: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv3d(in_channels, hidden, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        B, C, D, H, W = x.shape
        x = self.proj(x)  # (B, hidden, D/p, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # (B, N, hidden), N in (d, h, w) raster order


class XrayEmbedder(nn.Module):
    """Pooled per-view X-ray features (B, V, C) → one conditioning vector (B, hidden).

    Each view gets a learned view embedding before a shared MLP, then views are summed, so the
    vector knows which view said what and the same code serves one or two views.
    """

    def __init__(self, n_views: int, in_channels: int, hidden: int):
        super().__init__()
        self.view_embed = nn.Parameter(torch.zeros(n_views, in_channels))
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, pooled: Tensor) -> Tensor:
        B, V, C = pooled.shape
        return self.mlp(pooled + self.view_embed[None]).sum(dim=1)  # (B, V, hidden) → (B, hidden)

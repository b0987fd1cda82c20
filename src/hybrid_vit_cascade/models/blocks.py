"""Transformer and convolution building blocks: AdaLN-Zero DiT block (3D tokens), final layer,
and the GroupNorm+SiLU residual convolutions of the hybrid CNN parts."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """AdaLN modulation of tokens x (B, N, C) by per-sample shift/scale (B, C)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def norm_groups(channels: int, max_groups: int = 8) -> int:
    """Largest group count ≤ max_groups that divides `channels` (GroupNorm needs an exact split)."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


class Attention(nn.Module):
    """Multi-head self-attention; `fused=True` uses scaled_dot_product_attention (flash / mem-efficient kernels)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fused = True

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, h, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, hd)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = manual_attention(q, k, v)
        out = out.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj(out)


def manual_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Reference softmax(q kᵀ / √d) v for (B, h, N, d) tensors."""
    att = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, h, N, N)
    return att.softmax(dim=-1) @ v


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """Transformer block with AdaLN-Zero conditioning: identity at init once the modulation is zeroed."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        # c → shift/scale/gate for attention and MLP (6 × dim); its Linear is zero-initialised.
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """AdaLN (shift/scale) then a linear map of each token to its patch: (B, N, C) → (B, N, p³·out)."""

    def __init__(self, dim: int, patch: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch**3 * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class ResBlock(nn.Module):
    """Pre-activation residual block (GroupNorm → SiLU → conv, twice) in 2D or 3D."""

    def __init__(self, channels: int, dims: int):
        super().__init__()
        Conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.net = nn.Sequential(
            nn.GroupNorm(norm_groups(channels), channels),
            nn.SiLU(),
            Conv(channels, channels, 3, padding=1),
            nn.GroupNorm(norm_groups(channels), channels),
            nn.SiLU(),
            Conv(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


def conv_norm_act(in_ch: int, out_ch: int, dims: int, stride: int = 1) -> nn.Sequential:
    """3×3 conv → GroupNorm → SiLU."""
    Conv = nn.Conv2d if dims == 2 else nn.Conv3d
    return nn.Sequential(
        Conv(in_ch, out_ch, 3, stride=stride, padding=1), nn.GroupNorm(norm_groups(out_ch), out_ch), nn.SiLU()
    )


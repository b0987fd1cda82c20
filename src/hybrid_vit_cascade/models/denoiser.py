"""Hybrid 3D ViT denoiser, in one file as DiT keeps it: conv stem → 3D patch tokens → AdaLN-Zero
DiT blocks → unpatchify → convolutional refinement head with a skip from the stem (CNN for local
detail, attention for global context). Predicts v (B, 1, D, D, D).

Reading order: convolution blocks (also used by the X-ray encoder), embeddings of time, position,
patches and pooled X-rays, the transformer blocks, then `HybridViT3D` and its `initialize_weights`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

# Continuous t ∈ [0, 1] is scaled to the range of discrete DDPM steps so the sinusoid frequencies
# (designed for integer steps up to ~1000) resolve small differences in t.
TIME_SCALE = 1000.0
MAX_PERIOD = 10000.0  # longest sinusoid period, as in DiT / ADM
FREQ_DIM = 256  # width of the sinusoidal time embedding before its MLP (DiT's default)
MAX_NORM_GROUPS = 8
# On CPU the 3D convolutions run channels-last (weights and activations): oneDNN's fast layout. The
# full-resolution conv heads are most of a small stage's step (BENCHMARKS.md), and the demo's 24³ step
# (batch 4) went from 253 to 226 ms on one thread, 162 to 131 ms on two; a 64³ quick_2stage step 15.0 → 12.7 s.
# Elsewhere (cuDNN, MPS: not measured here) they keep the default layout.
CPU_CONV_LAYOUT = torch.channels_last_3d


# ---------------------------------------------------------------------- convolution blocks
class Conv3d(nn.Conv3d):
    """nn.Conv3d computed in CPU_CONV_LAYOUT on CPU; its weight stays contiguous, so a state dict saves as it is."""

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu":
            return super().forward(x.contiguous())  # unpatchify hands over a channels-last view
        w = self.weight.contiguous(memory_format=CPU_CONV_LAYOUT)  # a few thousand numbers: copied per call
        return self._conv_forward(x.contiguous(memory_format=CPU_CONV_LAYOUT), w, self.bias)


def norm_groups(channels: int) -> int:
    """Largest group count ≤ MAX_NORM_GROUPS that divides `channels` (GroupNorm needs an exact split)."""
    for g in range(min(MAX_NORM_GROUPS, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def conv_norm_act(in_ch: int, out_ch: int, dims: int, stride: int = 1) -> nn.Sequential:
    """3×3 conv → GroupNorm → SiLU."""
    Conv = nn.Conv2d if dims == 2 else Conv3d
    return nn.Sequential(
        Conv(in_ch, out_ch, 3, stride=stride, padding=1), nn.GroupNorm(norm_groups(out_ch), out_ch), nn.SiLU()
    )


class ResBlock(nn.Module):
    """Pre-activation residual block (GroupNorm → SiLU → conv, twice) in 2D or 3D."""

    def __init__(self, channels: int, dims: int):
        super().__init__()
        Conv = nn.Conv2d if dims == 2 else Conv3d
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


# ---------------------------------------------------------------------- embeddings
def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding (B, dim) of continuous times t (B,) in [0, 1]."""
    half = dim // 2
    freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * TIME_SCALE)[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """t (B,) in [0, 1] → (B, hidden): sinusoid then a two-layer MLP (also used for the conditioning noise level)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQ_DIM, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, FREQ_DIM).to(self.mlp[0].weight.dtype))


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
        self.proj = Conv3d(in_channels, hidden, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)  # (B, hidden, D/p, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # (B, N, hidden), N in (d, h, w) raster order


class XrayEmbedder(nn.Module):
    """Pooled per-view X-ray features (B, V, C) → one conditioning vector (B, hidden).

    Each view gets a learned view embedding before a shared MLP, then views are summed, so the
    vector knows which view said what and the same code serves one or two views. A view absent
    from the input arrives as its learned missing-view token (CascadeStage, view_mask).
    """

    def __init__(self, n_views: int, in_channels: int, hidden: int):
        super().__init__()
        self.view_embed = nn.Parameter(torch.zeros(n_views, in_channels))
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, pooled: Tensor) -> Tensor:
        return self.mlp(pooled + self.view_embed[None]).sum(dim=1)  # (B, V, hidden) → (B, hidden)


# ---------------------------------------------------------------------- transformer blocks
def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """AdaLN modulation of tokens x (B, N, C) by per-sample shift/scale (B, C)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    """Multi-head self-attention through scaled_dot_product_attention (flash / mem-efficient kernels)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, h, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, hd)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj(out)


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

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
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


# ---------------------------------------------------------------------- the denoiser
class HybridViT3D(nn.Module):
    """(x_in (B, C_in, D, D, D), t (B,), pooled X-ray features (B, V, C_x), cond_noise (B,) | None) → v."""

    def __init__(
        self,
        in_channels: int,
        resolution: int,
        patch_size: int,
        hidden: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        n_views: int,
        xray_channels: int,
        refine_channels: int,
        unpatch_channels: int,
        use_cond_noise: bool,
        grad_checkpointing: bool,
    ):
        super().__init__()
        if resolution % patch_size:
            raise ValueError(f"resolution {resolution} is not divisible by patch_size {patch_size}")
        self.in_channels = in_channels
        self.resolution = resolution
        self.patch_size = patch_size
        self.grid = resolution // patch_size
        self.unpatch_channels = unpatch_channels
        self.grad_checkpointing = grad_checkpointing

        self.stem = nn.Sequential(conv_norm_act(in_channels, refine_channels, dims=3), ResBlock(refine_channels, dims=3))
        self.patch_embed = PatchEmbed3D(refine_channels, hidden, patch_size)
        # Fixed (not learned) positions: a non-persistent buffer, rebuilt from the config.
        self.register_buffer("pos_embed", sincos_pos_embed_3d(hidden, self.grid)[None], persistent=False)

        self.t_embedder = TimestepEmbedder(hidden)
        self.xray_embedder = XrayEmbedder(n_views, xray_channels, hidden)
        self.noise_embedder = TimestepEmbedder(hidden) if use_cond_noise else None

        self.blocks = nn.ModuleList(DiTBlock(hidden, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden, patch_size, unpatch_channels)
        # Refinement sees the unpatchified tokens, the stem features and x_t itself (skip).
        self.refine = nn.Sequential(
            conv_norm_act(unpatch_channels + refine_channels + 1, refine_channels, dims=3),
            ResBlock(refine_channels, dims=3),
            Conv3d(refine_channels, 1, 3, padding=1),
        )
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT init: xavier for linear layers and the patch embedding, zero adaLN modulation and output layers."""

        def _basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.apply(_basic)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a linear map of the flattened patch
        nn.init.zeros_(self.patch_embed.proj.bias)
        for emb in (self.t_embedder, self.noise_embedder):
            if emb is not None:
                nn.init.normal_(emb.mlp[0].weight, std=0.02)
                nn.init.normal_(emb.mlp[2].weight, std=0.02)
        nn.init.normal_(self.xray_embedder.view_embed, std=0.02)
        # AdaLN-Zero: every block starts as the identity.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        # The prediction starts at v = 0, as DiT's zeroed final layer does.
        nn.init.zeros_(self.refine[-1].weight)
        nn.init.zeros_(self.refine[-1].bias)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, N, p³·C) tokens → (B, C, D, D, D) volume."""
        B, N, _ = x.shape
        p, g, C = self.patch_size, self.grid, self.unpatch_channels
        x = x.reshape(B, g, g, g, p, p, p, C)  # (B, gd, gh, gw, pd, ph, pw, C)
        x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(B, g * p, g * p, g * p, C)  # (B, D, H, W, C)
        return x.permute(0, 4, 1, 2, 3)  # (B, C, D, H, W), channels-last in memory (CPU_CONV_LAYOUT)

    def condition(self, t: Tensor, xray_pooled: Tensor, cond_noise: Optional[Tensor]) -> Tensor:
        """Conditioning vector c (B, hidden): time + pooled X-ray (+ conditioning noise level)."""
        c = self.t_embedder(t) + self.xray_embedder(xray_pooled)
        if self.noise_embedder is not None:
            if cond_noise is None:
                cond_noise = torch.zeros_like(t)  # a clean previous stage
            c = c + self.noise_embedder(cond_noise)
        return c

    def _checkpointing(self) -> bool:
        return self.grad_checkpointing and self.training and torch.is_grad_enabled()

    def _run(self, fn, *args):
        if self._checkpointing():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _run_res(self, block: ResBlock, x: Tensor) -> Tensor:
        """A full-resolution ResBlock; checkpointed per half, so backward recomputes one half at a time.

        Checkpointing the block whole would rebuild all six of its full-size intermediates at once in
        backward (≈ 6 × 2 GB for 32 channels at 256³); per half only the half's three exist, and what
        is kept between forward and backward is the block's input and its middle activation.
        """
        if not self._checkpointing():
            return block(x)
        mid = checkpoint(block.net[:3], x, use_reentrant=False)
        return x + checkpoint(block.net[3:], mid, use_reentrant=False)

    def _refine_in(self, x: Tensor, stem: Tensor, x_t: Tensor) -> Tensor:
        # The concatenation lives inside the checkpointed segment: at 256³ it is 41 channels (2.7 GB).
        return self.refine[0](torch.cat([x, stem, x_t], dim=1))

    def forward(self, x_in: Tensor, t: Tensor, xray_pooled: Tensor, cond_noise: Optional[Tensor]) -> Tensor:
        B, C, D, H, W = x_in.shape
        if C != self.in_channels or not (D == H == W == self.resolution):
            raise ValueError(
                f"denoiser expects (B, {self.in_channels}, {self.resolution}³) input, got {tuple(x_in.shape)}"
            )
        c = self.condition(t, xray_pooled, cond_noise)  # (B, hidden)
        stem = self._run_res(self.stem[1], self._run(self.stem[0], x_in))  # (B, C_r, D, H, W)
        x = self.patch_embed(stem) + self.pos_embed.to(stem.dtype)  # (B, N, hidden)
        for block in self.blocks:
            x = self._run(block, x, c)  # (B, N, hidden)
        x = self.final_layer(x, c)  # (B, N, p³·C_u)
        x = self.unpatchify(x)  # (B, C_u, D, H, W)
        r = self._run(self._refine_in, x, stem, x_in[:, :1])  # (B, C_r, D, H, W)
        return self._run(self.refine[2], self._run_res(self.refine[1], r))  # (B, 1, D, H, W)

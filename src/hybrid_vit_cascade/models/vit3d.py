"""Hybrid 3D ViT denoiser: conv stem → 3D patch tokens → AdaLN-Zero DiT blocks → unpatchify →
convolutional refinement head with a skip from the stem (CNN for local detail, attention for
global context). Predicts v (B, 1, D, D, D)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .blocks import DiTBlock, FinalLayer, ResBlock, conv_norm_act
from .embeddings import PatchEmbed3D, TimestepEmbedder, XrayEmbedder, sincos_pos_embed_3d


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
        grad_checkpointing: bool = False,
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
            nn.Conv3d(refine_channels, 1, 3, padding=1),
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
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, gd, pd, gh, ph, gw, pw)
        return x.reshape(B, C, g * p, g * p, g * p)  # (B, C, D, H, W)

    def condition(self, t: Tensor, xray_pooled: Tensor, cond_noise: Optional[Tensor]) -> Tensor:
        """Conditioning vector c (B, hidden): time + pooled X-ray (+ conditioning noise level)."""
        c = self.t_embedder(t) + self.xray_embedder(xray_pooled)
        if self.noise_embedder is not None:
            if cond_noise is None:
                cond_noise = torch.zeros_like(t)  # a clean previous stage
            c = c + self.noise_embedder(cond_noise)
        return c

    def _run(self, fn, *args):
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(self, x_in: Tensor, t: Tensor, xray_pooled: Tensor, cond_noise: Optional[Tensor] = None) -> Tensor:
        B, C, D, H, W = x_in.shape
        if C != self.in_channels or not (D == H == W == self.resolution):
            raise ValueError(
                f"denoiser expects (B, {self.in_channels}, {self.resolution}³) input, got {tuple(x_in.shape)}"
            )
        c = self.condition(t, xray_pooled, cond_noise)  # (B, hidden)
        stem = self._run(self.stem, x_in)  # (B, C_r, D, H, W)
        x = self.patch_embed(stem) + self.pos_embed.to(stem.dtype)  # (B, N, hidden)
        for block in self.blocks:
            x = self._run(block, x, c)  # (B, N, hidden)
        x = self.final_layer(x, c)  # (B, N, p³·C_u)
        x = self.unpatchify(x)  # (B, C_u, D, H, W)
        return self._run(self.refine, torch.cat([x, stem, x_in[:, :1]], dim=1))  # (B, 1, D, H, W)


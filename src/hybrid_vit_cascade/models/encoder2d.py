"""2D X-ray encoder: one small residual CNN per view (AP and lateral images look nothing alike,
so they do not share weights). Its feature maps feed both depth lifting and the pooled conditioning."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from .denoiser import ResBlock, conv_norm_act


class ViewEncoder(nn.Module):
    """(B, 1, P, P) → (B, C, P / 2^downsample, P / 2^downsample) convolutional features."""

    def __init__(self, channels: int, downsample: int):
        super().__init__()
        layers: list[nn.Module] = [conv_norm_act(1, channels, dims=2), ResBlock(channels, dims=2)]
        for _ in range(downsample):
            layers += [conv_norm_act(channels, channels, dims=2, stride=2), ResBlock(channels, dims=2)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class XrayEncoder(nn.Module):
    """(B, V, P, P) X-rays in [-1, 1] → (B, V, C, P', P') features, one encoder per view.

    An absent view (view_mask False) gets its learned "missing view" embedding `missing[v]` (C,)
    at every pixel instead of features, so none of its pixels reach the output. Zero-initialised
    (no random draw, so building the model consumes the RNG as before); view_mask=None never reads it.
    """

    def __init__(self, n_views: int, channels: int, downsample: int):
        super().__init__()
        self.encoders = nn.ModuleList(ViewEncoder(channels, downsample) for _ in range(n_views))
        self.missing = nn.Parameter(torch.zeros(n_views, channels))

    def forward(self, xray: Tensor, view_mask: Optional[Tensor] = None) -> Tensor:
        B, V, P, _ = xray.shape
        feats = [enc(xray[:, v : v + 1]) for v, enc in enumerate(self.encoders)]  # V × (B, C, P', P')
        feats = torch.stack(feats, dim=1)  # (B, V, C, P', P')
        if view_mask is None:
            return feats
        # where(): the absent view's features, and their gradient, are replaced, not scaled.
        missing = self.missing[None, :, :, None, None].to(feats.dtype)  # (1, V, C, 1, 1)
        return torch.where(view_mask[:, :, None, None, None], feats, missing)

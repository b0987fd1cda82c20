"""2D X-ray encoder: one small residual CNN per view (AP and lateral images look nothing alike,
so they do not share weights). Its feature maps feed both depth lifting and the pooled conditioning."""
from __future__ import annotations

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
    """(B, V, P, P) X-rays in [-1, 1] → (B, V, C, P', P') features, one encoder per view."""

    def __init__(self, n_views: int, channels: int, downsample: int):
        super().__init__()
        self.encoders = nn.ModuleList(ViewEncoder(channels, downsample) for _ in range(n_views))

    def forward(self, xray: Tensor) -> Tensor:
        B, V, P, _ = xray.shape
        feats = [enc(xray[:, v : v + 1]) for v, enc in enumerate(self.encoders)]  # V × (B, C, P', P')
        return torch.stack(feats, dim=1)  # (B, V, C, P', P')

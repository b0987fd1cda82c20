"""Depth lifting: 2D X-ray features → 3D feature volume in world orientation.

For every view, each detector pixel gets a distribution over `depth_bins` depth bins along its ray
(softmax of learned logits plus a learned anatomical depth prior in log space). Every voxel of the
cube then reads the view's 2D feature map at the pixel it projects to and the depth probability at
its own depth along that ray, both through the projector's geometry
(`Projector.voxel_to_detector`), so AP lifts along anterior–posterior and lateral along left–right
exactly as the DRR projector integrates. `backproject` is the same operation with no learned parts.
"""
from __future__ import annotations

from typing import Iterable, Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..config import GeometryConfig
from ..geometry.physics import DEFAULT_HU_WINDOW, DEFAULT_MU_WATER, unit_to_mu
from ..geometry.projector import Projector

# Fraction of uniform distribution mixed into a dataset prior: no depth becomes impossible, so the
# learned logits can still move mass where the training-set mean CT had (near) zero attenuation.
PRIOR_UNIFORM_MIX = 0.1


def sample_at_detector(img: Tensor, uv: Tensor) -> Tensor:
    """Read detector images (B, C, P, P) at each voxel's projection uv (D, H, W, 2) → (B, C, D, H, W)."""
    B, C, P, Q = img.shape
    D, H, W, _ = uv.shape
    # Batch and channels ride together as channels so one (shared) grid serves every sample.
    out = F.grid_sample(
        img.reshape(1, B * C, P, Q), uv.reshape(1, D, H * W, 2).to(img.dtype),
        mode="bilinear", padding_mode="zeros", align_corners=False,
    )  # (1, B*C, D, H*W)
    return out.reshape(B, C, D, H, W)


def sample_depth(probs: Tensor, uv: Tensor, depth: Tensor) -> Tensor:
    """Per-ray depth distributions (B, bins, P, P) read at each voxel's (uv, depth) → (B, D, H, W).

    Bins split depth ∈ [-1, 1] (source face → detector face) evenly; align_corners=False puts bin i's
    centre at -1 + (2i + 1) / bins, and border padding holds the end bins out to the cube faces.
    """
    B, K, P, Q = probs.shape
    D, H, W, _ = uv.shape
    grid = torch.cat([uv, depth[..., None]], dim=-1)[None].to(probs.dtype)  # (1, D, H, W, 3): (col, row, depth)
    out = F.grid_sample(
        probs.reshape(1, B, K, P, Q), grid, mode="bilinear", padding_mode="border", align_corners=False
    )  # (1, B, D, H, W)
    return out[0]


def backproject(
    xray: Tensor, prior_probs: Tensor, uv: Tensor, depth: Tensor, combine: Literal["mean", "min"] = "mean"
) -> Tensor:
    """Occupancy (B, 1, D, D, D) from X-rays (B, V, P, P) in [-1, 1] spread along each ray by a depth prior.

    prior_probs: (V, bins, G, G) or (B, V, bins, G, G) probabilities over depth per detector cell (any
    G; read at each voxel's projection). uv, depth: from `Projector.voxel_to_detector`. Each view
    gives intensity × probability × bins (a uniform prior smears the intensity evenly along the ray);
    views are averaged ("mean") or intersected ("min"). No learned parts: a baseline.
    """
    B, V, P, _ = xray.shape
    if uv.shape[0] != V or depth.shape[0] != V:
        raise ValueError(f"geometry has {uv.shape[0]} views but the X-ray has {V}")
    if prior_probs.dim() == 4:
        prior_probs = prior_probs[None].expand(B, *prior_probs.shape)
    if prior_probs.shape[:2] != (B, V):
        raise ValueError(f"prior_probs must be (V, bins, G, G) or (B, V, bins, G, G), got {tuple(prior_probs.shape)}")
    bins = prior_probs.shape[2]
    intensity = ((xray + 1) / 2).clamp(min=0)  # normalised line integral, 0 = no attenuation
    occ = []
    for v in range(V):
        i_v = sample_at_detector(intensity[:, v : v + 1], uv[v])  # (B, 1, D, H, W)
        p_v = sample_depth(prior_probs[:, v].to(xray.dtype), uv[v], depth[v])  # (B, D, H, W)
        occ.append(i_v * p_v[:, None] * bins)
    stacked = torch.stack(occ, dim=0)  # (V, B, 1, D, H, W)
    return stacked.mean(0) if combine == "mean" else stacked.amin(0)


@torch.no_grad()
def depth_prior_from_volumes(
    volumes: Tensor | Iterable[Tensor],
    uv: Tensor,
    depth: Tensor,
    bins: int,
    grid: int,
    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW,
    mu_water: float = DEFAULT_MU_WATER,
) -> Tensor:
    """Mean attenuation profile along each ray of training CTs → depth probabilities (V, bins, grid, grid).

    volumes: (B, 1, D', D', D') in [-1, 1] (or an iterable of such batches), resampled to the geometry's
    D if needed. Per view, voxels are binned by depth bin and by the coarse detector cell they project
    to; the mean μ per (bin, cell), normalised over bins, is the profile (cells no voxel reaches are
    uniform), mixed with PRIOR_UNIFORM_MIX of the uniform distribution.
    """
    V, D, H, W, _ = uv.shape
    batches = [volumes] if isinstance(volumes, Tensor) else volumes
    total, count = None, 0
    for vol in batches:
        if vol.dim() != 5 or vol.shape[1] != 1:
            raise ValueError(f"training volumes must be (B, 1, D, D, D), got {tuple(vol.shape)}")
        vol = vol.float()
        if vol.shape[-3:] != (D, H, W):
            vol = F.interpolate(vol, size=(D, H, W), mode="trilinear", align_corners=False)
        mu = unit_to_mu(vol.to(uv.device), hu_window, mu_water).sum(dim=(0, 1))  # (D, H, W) 1/mm
        total = mu if total is None else total + mu
        count += vol.shape[0]
    if total is None or count == 0:
        raise ValueError("depth prior needs at least one training volume")
    mean_mu = (total / count).reshape(-1)  # (D*H*W,)
    profiles = []
    for v in range(V):
        b = ((depth[v].reshape(-1) + 1) / 2 * bins).floor().long().clamp(0, bins - 1)
        cx = ((uv[v, ..., 0].reshape(-1) + 1) / 2 * grid).floor().long()
        cy = ((uv[v, ..., 1].reshape(-1) + 1) / 2 * grid).floor().long()
        inside = (cx >= 0) & (cx < grid) & (cy >= 0) & (cy < grid)  # voxels projecting onto the detector
        flat = ((b * grid + cy) * grid + cx)[inside]
        sums = torch.zeros(bins * grid * grid, dtype=torch.float64, device=uv.device)
        hits = torch.zeros_like(sums)
        sums.index_add_(0, flat, mean_mu[inside].double())
        hits.index_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))
        prof = (sums / hits.clamp(min=1)).reshape(bins, grid, grid)  # mean μ per (bin, cell)
        norm = prof.sum(0, keepdim=True)
        prof = torch.where(norm > 0, prof / norm.clamp(min=1e-30), torch.full_like(prof, 1.0 / bins))
        profiles.append((1 - PRIOR_UNIFORM_MIX) * prof + PRIOR_UNIFORM_MIX / bins)
    return torch.stack(profiles).float()  # (V, bins, grid, grid)


def present_view_weights(view_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Fusion weight per view (B, V): 0 for an absent view, V / n_present for a present one (1 when all are)."""
    m = view_mask.to(dtype)
    return m * (view_mask.shape[1] / m.sum(dim=1, keepdim=True))


class DepthLifting(nn.Module):
    """Per-view features (B, V, C, P', P') → lifted volume (B, L, D, D, D) and depth distributions."""

    def __init__(
        self,
        views: list[str],
        geometry: GeometryConfig,
        fov_mm: float,  # physical edge of the cube, mm
        resolution: int,
        in_channels: int,
        lift_channels: int,
        depth_bins: int,
        prior_grid: int,
        fusion: Literal["mean", "conv"] = "conv",
        checkpointing: bool = False,
    ):
        super().__init__()
        V = len(views)
        self.views = list(views)
        self.resolution = resolution
        self.spacing_mm = fov_mm / resolution  # mm per voxel
        self.depth_bins = depth_bins
        self.checkpointing = checkpointing
        # No parameters; it only supplies the voxel → detector geometry the DRR projector uses.
        self.projector = Projector(geometry, self.views)
        self.feature_heads = nn.ModuleList(nn.Conv2d(in_channels, lift_channels, 1) for _ in range(V))
        self.depth_heads = nn.ModuleList(nn.Conv2d(in_channels, depth_bins, 3, padding=1) for _ in range(V))
        # Anatomical depth prior, log space, per (view, bin, coarse detector cell); zeros = uniform.
        self.prior = nn.Parameter(torch.zeros(V, depth_bins, prior_grid, prior_grid))
        self.fuse = nn.Conv3d(V * lift_channels, lift_channels, 1) if fusion == "conv" else None

    def voxel_geometry(self, device) -> tuple[Tensor, Tensor]:
        """uv (V, D, D, D, 2) and depth (V, D, D, D) of this stage's voxels (cached by the projector)."""
        return self.projector.voxel_to_detector(self.resolution, self.spacing_mm, device=device)

    def prior_probs(self) -> Tensor:
        """The depth prior as probabilities (V, bins, G, G)."""
        return self.prior.softmax(dim=1)

    def depth_logits(self, feats: Tensor) -> Tensor:
        """(B, V, C, P', P') features → (B, V, bins, P', P') logits including the prior."""
        B, V, C, P, Q = feats.shape
        prior = F.interpolate(self.prior, size=(P, Q), mode="bilinear", align_corners=False)  # (V, bins, P', P')
        logits = [head(feats[:, v]) + prior[v] for v, head in enumerate(self.depth_heads)]
        return torch.stack(logits, dim=1)

    def _lift_view(self, feat: Tensor, probs: Tensor, uv: Tensor, depth: Tensor) -> Tensor:
        # features × probability × bins: a uniform distribution keeps the features' scale.
        f = sample_at_detector(feat, uv)  # (B, L, D, H, W)
        p = sample_depth(probs, uv, depth)  # (B, D, H, W)
        return f * (p[:, None] * self.depth_bins)

    def forward(self, feats: Tensor, view_mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Lifted volume (B, L, D, H, W) and depth probabilities (B, V, bins, P', P').

        view_mask (B, V) bool, True = view present (None = all): an absent view's lifted volume is
        dropped from the fusion and the present ones are scaled by V / n_present, so `mean` fusion
        is the mean over the present views and `conv` fusion sees exactly zero in the absent view's
        channels with the others renormalised (for a conv that averages, the same masked mean; its
        weights, and the checkpoints' state dicts, stay as they are). All present: the scale is
        exactly 1, so the output is bit-identical to view_mask=None.
        """
        B, V, C, P, Q = feats.shape
        if V != len(self.views):
            raise ValueError(f"lifting was built for {len(self.views)} views {self.views}, got {V}")
        probs = self.depth_logits(feats).softmax(dim=2)  # (B, V, bins, P', P')
        uv, depth = self.voxel_geometry(feats.device)
        if self.checkpointing and torch.is_grad_enabled():
            return self._forward_checkpointed(feats, probs, uv, depth, view_mask), probs
        lifted = []
        for v, head in enumerate(self.feature_heads):
            f = head(feats[:, v])  # (B, L, P', P')
            lifted.append(self._lift_view(f, probs[:, v], uv[v], depth[v]))
        if view_mask is not None:
            w = present_view_weights(view_mask, lifted[0].dtype)  # (B, V)
            lifted = [x * w[:, v, None, None, None, None] for v, x in enumerate(lifted)]
        if self.fuse is not None:
            out = self.fuse(torch.cat(lifted, dim=1))  # (B, V*L, D, H, W) → (B, L, D, H, W)
        else:
            out = torch.stack(lifted, dim=0).mean(0)
        return out, probs

    def _view_share(self, feat: Tensor, probs: Tensor, uv: Tensor, depth: Tensor, weight: Tensor) -> Tensor:
        # One view's part of the fused volume: the 1×1×1 fusion is linear, so Σ_v W_v·lifted_v equals
        # the fusion of the concatenation, without the V·L-channel volume ever existing.
        return F.conv3d(self._lift_view(feat, probs, uv, depth), weight)

    def _forward_checkpointed(self, feats: Tensor, probs: Tensor, uv: Tensor, depth: Tensor,
                              view_mask: Optional[Tensor]) -> Tensor:
        """forward() with activation checkpointing: each view's D³ sampling and its share of the fusion are
        recomputed in backward; kept between the passes is the fused (B, L, D, H, W) volume only (at 256³
        the per-view volumes and their concatenation would be 4 GB for two views of 16 channels)."""
        B, V = feats.shape[:2]
        L = self.feature_heads[0].out_channels
        w = None if view_mask is None else present_view_weights(view_mask, feats.dtype)  # (B, V)
        out = None
        for v, head in enumerate(self.feature_heads):
            f = head(feats[:, v])  # (B, L, P', P')
            if w is not None:  # the fusion is linear: scaling the 2D features scales the view's share
                f = f * w[:, v, None, None, None]
            if self.fuse is not None:
                weight = self.fuse.weight[:, v * L:(v + 1) * L]  # (L, L, 1, 1, 1)
            else:  # mean fusion = a fixed 1/V identity
                weight = (torch.eye(L, dtype=f.dtype, device=f.device) / V)[..., None, None, None]
            share = checkpoint(self._view_share, f, probs[:, v], uv[v], depth[v], weight, use_reentrant=False)
            out = share if out is None else out + share
        if self.fuse is not None:
            out = out + self.fuse.bias[None, :, None, None, None]
        return out

    @torch.no_grad()
    def init_prior_from_dataset(
        self,
        volumes: Tensor | Iterable[Tensor],
        hu_window: tuple[float, float] = DEFAULT_HU_WINDOW,
        mu_water: float = DEFAULT_MU_WATER,
    ) -> Tensor:
        """Set the prior to the log of the training set's mean attenuation profile per ray; returns the probs."""
        uv, depth = self.voxel_geometry(self.prior.device)
        V, K, G, _ = self.prior.shape
        probs = depth_prior_from_volumes(volumes, uv, depth, K, G, hu_window, mu_water)
        self.prior.copy_(probs.log().to(self.prior))
        return probs

"""One cascade stage: X-ray encoder → (depth lifting) → hybrid 3D ViT denoiser, predicting v."""
from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..config import GeometryConfig, StageConfig
from ..geometry.physics import DEFAULT_HU_WINDOW, DEFAULT_MU_WATER
from .encoder2d import XrayEncoder
from .lifting import DepthLifting
from .denoiser import HybridViT3D


class CascadeStage(nn.Module):
    """Denoiser of one resolution; stage_index 0 is the first (coarsest) stage, later ones see `prev`."""

    # Parameters added after checkpoints were first written (the learned "missing view" embedding):
    # a checkpoint without them loads with their initial zeros (runtime/checkpoint.py), which
    # view_mask=None never reads, so an old checkpoint gives exactly its old outputs.
    OPTIONAL_KEYS = ("encoder.missing",)

    def __init__(
        self,
        stage_cfg: StageConfig,
        stage_index: int,
        views: list[str],
        xray_size: int,  # detector pixels per edge
        geometry: GeometryConfig,
        fov_mm: float,  # physical edge of the cube, mm
    ):
        super().__init__()
        if not 1 <= len(views) <= 2:
            raise ValueError(f"a stage takes one or two views, got {views}")
        self.cfg = stage_cfg
        self.stage_index = stage_index
        self.views = list(views)
        self.xray_size = xray_size
        self.resolution = stage_cfg.resolution
        self.has_prev = stage_index > 0
        s = stage_cfg
        self.encoder = XrayEncoder(len(views), s.encoder_channels, s.encoder_downsample)
        self.lifting: Optional[DepthLifting] = None
        if s.use_depth_lifting:
            self.lifting = DepthLifting(
                self.views, geometry, fov_mm, self.resolution, s.encoder_channels, s.lift_channels,
                s.depth_bins, s.prior_grid, s.lift_fusion, checkpointing=s.grad_checkpointing,
            )
        # Input channels: x_t first (the refinement head's skip relies on it), lifted features, prev.
        in_channels = 1 + (s.lift_channels if s.use_depth_lifting else 0) + (1 if self.has_prev else 0)
        self.denoiser = HybridViT3D(
            in_channels=in_channels,
            resolution=self.resolution,
            patch_size=s.patch_size,
            hidden=s.voxel_dim,
            depth=s.vit_depth,
            num_heads=s.num_heads,
            mlp_ratio=s.mlp_ratio,
            n_views=len(views),
            xray_channels=s.encoder_channels,
            refine_channels=s.refine_channels,
            unpatch_channels=s.unpatch_channels,
            use_cond_noise=self.has_prev,
            grad_checkpointing=s.grad_checkpointing,
        )

    def extra_repr(self) -> str:
        return f"stage={self.stage_index}, name={self.cfg.name!r}, resolution={self.resolution}, views={self.views}"

    def missing_view_parameters(self) -> list[nn.Parameter]:
        """The "missing view" embeddings: trained only when views are dropped (training.view_dropout)."""
        return [self.encoder.missing]

    def _check_inputs(self, x_t: Tensor, t: Tensor, xray: Tensor, prev: Optional[Tensor], cond_noise,
                      view_mask: Optional[Tensor] = None) -> Tensor:
        D, V, P = self.resolution, len(self.views), self.xray_size
        name = f"stage {self.stage_index} ({self.cfg.name})"
        if x_t.dim() != 5 or tuple(x_t.shape[1:]) != (1, D, D, D):
            raise ValueError(f"{name}: x_t must be (B, 1, {D}, {D}, {D}), got {tuple(x_t.shape)}")
        B = x_t.shape[0]
        if t.dim() == 0:
            t = t.expand(B)
        if tuple(t.shape) != (B,):
            raise ValueError(f"{name}: t must be (B,) = ({B},), got {tuple(t.shape)}")
        if xray.dim() != 4:
            raise ValueError(f"{name}: xray must be (B, V, P, P), got {tuple(xray.shape)}")
        if xray.shape[1] != V:
            raise ValueError(f"{name}: expected {V} X-ray view(s) {self.views}, got {xray.shape[1]}")
        if tuple(xray.shape[2:]) != (P, P) or xray.shape[0] != B:
            raise ValueError(f"{name}: xray must be ({B}, {V}, {P}, {P}), got {tuple(xray.shape)}")
        if self.has_prev:
            if prev is None:
                raise ValueError(f"{name}: needs the previous stage's output `prev` (B, 1, D', D', D')")
            if prev.dim() != 5 or prev.shape[0] != B or prev.shape[1] != 1:
                raise ValueError(f"{name}: prev must be ({B}, 1, D', D', D'), got {tuple(prev.shape)}")
            if cond_noise is not None and tuple(cond_noise.shape) != (B,):
                raise ValueError(f"{name}: cond_noise must be (B,) = ({B},), got {tuple(cond_noise.shape)}")
        elif prev is not None:
            raise ValueError(f"{name}: the first stage takes no previous-stage volume, got prev")
        if view_mask is not None:
            if view_mask.dtype != torch.bool or tuple(view_mask.shape) != (B, V):
                raise ValueError(f"{name}: view_mask must be a bool tensor ({B}, {V}) (True = view present), "
                                 f"got {view_mask.dtype} {tuple(view_mask.shape)}")
            if not bool(view_mask.any(dim=1).all()):
                raise ValueError(f"{name}: view_mask leaves a sample without any view; "
                                 f"give at least one of {self.views}")
        return t

    def encode_condition(self, xray: Tensor, prev: Optional[Tensor] = None, view_mask: Optional[Tensor] = None,
                         dtype: torch.dtype = torch.float32) -> dict[str, Optional[Tensor]]:
        """What the X-rays and the previous stage give the denoiser, independent of x_t and t.

        {"lifted": (B, L, D, D, D) or None, "depth_probs": (B, V, bins, P', P') or None, "prev_up":
        (B, 1, D, D, D) or None, "pooled": (B, V, C)}. A sampler calls the stage tens of times with the
        same X-rays: computed once and passed as `forward(..., encoded=)`, the outputs are unchanged.
        """
        D = self.resolution
        feats = self.encoder(xray.to(dtype), view_mask)  # (B, V, C, P', P')
        out: dict[str, Optional[Tensor]] = {"lifted": None, "depth_probs": None, "prev_up": None}
        if self.lifting is not None:
            out["lifted"], out["depth_probs"] = self.lifting(feats, view_mask)  # (B, L, D³), (B, V, bins, P', P')
        if self.has_prev:
            prev_up = prev.to(dtype)
            if tuple(prev.shape[2:]) != (D, D, D):
                prev_up = F.interpolate(prev_up, size=(D, D, D), mode="trilinear", align_corners=False)
            out["prev_up"] = prev_up
        pooled = feats.mean(dim=(-2, -1))  # (B, V, C): global X-ray summary for the conditioning vector
        if view_mask is not None:  # an absent view's summary is its missing-view token itself
            pooled = torch.where(view_mask[..., None], pooled, self.encoder.missing[None].to(pooled.dtype))
        out["pooled"] = pooled
        return out

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        xray: Tensor,
        prev: Optional[Tensor] = None,
        cond_noise: Optional[Tensor] = None,
        return_aux: bool = False,
        view_mask: Optional[Tensor] = None,
        encoded: Optional[dict[str, Optional[Tensor]]] = None,
    ):
        """v prediction (B, 1, D, D, D); with return_aux also {"depth_probs", "lifted", "prev_up"}.

        view_mask (B, V) bool, True = view present, None = all present (bit-identical to an all-True
        mask). An absent view's X-ray is never read: its encoder features and its pooled summary are
        the learned missing-view embedding, and its lifted volume is left out of the fusion.
        `encoded`: `encode_condition` of these X-rays / prev / view_mask, computed earlier (sampling).
        """
        t = self._check_inputs(x_t, t, xray, prev, cond_noise, view_mask)
        if encoded is None:
            encoded = self.encode_condition(xray, prev, view_mask, x_t.dtype)
        parts = [x_t] + [encoded[k] for k in ("lifted", "prev_up") if encoded[k] is not None]
        x_in = torch.cat(parts, dim=1)  # (B, C_in, D, H, W): x_t first, the refinement head's skip relies on it
        v = self.denoiser(x_in, t, encoded["pooled"], cond_noise)
        if return_aux:
            return v, {k: encoded[k] for k in ("depth_probs", "lifted", "prev_up")}
        return v

    def init_prior_from_dataset(
        self,
        volumes: Tensor | Iterable[Tensor],
        hu_window: tuple[float, float] = DEFAULT_HU_WINDOW,
        mu_water: float = DEFAULT_MU_WATER,
    ) -> Optional[Tensor]:
        """Initialise the depth prior from training CTs (B, 1, D, D, D) in [-1, 1]; None without lifting."""
        if self.lifting is None:
            return None
        return self.lifting.init_prior_from_dataset(volumes, hu_window, mu_water)

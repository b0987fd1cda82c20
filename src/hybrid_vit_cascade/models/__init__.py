"""Models: X-ray encoder, depth lifting, hybrid 3D ViT denoiser, cascade stages."""
from .cascade import Cascade
from .lifting import DepthLifting, backproject, depth_prior_from_volumes
from .stage import CascadeStage

__all__ = ["Cascade", "CascadeStage", "DepthLifting", "backproject", "depth_prior_from_volumes"]

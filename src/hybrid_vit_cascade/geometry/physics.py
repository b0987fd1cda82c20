"""Intensity physics: HU ↔ model range, HU → attenuation, line integral ↔ X-ray image range.

All functions are pure torch and differentiable, so the physics loss can apply them to model
outputs. Conventions (DESIGN.md "Physics"):

- model range: ``x = 2 * (clip(HU, lo, hi) - lo) / (hi - lo) - 1`` for ``window = (lo, hi)``;
- linear attenuation: ``mu = mu_water * (1 + HU / 1000)`` in 1/mm, clipped at 0 (air);
- X-ray image range: ``xray = 2 * li / li_max - 1`` with a per-dataset constant ``li_max``;
- Beer–Lambert: transmitted fraction ``I / I0 = exp(-li)``.
"""
from __future__ import annotations

from torch import Tensor

from ..config import DEFAULT_HU_WINDOW, DEFAULT_MU_WATER  # one home, shared with DataConfig's defaults


def _check_window(window: tuple[float, float]) -> tuple[float, float]:
    lo, hi = float(window[0]), float(window[1])
    if not lo < hi:
        raise ValueError(f"HU window must be (low, high) with low < high, got {window}")
    return lo, hi


def hu_to_unit(hu: Tensor, window: tuple[float, float] = DEFAULT_HU_WINDOW) -> Tensor:
    """Map HU to the model range [-1, 1], clipping to the window."""
    lo, hi = _check_window(window)
    return 2.0 * (hu.clamp(lo, hi) - lo) / (hi - lo) - 1.0


def unit_to_hu(x: Tensor, window: tuple[float, float] = DEFAULT_HU_WINDOW) -> Tensor:
    """Inverse of `hu_to_unit` (exact inside the window); values outside [-1, 1] extrapolate linearly."""
    lo, hi = _check_window(window)
    return (x + 1.0) * 0.5 * (hi - lo) + lo


def hu_to_mu(hu: Tensor, mu_water: float = DEFAULT_MU_WATER) -> Tensor:
    """Linear attenuation coefficient (1/mm) from HU, clipped at 0 (nothing attenuates less than vacuum)."""
    if mu_water <= 0:
        raise ValueError(f"mu_water must be positive (1/mm), got {mu_water}")
    # clamp keeps a (sub-)gradient of 1 inside the valid range, 0 below -1000 HU.
    return (mu_water * (1.0 + hu / 1000.0)).clamp(min=0.0)


def mu_to_hu(mu: Tensor, mu_water: float = DEFAULT_MU_WATER) -> Tensor:
    """Inverse of `hu_to_mu` for mu ≥ 0 (HU below -1000 map to -1000)."""
    if mu_water <= 0:
        raise ValueError(f"mu_water must be positive (1/mm), got {mu_water}")
    return (mu / mu_water - 1.0) * 1000.0


def unit_to_mu(
    x: Tensor, window: tuple[float, float] = DEFAULT_HU_WINDOW, mu_water: float = DEFAULT_MU_WATER
) -> Tensor:
    """Model-range volume → attenuation (1/mm); what the physics loss feeds the projector."""
    return hu_to_mu(unit_to_hu(x, window), mu_water)


def normalize_xray(li: Tensor, li_max: float) -> Tensor:
    """Line integrals → X-ray image range ``2 * li / li_max - 1`` (li_max is a dataset constant)."""
    if not li_max > 0:
        raise ValueError(f"li_max must be positive, got {li_max}")
    return 2.0 * li / li_max - 1.0


def denormalize_xray(x: Tensor, li_max: float) -> Tensor:
    """Inverse of `normalize_xray`: ``li = (x + 1) / 2 * li_max``."""
    if not li_max > 0:
        raise ValueError(f"li_max must be positive, got {li_max}")
    return (x + 1.0) * 0.5 * li_max


"""How a cascade is sampled — the ONE place that resolves (steps, sampler, K samples, guidance, η, spread).

A value given by the caller (a CLI flag or a keyword argument) wins; an unset one (None) comes from
the checkpoint's `diffusion` config (sample_steps, sampler, samples, guidance_scale, eta). A
regression checkpoint (`training.objective == "regression"`) has nothing to sample or guide, so it
defaults to 1 sample and guidance 0, and refuses guidance > 0. η is DDIM's noise level: the
config's η is dropped for DPM-Solver++ (deterministic), an explicit η > 0 with it is an error.
Training validation and the conditioning cache resolve here too (with their own step counts), so
every sampled volume of the project is drawn with the settings this function returns.

X-rays that are not line integrals (`display_input`: a clinical film or a display image, mapped into
the model's range by histogram matching or percentiles) default to FILM_GUIDANCE_SCALE instead of
the config's guidance: guidance makes the reconstruction's DRRs match the input, and for such an
input that means matching an estimated tone curve, scatter and all. Measured on the film-augmented
demo checkpoints (5 test phantoms, simulated clinical films, K = 16): guidance 1 → 0 lifts the
cascade's PSNR-3D from its films 19.3 → 21.5 dB. An explicit guidance scale still wins.

`guidance_spread` s (the config's diffusion.guidance_spread, 0 unless set) gives chain i of K its own
guidance scale, guidance_scale·(1 − s + 2s·i/(K − 1)) (`chain_guidance`): their mean is the scale.
Guidance fits every chain to the same X-rays, and the chains' spread then misses how far that fit
can be trusted; scales spread over chains keep part of it. Measured on the demo's checkpoints
(6e7571d, K = 16, test / validation phantoms): s = 1 (scales 0–2) lifts the Spearman of std vs
|error| 0.541 → 0.570 / 0.603 → 0.629, the raw ±2σ coverage 85.8 → 89.5 % / 84.2 → 88.9 %, and lowers
the NLL 6.16 → 5.94 and CRPS 57.7 → 56.8 HU, at a PSNR-3D cost of 0.09 / 0.12 dB; s = 0.75: 0.559 /
0.622, 0.03 / 0.04 dB. The shipped configs keep 0: the reconstruction comes first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from hybrid_vit_cascade.config import Config
from hybrid_vit_cascade.diffusion.samplers import SAMPLERS, timesteps

FILM_GUIDANCE_SCALE = 0.0  # default DRR guidance for inputs that are not line integrals (see above)
# such inputs are re-levelled to a first reconstruction's DRRs before the final one (inference/film_relevel.py)
FILM_RELEVEL = True


@dataclass(frozen=True)
class SamplingSettings:
    """Resolved sampling settings of one run (see resolve_sampling)."""

    steps: int  # sampler steps (model calls per chain and stage)
    sampler: str  # "ddim" | "dpmpp"
    samples: int  # K chains per case; K > 1: mean = reconstruction, std = uncertainty
    guidance_scale: float  # DRR-consistency guidance, 0 = off
    eta: float  # DDIM η (0 = deterministic); always 0 for "dpmpp"
    guidance_spread: float = 0.0  # fraction 0–1: the chains' guidance scales spread around guidance_scale

    def chain_guidance(self, i: int) -> float:
        """The guidance scale of chain i of the K (the scale itself with no spread or one chain)."""
        if self.guidance_spread == 0 or self.samples == 1:
            return self.guidance_scale
        s = self.guidance_spread
        return self.guidance_scale * (1 - s + 2 * s * i / (self.samples - 1))

    def grid(self, schedule: str) -> Tensor:
        """The (steps + 1,) float64 time grid 1 → 0 the samplers walk (uniform in t)."""
        return timesteps(self.steps, schedule=schedule)

    def describe(self) -> str:
        """'ddim, 25 steps' (η added when > 0), for logs and reports."""
        return f"{self.sampler}, {self.steps} steps" + (f", η={self.eta:g}" if self.eta > 0 else "")


def _checked_spread(spread: float) -> float:
    """The guidance spread as a float, refused outside [0, 1] (a fraction of the guidance scale)."""
    spread = float(spread)
    if not 0 <= spread <= 1:
        raise ValueError(f"guidance spread must lie in [0, 1] (a fraction of the guidance scale), got {spread}")
    return spread


def with_guidance_spread(cfg: Config, spread: Optional[float]) -> Config:
    """`cfg` with diffusion.guidance_spread set to `spread` (a --guidance-spread flag); None: unchanged."""
    if spread is None:
        return cfg
    return cfg.model_copy(update={"diffusion": cfg.diffusion.model_copy(update={"guidance_spread": _checked_spread(spread)})})


def resolve_sampling(
    cfg: Config,
    steps: Optional[int] = None,
    sampler: Optional[str] = None,
    samples: Optional[int] = None,
    guidance_scale: Optional[float] = None,
    eta: Optional[float] = None,
    display_input: bool = False,
    guidance_spread: Optional[float] = None,
) -> SamplingSettings:
    """The given values, else the config's (a regression checkpoint: 1 sample, no guidance; X-rays that
    are not line integrals, `display_input`: FILM_GUIDANCE_SCALE); validated."""
    d = cfg.diffusion
    diffusion = cfg.training.objective == "diffusion"
    steps = d.sample_steps if steps is None else int(steps)
    sampler = d.sampler if sampler is None else sampler
    samples = (d.samples if diffusion else 1) if samples is None else int(samples)
    if guidance_scale is None:
        guidance_scale = 0.0 if not diffusion else FILM_GUIDANCE_SCALE if display_input else d.guidance_scale
    guidance_scale = float(guidance_scale)
    if steps < 1:
        raise ValueError(f"sampler steps must be ≥ 1, got {steps}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {tuple(SAMPLERS)}")
    if samples < 1:
        raise ValueError(f"samples must be ≥ 1, got {samples}")
    if guidance_scale < 0:
        raise ValueError(f"guidance scale must be ≥ 0, got {guidance_scale}")
    if guidance_scale > 0 and not diffusion:
        raise ValueError("DRR guidance needs a diffusion checkpoint; this one was trained with the regression objective")
    guidance_spread = _checked_spread(d.guidance_spread if guidance_spread is None else guidance_spread)
    if eta is not None and eta < 0:
        raise ValueError(f"DDIM eta must be ≥ 0, got {eta}")
    if sampler == "ddim":
        eta = d.eta if eta is None else float(eta)
    elif eta:
        raise ValueError(f"eta={eta} is only meaningful for the DDIM sampler, not {sampler!r}")
    else:
        eta = 0.0  # the config's η belongs to DDIM; DPM-Solver++ is deterministic
    return SamplingSettings(steps, sampler, samples, guidance_scale, eta, guidance_spread)

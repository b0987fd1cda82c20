"""What a stage is trained to do — the ONE place that branches on `training.objective`.

- "diffusion" (default): v-prediction. x_t = α_t·x0 + σ_t·ε with t ~ U[0, 1]; the network predicts
  v = α_t·ε − σ_t·x0; loss = MSE(v̂, v) (min-SNR-γ weighted if diffusion.min_snr_gamma, x0 weight
  floored at diffusion.min_snr_floor);
  x̂0 = α_t·x_t − σ_t·v̂ feeds the physics loss. Sampling runs DDIM / DPM-Solver++ from noise
  with the settings of runtime/sampling.py `resolve_sampling`.
- "regression" (the direct-MSE baseline, same backbone): the network gets x_t = 0 and a fixed
  t = 1 (the "no information in x_t" end of the schedule), and its output IS x̂0; loss = MSE(x̂0, x0).
  "Sampling" is that single forward pass. No noise, no sampler, so it measures what the diffusion
  objective adds over plain regression with identical architecture and data.

`model_fn(x_t, t) -> output` is the stage with its X-ray / previous-stage conditioning bound.
All randomness comes from per-sample generators (`gens`, one per batch item), so a sample's noise
depends only on (seed, stage, epoch, case) — not on batch size, accumulation, rank or resume point.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from hybrid_vit_cascade.config import Config
from hybrid_vit_cascade.diffusion.losses import v_loss
from hybrid_vit_cascade.diffusion.samplers import ModelFn, sample
from hybrid_vit_cascade.diffusion.schedule import q_sample, v_target, x0_from_v
from hybrid_vit_cascade.runtime.sampling import SamplingSettings
from hybrid_vit_cascade.runtime.seeding import per_sample_rand, per_sample_randn

REGRESSION_T = 1.0  # fixed time fed to the network in regression mode


class StepOutput(NamedTuple):
    loss: Tensor  # scalar objective loss (before the physics term)
    x0_pred: Tensor  # (B, 1, D, H, W) clean estimate, for the physics loss and images


class Objective:
    """Training loss and sampling for one objective ("diffusion" or "regression")."""

    def __init__(self, cfg: Config):
        self.kind = cfg.training.objective
        self.schedule = cfg.diffusion.schedule
        self.min_snr_gamma = cfg.diffusion.min_snr_gamma
        self.min_snr_floor = cfg.diffusion.min_snr_floor

    @property
    def is_diffusion(self) -> bool:
        return self.kind == "diffusion"

    def loss(self, model_fn: ModelFn, x0: Tensor, gens: Sequence[torch.Generator]) -> StepOutput:
        """Objective loss of a batch of clean volumes x0 (B, 1, D, H, W) in [-1, 1]."""
        B = x0.shape[0]
        if not self.is_diffusion:
            x_in = torch.zeros_like(x0)
            t = torch.full((B,), REGRESSION_T, device=x0.device)
            x0_pred = model_fn(x_in, t)
            per_sample = (x0_pred.float() - x0.float()).pow(2).flatten(1).mean(1)  # (B,)
            return StepOutput(per_sample.mean(), x0_pred)
        # The draws are ordered (t, ε) per generator; keep that order (resume/accumulation exactness).
        t = per_sample_rand(gens, x0.device)  # (B,)
        eps = per_sample_randn(gens, x0.shape[1:], x0.device, x0.dtype)  # (B, 1, D, H, W)
        x_t = q_sample(x0, eps, t, self.schedule)
        v_pred = model_fn(x_t, t)
        loss = v_loss(v_pred, v_target(x0, eps, t, self.schedule), t, self.min_snr_gamma, "mean", self.schedule,
                      self.min_snr_floor)
        x0_pred = x0_from_v(x_t, v_pred.float(), t, self.schedule)
        return StepOutput(loss, x0_pred)

    @torch.no_grad()
    def generate(
        self,
        model_fn: ModelFn,
        shape: Sequence[int],
        device: torch.device,
        gens: Sequence[torch.Generator],
        settings: SamplingSettings,
    ) -> Tensor:
        """A clean volume (B, 1, D, H, W): `settings.sampler` from noise (diffusion) or one forward (regression).

        x_T of item b comes from gens[b], so a case's sample does not depend on its batch-mates
        (with η = 0; DDIM's η > 0 noise is drawn from gens[0]).
        """
        B = shape[0]
        if not self.is_diffusion:
            t = torch.full((B,), REGRESSION_T, device=device)
            return model_fn(torch.zeros(tuple(shape), device=device), t).float().clamp(-1, 1)
        x_T = per_sample_randn(gens, shape[1:], device)
        x = sample(model_fn, x_T, settings.grid(self.schedule), settings.sampler, settings.eta, self.schedule, gens[0])
        return x.clamp(-1, 1)

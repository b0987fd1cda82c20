"""Run a trained cascade stage by stage on X-rays: sampling, uncertainty, DRR consistency, HU output.

Stage k is conditioned on stage k−1's *sampled* output, upsampled and noised to
`StageConfig.cond_noise_level` exactly as the trainer built its conditioning (runtime/conditioning.py),
so inference sees what training saw. With K samples, K independent chains run through the whole
cascade (sample i of stage k is conditioned on sample i of stage k−1), so the spread of the final
stage reflects every stage's uncertainty. Only the running stage sits on the device; the others
wait on the CPU, which is what lets a 256³ stage run on a 12 GB GPU after the smaller ones.

Any non-empty subset of the checkpoint's views can be given (`views`): the absent views' images are
zeros and masked out of the model (view_mask), of DRR guidance and of the DRR-consistency scores.
A checkpoint trained with training.view_dropout learned that; one trained biplanar only was not,
and says so once.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from hybrid_vit_cascade.data.render import check_render_settings, render_settings
from hybrid_vit_cascade.diffusion.guidance import drr_consistency_wrap
from hybrid_vit_cascade.diffusion.losses import predicted_xray
from hybrid_vit_cascade.geometry.physics import unit_to_hu
from hybrid_vit_cascade.geometry.projector import Projector
from hybrid_vit_cascade.metrics import drr_psnr
from hybrid_vit_cascade.runtime.checkpoint import load_cascade, weights_hash
from hybrid_vit_cascade.runtime.conditioning import make_condition, stage_model_fn
from hybrid_vit_cascade.runtime.objective import Objective
from hybrid_vit_cascade.runtime.sampling import resolve_sampling
from hybrid_vit_cascade.runtime.seeding import mix_seed, sample_generators


@dataclass
class StageResult:
    """Samples of one stage for a batch of cases: (B, K, 1, r, r, r) in the model range [-1, 1], CPU."""

    index: int  # 1-based stage index
    name: str
    res: int
    samples: Tensor

    @property
    def mean(self) -> Tensor:
        """(B, 1, r, r, r) mean over the K samples (model range)."""
        return self.samples.mean(dim=1)

    @property
    def std(self) -> Optional[Tensor]:
        """(B, 1, r, r, r) voxel-wise sample standard deviation (model range), None for K = 1."""
        if self.samples.shape[1] < 2:
            return None
        return self.samples.std(dim=1, correction=1)


def pick_device(name: Optional[str] = None) -> torch.device:
    """`name` if given, else CUDA when available, else CPU."""
    if name:
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available (use --device cpu)")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r} requested but MPS is not available (use --device cpu)")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Reconstructor:
    """A loaded checkpoint plus everything needed to turn X-rays into HU volumes."""

    def __init__(self, checkpoint_dir: str | os.PathLike, which: str = "best", ema: bool = True,
                 device: Optional[str] = None):
        self.checkpoint_dir = str(checkpoint_dir)
        self.which, self.ema = which, ema  # the snapshot and weights loaded (a fitted std scale records them)
        self.cfg, self.cascade, self.data_info = load_cascade(checkpoint_dir, which=which, ema=ema)
        self.cascade.to("cpu").eval()
        self.device = pick_device(device)
        d = self.cfg.data
        self.li_max = float(self.data_info["xray_scale"]["li_max"])
        self.render_size = int(self.data_info["render_size"])  # the training DRRs' cube edge, voxels
        self.window = tuple(float(v) for v in d.hu_window)
        self.mu_water = float(d.mu_water)
        self.fov_mm = float(d.fov_mm)
        self.views = list(d.views)
        self.det_pixels = d.geometry.det_pixels
        self.trained_stages: list[int] = list(getattr(self.cascade, "trained_stages", []))
        self.objective = Objective(self.cfg)
        self.projector = Projector(d.geometry, self.views)
        self.warn: Callable[[str], None] = lambda msg: print(f"warning: {msg}", file=sys.stderr)
        self._warned_subset = False

    # ------------------------------------------------------------------------------ helpers
    @property
    def is_diffusion(self) -> bool:
        return self.objective.is_diffusion

    def weights_id(self) -> str:
        """Hash of the trained stages' loaded weights: what a fitted std scale belongs to."""
        sd = {f"{k}.{n}": t for k in self.trained_stages for n, t in self.cascade.stages[k - 1].state_dict().items()}
        return weights_hash(sd)

    def spacing_mm(self, res: int) -> float:
        """Voxel edge (mm) of a stage cube with `res` voxels across the field of view."""
        return self.fov_mm / res

    def to_hu(self, x: Tensor) -> np.ndarray:
        """Model range → HU (float32 numpy), same shape."""
        return unit_to_hu(x.float(), self.window).numpy().astype(np.float32)

    def std_to_hu(self, s: Tensor) -> np.ndarray:
        """A standard deviation in the model range → HU (the map is linear with slope (hi−lo)/2)."""
        return (s.float() * (self.window[1] - self.window[0]) / 2).numpy().astype(np.float32)

    def project(self, x: Tensor) -> Tensor:
        """Normalised DRRs (B, V, P, P) of model-range volumes (B, 1, r, r, r), as the training data."""
        x = x.float()
        return predicted_xray(x, self.projector, self.spacing_mm(x.shape[-1]), self.window, self.mu_water,
                              self.li_max)

    def drr_scores(self, x: Tensor, xray: Tensor, views: Optional[Sequence[str]] = None) -> np.ndarray:
        """DRR-consistency PSNR (dB), (B, V'): reprojection of each volume vs its input X-rays (B, V, P, P).

        `views` (a subset, see `check_views`): only those views are scored, in the checkpoint's order.
        """
        idx = self.view_indices(views)
        with torch.no_grad():
            drr = self.project(x)[:, idx]
        xray = xray[:, idx]
        return np.array([drr_psnr(drr[b], xray[b]) for b in range(x.shape[0])])

    def check_views(self, views: Optional[Sequence[str]]) -> list[str]:
        """The present views in the checkpoint's order: a non-empty subset of `self.views` (None = all)."""
        if views is None:
            return list(self.views)
        views = list(views)
        bad = [v for v in views if v not in self.views]
        if not views or bad or len(set(views)) != len(views):
            raise ValueError(f"views {views} are not a non-empty subset of the checkpoint's views {self.views}")
        return [v for v in self.views if v in views]

    def view_indices(self, views: Optional[Sequence[str]]) -> list[int]:
        """Indices into the checkpoint's views of a subset (None = all)."""
        present = self.check_views(views)
        return [i for i, v in enumerate(self.views) if v in present]

    @property
    def trained_single_view(self) -> bool:
        """Was the checkpoint trained to reconstruct from a subset of its views (training.view_dropout > 0)?"""
        return self.cfg.training.view_dropout > 0 or len(self.views) == 1

    def stages_to_run(self, stop_at_stage: Optional[int]) -> int:
        """How many stages to run: up to `stop_at_stage`, else the last trained one."""
        n_cfg = len(self.cfg.stages)
        last = stop_at_stage if stop_at_stage is not None else max(self.trained_stages, default=0)
        if not 1 <= last <= n_cfg:
            raise ValueError(f"--stop-at-stage must be in 1..{n_cfg} for this {n_cfg}-stage cascade, got {last}")
        missing = [k for k in range(1, last + 1) if k not in self.trained_stages]
        if missing:
            # Advice only when it works: stopping before the first missing stage needs stage 1.
            advice = (f"use --stop-at-stage {min(missing) - 1} to run the stages before it" if min(missing) > 1
                      else "every stage needs stage 1: train it first")
            raise ValueError(f"stage(s) {missing} of {self.checkpoint_dir} have no trained weights "
                             f"(trained: {self.trained_stages}); {advice}")
        return last

    # ------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def reconstruct(
        self,
        xray: Tensor,
        steps: Optional[int] = None,
        sampler: Optional[str] = None,
        samples: Optional[int] = None,
        stop_at_stage: Optional[int] = None,
        seed: int = 0,
        guidance_scale: Optional[float] = None,
        case_keys: Optional[Sequence[str]] = None,
        batch_size: int = 4,
        log: Optional[Callable[[str], None]] = None,
        views: Optional[Sequence[str]] = None,
        guidance_spread: Optional[float] = None,
    ) -> list[StageResult]:
        """Run stages 1..N on X-rays (V, P, P) or (B, V, P, P) in the model range; one StageResult per stage.

        `views`: the views present (a non-empty subset of the checkpoint's, None = all). The X-ray
        tensor keeps the checkpoint's V slots; absent views' slots are set to zeros and masked out.

        `guidance_scale` > 0 adds DRR-consistency guidance (normalised step: 1 = fit the X-rays along
        the gradient of the clean estimate, see diffusion/guidance.py); `guidance_spread` spreads it over
        the chains (SamplingSettings.chain_guidance). `steps` / `sampler` / `samples` / `guidance_scale` /
        `guidance_spread` left None come from the config (runtime/sampling.py `resolve_sampling`). Noise
        of chain (case b, sample i) at stage k comes from its own generator seeded by (seed, k, case
        key, i), so a result does not depend on the batch size.
        """
        if xray.dim() == 3:
            xray = xray[None]
        B, V, P, _ = xray.shape
        if V != len(self.views) or P != self.det_pixels:
            raise ValueError(f"X-rays must be (B, {len(self.views)}, {self.det_pixels}, {self.det_pixels}) "
                             f"for views {self.views}, got {tuple(xray.shape)}")
        present = self.check_views(views)
        mask_row = torch.tensor([v in present for v in self.views])  # (V,) True = view present
        if len(present) < len(self.views):
            xray = xray * mask_row[None, :, None, None].to(xray.dtype)  # absent views: zeros
            if not self.trained_single_view and not self._warned_subset:
                self._warned_subset = True
                self.warn(f"checkpoint {self.checkpoint_dir} was trained biplanar ({'+'.join(self.views)}, "
                          f"training.view_dropout = 0): its reconstruction from {'+'.join(present)} alone is "
                          "untrained — expect poor quality; train with training.view_dropout > 0 for single views")
        else:
            mask_row = None  # every view: the model runs exactly as without view masks
        fit_views = self.view_indices(present) if mask_row is not None else None  # guidance fits these only
        if not torch.isfinite(xray).all():
            raise ValueError("the X-rays contain NaN or Inf")
        settings = resolve_sampling(self.cfg, steps, sampler, samples, guidance_scale, guidance_spread=guidance_spread)
        samples, guidance_scale = settings.samples, settings.guidance_scale
        n_stages = self.stages_to_run(stop_at_stage)
        keys = [str(k) for k in (case_keys or range(B))]
        chains = [(b, i) for b in range(B) for i in range(samples)]  # (case, sample) per chain
        log = log or (lambda s: None)
        dev = self.device
        results: list[StageResult] = []
        prev: Optional[Tensor] = None  # (B*K, 1, r', r', r') previous stage's samples, CPU
        for k in range(1, n_stages + 1):
            scfg = self.cfg.stages[k - 1]
            res = scfg.resolution
            stage = self.cascade.stages[k - 1].to(dev)  # only this stage on the device
            log(f"stage {k} ({scfg.name}, {res}³): {len(chains)} chain(s), "
                + (settings.describe() if self.is_diffusion else "direct regression")
                + (f", DRR guidance {guidance_scale}" if guidance_scale > 0 else "")
                + (f" spread ±{settings.guidance_spread:g}" if guidance_scale > 0 and settings.guidance_spread else "")
                + (f", from {'+'.join(present)} only" if mask_row is not None else ""))
            outs = []
            for c0 in range(0, len(chains), batch_size):
                chunk = chains[c0:c0 + batch_size]
                idx = torch.tensor([b for b, _ in chunk])
                x_ray = xray[idx].to(dev).float()
                gens = sample_generators([mix_seed("infer", seed, k, keys[b], i) for b, i in chunk], dev)
                cond = cond_noise = None
                if k > 1:
                    cgens = sample_generators([mix_seed("infer-cond", seed, k, keys[b], i) for b, i in chunk], dev)
                    low = prev[c0:c0 + len(chunk)].to(dev)
                    cond, cond_noise = make_condition(low, res, self.cfg, cgens, scfg.cond_noise_level)
                mask = None if mask_row is None else mask_row.to(dev).expand(len(chunk), -1)
                model_fn = stage_model_fn(stage, x_ray, cond, cond_noise, view_mask=mask, reuse_condition=True)
                fn = model_fn
                if guidance_scale > 0:
                    scale = guidance_scale if not settings.guidance_spread else torch.tensor(
                        [settings.chain_guidance(i) for _, i in chunk], device=dev)  # (chunk,) one per chain
                    fn = drr_consistency_wrap(model_fn, self.project, x_ray, scale,
                                              self.cfg.diffusion.schedule, through_model=False, normalize=True,
                                              views=fit_views)
                out = self.objective.generate(fn, (len(chunk), 1, res, res, res), dev, gens, settings)
                outs.append(out.float().cpu())
            stage.to("cpu")
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            prev = torch.cat(outs)  # (B*K, 1, r, r, r)
            results.append(StageResult(k, scfg.name, res, prev.reshape(B, samples, 1, res, res, res)))
        return results

    def render_settings(self) -> dict:
        """What X-rays fed to this checkpoint must have been rendered with (data/render.py)."""
        return render_settings(self.cfg.data, self.render_size)

    def check_source(self, have: dict, source: str) -> None:
        """Refuse X-rays (a dataset manifest's or a file's settings `have`) rendered unlike the training DRRs."""
        check_render_settings(self.render_settings(), have, f"checkpoint {self.checkpoint_dir}", source)


def xrays_from_ct(rec: Reconstructor, path: str | os.PathLike) -> tuple[Tensor, np.ndarray]:
    """Render the checkpoint's views from a CT exactly as `hvc prepare` did: (X-rays (V, P, P), HU cube).

    `data/render.render_xrays` at the training data's render size (data_info.json), normalised with
    the checkpoint's li_max. The returned cube is the windowed HU reference.
    """
    from hybrid_vit_cascade.data.io import read_ct
    from hybrid_vit_cascade.data.render import render_xrays
    from hybrid_vit_cascade.geometry.physics import normalize_xray

    li, hu = render_xrays(read_ct(path), rec.cfg.data, rec.render_size, projector=rec.projector)  # (V, P, P)
    lo, hi = rec.window
    return normalize_xray(li, rec.li_max).float(), np.clip(hu, lo, hi)

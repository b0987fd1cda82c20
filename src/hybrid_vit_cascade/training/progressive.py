"""Progressive training: stage 1, then stage 2 on frozen stage 1's cached samples, and so on.

`train_progressive` is what `hvc train` and `training/train_progressive.py` run. It resolves the
dataset, writes config.json / data_info.json, restores earlier stages and any resume point, builds
the conditioning cache of each stage k ≥ 2 and runs a `StageTrainer` per stage.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from hybrid_vit_cascade.config import Config, ConfigError
from hybrid_vit_cascade.data.render import check_render_settings, render_settings
from hybrid_vit_cascade.runtime.checkpoint import (
    CheckpointError, complete_stage_weights, copy_snapshots, load_state, load_weights, make_data_info, read_config,
    read_data_info, read_meta, resolve_snapshot, save_resolved_config, stage_dir, stage_snapshot, DATA_INFO_FILE,
    CONFIG_FILE,
)
from hybrid_vit_cascade.files import write_json_atomic
from hybrid_vit_cascade.runtime.conditioning import subset_label, view_subsets
from hybrid_vit_cascade.training.cond_cache import build_condition_cache
from hybrid_vit_cascade.training.data import StageDataset
from hybrid_vit_cascade.training.logging import RunLogger
from hybrid_vit_cascade.training.trainer import StageTrainer

DEVICES = ("auto", "cpu", "cuda", "mps")


# ---------------------------------------------------------------- data


def resolve_dataset(cfg: Config, progress: bool = True) -> Path:
    """The prepared dataset: data.dataset, or the embedded phantom default (prepared on first use)."""
    from hybrid_vit_cascade.data.prepare import ensure_default_dataset

    return Path(ensure_default_dataset(cfg.data, [s.resolution for s in cfg.stages], progress=progress))


def check_dataset(cfg: Config, manifest: dict, root: Path, ckpt: Path, render_size: int) -> None:
    """The model is built from the config: the dataset must have been rendered as the config says."""
    want = render_settings(cfg.data, render_size)
    check_render_settings(want, manifest, f"checkpoint {ckpt}", f"dataset {root}")
    missing = [s.resolution for s in cfg.stages if s.resolution not in [int(x) for x in manifest["sizes"]]]
    if missing:
        raise CheckpointError(f"dataset {root} has no ground truth at {missing} (has {manifest['sizes']}); "
                              "re-run `hvc prepare` with this config's stage sizes or point data.dataset elsewhere")


def _split(root: Path, split: str, res: int):
    from hybrid_vit_cascade.data.datasets import CTXrayDataset

    try:
        return CTXrayDataset(root, split, [res])
    except ValueError as err:
        if "is empty" in str(err) and split != "train":
            return []  # no val cases: validation is skipped, `best` = final weights
        raise


# ---------------------------------------------------------------- resume


def find_resume_snapshot(path: str | Path) -> tuple[Path, Path, dict]:
    """(checkpoint root, snapshot dir, meta) for --resume_from: a root, stage dir, snapshot or state.pt."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"--resume_from {p}: no such file or directory")
    if p.is_file():
        p = p.parent
    snap = resolve_snapshot(p)
    if snap is None and ((p / "last").exists() or (p / "last.old").exists()):
        snap = resolve_snapshot(p / "last")
    if snap is None and (p / CONFIG_FILE).is_file():
        cfg = read_config(p)
        for k in range(len(cfg.stages), 0, -1):
            snap = resolve_snapshot(stage_dir(p, k, cfg.stages[k - 1].name) / "last")
            if snap is not None:
                break
    if snap is None:
        raise CheckpointError(f"--resume_from {path}: no checkpoint found (expected a stage*/last folder)")
    meta = read_meta(snap)
    root = snap.parent.parent
    return root, snap, meta


# ---------------------------------------------------------------- driver


def make_accelerator(cfg: Config, device: str):
    """HF Accelerator for this run's precision / accumulation / device."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration

    if device not in DEVICES:
        raise ConfigError(f"--device must be one of {DEVICES} (pick a GPU with CUDA_VISIBLE_DEVICES), got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu)")
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) and "RANK" not in os.environ:
        # A single-process run may follow another in the same interpreter (tests, notebooks) with a
        # different precision; Accelerate's state is a process-wide singleton, so start it afresh.
        AcceleratorState._reset_state(reset_partial_state=True)
    tc = cfg.training
    return Accelerator(
        mixed_precision=tc.mixed_precision,
        gradient_accumulation_steps=tc.grad_accum_steps,
        cpu=device == "cpu",
        step_scheduler_with_optimizer=False,  # we step the lr once per update ourselves
        dataloader_config=DataLoaderConfiguration(even_batches=True),
    )


def train_progressive(
    cfg: Optional[Config],
    checkpoint_dir: str | Path,
    *,
    only_stage: Optional[int] = None,
    resume_from: Optional[str | Path] = None,
    use_wandb: bool = False,
    wandb_project: Optional[str] = None,
    device: str = "auto",
    max_steps: Optional[int] = None,
    overwrite: bool = False,
    stop_at_step: Optional[int] = None,
    log: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """Train the cascade's stages in order (or only `only_stage`, 1-based); returns per-stage summaries."""
    ckpt = Path(checkpoint_dir)
    resume = find_resume_snapshot(resume_from) if resume_from is not None else None
    if cfg is None:
        if resume is None:
            raise CheckpointError("a config is required (--config) unless --resume_from is given")
        cfg = read_config(resume[0])
    if max_steps is not None:
        cfg.training.max_steps_per_stage = max_steps
    n = len(cfg.stages)
    if only_stage is not None and not 1 <= only_stage <= n:
        raise CheckpointError(f"--stage {only_stage}: the config has stages 1..{n}")

    accelerator = make_accelerator(cfg, device)
    is_main = accelerator.is_main_process
    say = log or (lambda msg: accelerator.print(msg))
    from accelerate.utils import set_seed

    set_seed(cfg.training.seed)  # same initial weights on every rank

    # Which stages to train, and where stage `first` starts from.
    src_root = resume[0] if resume else ckpt
    first = only_stage or 1
    resume_payload = None
    if resume is not None:
        _, snap, meta = resume
        k_snap = int(meta["stage"])
        if only_stage is not None and only_stage != k_snap:
            snap = resolve_snapshot(stage_dir(src_root, only_stage, cfg.stages[only_stage - 1].name) / "last")
            meta = read_meta(snap) if snap else {"stage": only_stage, "completed": False}
            k_snap = only_stage
        if snap is not None and meta.get("completed"):
            first = k_snap + 1 if only_stage is None else k_snap
            if only_stage is not None:
                say(f"stage {k_snap} is already complete in {src_root}; retraining needs --overwrite and no --resume_from")
                return {"stages": []}
        elif snap is not None:
            first = k_snap
            resume_payload = {"model": load_weights(snap, ema=False), "ema": load_weights(snap, ema=True),
                              "state": load_state(snap)}
        else:
            first = k_snap
    stages = [first] if only_stage is not None else list(range(first, n + 1))
    if not stages:
        say(f"all {n} stages are already trained in {src_root}")
        return {"stages": []}

    if is_main:
        ckpt.mkdir(parents=True, exist_ok=True)
        existing = [k for k in stages if stage_dir(ckpt, k, cfg.stages[k - 1].name).exists()]
        resumed_here = resume_payload is not None and src_root.resolve() == ckpt.resolve()
        clash = [k for k in existing if not (resumed_here and k == first)]
        if clash and not overwrite:
            raise CheckpointError(
                f"{ckpt} already has checkpoints for stage(s) {clash}; pass --resume_from {ckpt} to continue, "
                "--overwrite to retrain them, or choose another --checkpoint_dir"
            )
        for k in clash:
            shutil.rmtree(stage_dir(ckpt, k, cfg.stages[k - 1].name))
    accelerator.wait_for_everyone()

    with accelerator.main_process_first():
        root = resolve_dataset(cfg, progress=is_main)
    from hybrid_vit_cascade.data.datasets import load_manifest

    manifest = load_manifest(root)
    # Frozen earlier stages fix the render size their X-rays had; a fresh cascade takes the dataset's.
    earlier = first > 1 and (src_root / DATA_INFO_FILE).is_file()  # else: "stage j is not trained" below
    render_size = read_data_info(src_root)["render_size"] if earlier else manifest["render_size"]
    check_dataset(cfg, manifest, root, ckpt, render_size)
    from hybrid_vit_cascade.data.xray_stats import training_xray_stats

    # what a film is matched to at inference (data_info, written by the main process) and in film augmentation
    stats = training_xray_stats(root) if is_main or cfg.training.film_augment > 0 else None
    if is_main:
        save_resolved_config(cfg, ckpt)
        write_json_atomic(ckpt / DATA_INFO_FILE, make_data_info(root, manifest, stats))
    films = None
    if cfg.training.film_augment > 0:
        from hybrid_vit_cascade.training.film_cache import build_film_cache

        # under data.cache_dir: checkpoints trained on the same data (the cascade, its baseline) share them;
        # every process makes its share of the cases
        films = build_film_cache(cfg, _split(root, "train", cfg.stages[0].resolution),
                                 Path(cfg.data.cache_dir) / "film_cache", str(manifest.get("settings_hash")),
                                 render_size, stats, say, progress=is_main, rank=accelerator.process_index,
                                 world=accelerator.num_processes, barrier=accelerator.wait_for_everyone)

    from hybrid_vit_cascade.models.cascade import Cascade

    cascade = Cascade(cfg).to(accelerator.device)
    # Earlier stages: their best EMA weights, frozen (copied into this run's dir if they live elsewhere).
    for j in range(1, first):
        snap = stage_snapshot(src_root, cfg, j, "best")
        if snap is None:
            raise CheckpointError(
                f"stage {j} is not trained in {src_root}; train it first (--stage {j}) or pass --resume_from"
            )
        _load_frozen(cascade, j, snap)
        src_stage = stage_dir(src_root, j, cfg.stages[j - 1].name)
        dst_stage = stage_dir(ckpt, j, cfg.stages[j - 1].name)
        if is_main and src_stage.resolve() != dst_stage.resolve():
            copy_snapshots(src_stage, dst_stage)

    logger = RunLogger(ckpt, enabled=is_main, use_wandb=use_wandb, wandb_project=wandb_project,
                       run_config=cfg.to_dict())
    summaries = []
    try:
        for k in stages:
            summaries.append(_train_stage(cfg, k, cascade, accelerator, root, manifest, ckpt, logger,
                                          resume_payload if k == first else None, stop_at_step, say, films))
            if not summaries[-1]["completed"]:
                break
            snap = stage_snapshot(ckpt, cfg, k, "best")
            if snap is None:  # only the main process writes; others see it after the barrier
                raise CheckpointError(f"stage {k} finished but {stage_dir(ckpt, k, cfg.stages[k - 1].name)} has no weights")
            _load_frozen(cascade, k, snap)
    finally:
        logger.close()
        accelerator.end_training()
    return {"stages": summaries, "checkpoint_dir": str(ckpt), "dataset": str(root), "cascade": cascade.eval()}


def _load_frozen(cascade, j: int, snap: Path) -> None:
    stage = cascade.stages[j - 1]
    try:
        stage.load_state_dict(complete_stage_weights(stage, load_weights(snap, ema=True)), strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"weights in {snap} do not match the config's stage {j}: {err}") from None
    stage.requires_grad_(False).eval()


def _train_stage(cfg, k, cascade, accelerator, root, manifest, ckpt, logger, resume, stop_at_step, say,
                 films=None) -> dict:
    res = cfg.stages[k - 1].resolution
    train_base, val_base = _split(root, "train", res), _split(root, "val", res)
    cache, view_caches = None, {}
    if k >= 2:
        # Every train/val case through the frozen stage k−1 once (its own condition from k−2's cache);
        # with view dropout also from each view alone, for the samples that show only that view.
        cases = [(ds.cases[i]["case_id"], ds[i]["xray"]) for ds in (train_base, val_base) for i in range(len(ds))]
        sets = view_subsets(cfg.data.views) if cfg.training.view_dropout else [tuple(cfg.data.views)]
        for views in sets:
            c = build_condition_cache(
                cfg, k - 1, cascade.stages, cases, ckpt / "cond_cache", str(manifest.get("settings_hash")),
                accelerator.device, accelerator.process_index, accelerator.num_processes,
                accelerator.wait_for_everyone, accelerator.autocast, say, cfg.training.batch_size, views,
            )
            if len(views) == len(cfg.data.views):
                cache = c
            else:
                view_caches[subset_label(views)] = c
    film_conds = {}
    if k >= 2 and films is not None and cfg.training.film_conditions:
        # Stage k−1's sample from each training film (each view set as above): what a film sample's condition
        # is at inference. Keyed by the films too, so new films resample it.
        ids = [train_base.cases[i]["case_id"] for i in range(len(train_base))]
        film_cases = films.film_cases(ids)
        for views in sets:
            film_conds[subset_label(views)] = build_condition_cache(
                cfg, k - 1, cascade.stages, film_cases, ckpt / "cond_cache",
                f"{manifest.get('settings_hash')}/films_{films.key}", accelerator.device, accelerator.process_index,
                accelerator.num_processes, accelerator.wait_for_everyone, accelerator.autocast, say,
                cfg.training.batch_size, views)
    train_ds = StageDataset(train_base, res, cache, view_caches, films, film_conds)
    val_ds = StageDataset(val_base, res, cache) if len(val_base) else []  # validation: every view
    trainer = StageTrainer(cfg, k, cascade, accelerator, train_ds, val_ds, ckpt, logger,
                           float(manifest["xray_scale"]["li_max"]), resume, stop_at_step, say)
    return trainer.fit()

"""Training loop of ONE cascade stage (earlier stages frozen), through HF Accelerate.

Per optimizer step: objective loss (+ physics_weight × DRR loss, per view) → accelerator.backward →
clip → AdamW → warm-up/cosine lr → EMA. Mixed precision and gradient accumulation are Accelerate's
(`accelerator.accumulate`); multi-process data parallelism comes from `accelerate launch`/torchrun.

Exact resume: the data order is a permutation seeded by (seed, stage, epoch), a resumed epoch skips
the batches already consumed, every sample's noise comes from a generator seeded by (seed, stage,
epoch, case index), and state.pt restores optimizer, scheduler, EMA, RNG and counters.
Unhealthy steps: a non-finite loss/gradient skips the update; a finite loss above EXPLODE_FACTOR ×
the median of the last EXPLODE_WINDOW healthy steps' losses (checked once EXPLODE_WARMUP healthy
steps are known) is an exploding one. `max_bad_steps` unhealthy steps in a row stop the run with
TrainingDiverged, and no snapshot is written while such a streak lasts, so `last`/`best` keep the
weights of the last healthy step. A snapshot that cannot be written (disk full, folder not
writable) stops the run with a CheckpointError; the previous snapshot stays as it was.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.utils.data import DataLoader

from hybrid_vit_cascade.config import Config
from hybrid_vit_cascade.geometry.projector import Projector
from hybrid_vit_cascade.runtime.checkpoint import (
    CheckpointError, complete_stage_weights, read_meta, resolve_snapshot, rng_state, save_snapshot, set_rng_state,
    stage_dir, weights_hash,
)
from hybrid_vit_cascade.files import write_json_atomic
from hybrid_vit_cascade.runtime.objective import Objective
from hybrid_vit_cascade.runtime.seeding import mix_seed, sample_generators
from hybrid_vit_cascade.training.data import EpochShuffleSampler
from hybrid_vit_cascade.training.ema import EMA
from hybrid_vit_cascade.training.logging import RunLogger, StageProgress, peak_memory_mb
from hybrid_vit_cascade.training.lr import warmup_cosine
from hybrid_vit_cascade.training.step import StageStepper
from hybrid_vit_cascade.training.validation import validate

# A diffusion/regression loss on [-1, 1] data varies a few-fold from batch to batch (min-SNR keeps
# the v-loss of all noise levels comparable), so 100× the running median never happens in a
# healthy run; it takes max_bad_steps such steps in a row to stop, so a lone odd batch cannot.
EXPLODE_FACTOR = 100.0
EXPLODE_WARMUP = 10  # healthy steps before the check starts (the first losses set the level)
EXPLODE_WINDOW = 50  # healthy steps the running median is taken over

TROUBLESHOOTING = (
    "Troubleshooting a diverging loss: (1) learning rate too high — try 1e-5 instead of {lr:g} "
    "(training.learning_rate); (2) gradient explosion — gradient clipping is training.grad_clip = {clip:g}; "
    "(3) data normalisation — X-rays and CT volumes must be normalised to [-1, 1] (re-run `hvc prepare`)."
)


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite or exploding steps; the message names step, stage and what to try."""


def running_level(history: list[float]) -> Optional[float]:
    """Median of the recent healthy losses, once EXPLODE_WARMUP of them are known."""
    return statistics.median(history[-EXPLODE_WINDOW:]) if len(history) >= EXPLODE_WARMUP else None


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # No decay on biases, norms, embeddings' 1-D vectors (as nanoGPT / DiT-style training).
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _check_range(name: str, x: torch.Tensor, stage: int) -> None:
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1.001 or hi > 1.001:
        raise ValueError(
            f"stage {stage}: training {name} values span [{lo:.3g}, {hi:.3g}] but must be normalised to [-1, 1] "
            "(prepare the dataset with `hvc prepare`)"
        )


class StageTrainer:
    """Trains stage k (1-based) of `cascade`; stages < k must already hold their frozen weights."""

    def __init__(
        self,
        cfg: Config,
        k: int,
        cascade: torch.nn.Module,
        accelerator,
        train_ds,
        val_ds,
        checkpoint_dir: str | Path,
        logger: RunLogger,
        li_max: float,
        resume: Optional[dict[str, Any]] = None,
        stop_at_step: Optional[int] = None,
        log: Callable[[str], None] = print,
    ):
        self.cfg, self.k, self.cascade, self.accelerator = cfg, k, cascade, accelerator
        self.stage_cfg = cfg.stages[k - 1]
        self.train_ds, self.val_ds = train_ds, val_ds
        self.dir = stage_dir(checkpoint_dir, k, self.stage_cfg.name)
        self.logger, self.resume, self.stop_at_step, self.log = logger, resume, stop_at_step, log
        self.device = accelerator.device
        self.resolution = self.stage_cfg.resolution
        self.objective = Objective(cfg)
        d = cfg.data
        self.view_names = list(d.views)
        self.projector = Projector(d.geometry, self.view_names).to(self.device)
        self.spacing_mm = d.fov_mm / self.resolution  # mm per voxel at this stage
        self.hu_window, self.mu_water, self.li_max = tuple(d.hu_window), d.mu_water, float(li_max)
        self.prefix = f"stage{k}_{self.stage_cfg.name}/"

    # ------------------------------------------------------------------ setup
    def _init_weights(self, model: torch.nn.Module) -> None:
        if self.resume is not None:
            model.load_state_dict(complete_stage_weights(model, self.resume["model"]), strict=True)
            return
        if self.stage_cfg.use_depth_lifting and hasattr(model, "init_prior_from_dataset"):
            # The anatomical depth prior starts as the training CTs' mean attenuation profile.
            vols = (b["x0"] for b in DataLoader(self.train_ds, batch_size=8, shuffle=False))
            model.init_prior_from_dataset(vols, self.hu_window, self.mu_water)

    def _state(self, opt, sched, ema, pos: dict) -> dict:
        acc = self.accelerator
        return {
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
            "ema_updates": ema.num_updates,
            "rng": rng_state(),
            **pos,
        }

    def _save(self, which: str, model, opt, sched, ema, pos: dict, val: dict) -> None:
        """Write a snapshot from the main process; refuses non-finite or diverging weights (keeps the last good one)."""
        acc = self.accelerator
        if not acc.is_main_process:
            return
        if pos["bad_consecutive"]:
            self.log(f"warning: not saving {which} at step {pos['step']}: the last {pos['bad_consecutive']} steps "
                     f"had a non-finite or exploding loss; {self.dir / which} keeps the last healthy weights")
            return
        sd = acc.unwrap_model(model).state_dict()
        bad = [n for n, t in sd.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            self.log(f"warning: not saving {which}: non-finite weights in {bad[:3]}")
            return
        meta = {
            "stage": self.k, "name": self.stage_cfg.name, "step": pos["step"], "epoch": pos["epoch"],
            "completed": pos["completed"], "val": val, "weights_hash": weights_hash(ema.state_dict()),
            "prev_stages": {j: weights_hash(self.cascade.stages[j - 1].state_dict()) for j in range(1, self.k)},
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        try:
            save_snapshot(self.dir / which, sd, ema.state_dict(), self._state(opt, sched, ema, pos), meta)
        except OSError as err:  # disk full, folder made read-only or unwritable, quota...
            self._progress.close()
            prev = resolve_snapshot(self.dir / which)
            kept = f"the previous {which} snapshot (step {read_meta(prev)['step']}) is intact" if prev else \
                f"no earlier {which} snapshot exists"
            raise CheckpointError(
                f"stage {self.k}: cannot write the {which} snapshot into {self.dir} at step {pos['step']}: "
                f"{err.strerror or err}; {kept}. Free space or make the folder writable, then continue with "
                f"--resume_from {self.dir.parent}"
            ) from None

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Train the stage to completion (or `stop_at_step`); returns a summary."""
        cfg, tc, acc, k = self.cfg, self.cfg.training, self.accelerator, self.k
        self.cascade.freeze_except(k - 1)
        model = self.cascade.stages[k - 1]
        if not tc.view_dropout:
            # Nothing reads the missing-view embedding when every sample shows every view: left out
            # of the optimizer (as before it existed) and of DDP, which refuses unused parameters.
            for p in model.missing_view_parameters():
                p.requires_grad_(False)
        model.train()
        self._init_weights(model)
        ema = EMA(model, tc.ema_decay).to(self.device)
        opt_raw = torch.optim.AdamW(_param_groups(model, tc.weight_decay), lr=tc.learning_rate, betas=(0.9, 0.999))
        sampler = EpochShuffleSampler(len(self.train_ds), mix_seed(tc.seed, k))
        loader = DataLoader(
            self.train_ds, batch_size=tc.batch_size, sampler=sampler, num_workers=tc.num_workers,
            drop_last=False, pin_memory=self.device.type == "cuda", persistent_workers=False,
        )
        model, opt, loader = acc.prepare(model, opt_raw, loader)
        n_epochs = self.stage_cfg.num_epochs or tc.num_epochs
        updates_per_epoch = math.ceil(len(loader) / tc.grad_accum_steps)
        total = n_epochs * updates_per_epoch
        if tc.max_steps_per_stage is not None:
            total = min(total, tc.max_steps_per_stage)
        sched = acc.prepare(warmup_cosine(opt_raw, tc.warmup_steps, total))
        names = {id(p): n for n, p in self.cascade.named_parameters()}
        optimized = [names[id(p)] for g in opt_raw.param_groups for p in g["params"]]
        pos = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "bad_consecutive": 0, "bad_total": 0,
               "best_val": math.inf, "completed": False, "total_steps": total, "loss_history": []}
        if self.resume is not None:
            st = self.resume["state"]
            opt.load_state_dict(st["optimizer"])
            sched.load_state_dict(st["scheduler"])
            if acc.scaler is not None and st.get("scaler"):
                acc.scaler.load_state_dict(st["scaler"])
            ema_sd = complete_stage_weights(self.cascade.stages[k - 1], self.resume["ema"])
            ema.load_state_dict(ema_sd, st["ema_updates"])
            set_rng_state(st["rng"])
            pos.update({key: st[key] for key in pos if key in st and key != "total_steps"})
            self.log(f"stage {k}: resuming at step {pos['step']} (epoch {pos['epoch'] + 1}, batch {pos['batch_in_epoch']})")
        # Steps after the resume point (logged before a kill) are logged again below; a fresh start
        # (--overwrite) logs every step anew.
        self.logger.forget(self.prefix, pos["step"])
        acc.step = 0  # micro-batch counter of accumulate(); we always resume on an update boundary
        stepper = StageStepper(self, model)
        seen: dict[int, list[str]] = {}
        val: dict[str, float] = {}
        t_start = time.perf_counter()
        stopped = pos["step"] >= total
        first_batch = True
        exploding: Optional[tuple[float, float]] = None  # (loss, running level) in the current bad streak
        self._progress = StageProgress(f"stage {k} ({self.stage_cfg.name})", total, pos["step"],
                                       enabled=acc.is_local_main_process)
        self.log(f"stage {k} ({self.stage_cfg.name}, {self.resolution}³): {len(self.train_ds)} train / "
                 f"{len(self.val_ds)} val cases, {updates_per_epoch} updates/epoch, {total} updates")
        for epoch in range(pos["epoch"], n_epochs):
            if stopped:
                break
            # Accelerate's loader re-sets the sampler's epoch from its own counter on every iteration;
            # set that counter (it propagates to our sampler, and to the skip-loader on resume).
            loader.set_epoch(epoch)
            sampler.set_epoch(epoch)
            skip = pos["batch_in_epoch"] if epoch == pos["epoch"] else 0
            it = acc.skip_first_batches(loader, skip) if skip else loader
            b_in_epoch = skip
            sums: dict[str, torch.Tensor] = {}
            n_micro, bad_micro, t_upd = 0, False, time.perf_counter()
            for batch in it:
                if first_batch:
                    _check_range("CT", batch["x0"], k)
                    _check_range("X-ray", batch["xray"], k)
                    first_batch = False
                seen.setdefault(epoch, []).extend(batch["case_id"])
                idx = batch["index"].tolist()
                gens = sample_generators([mix_seed("train", tc.seed, k, epoch, i) for i in idx], self.device)
                gens_c = sample_generators([mix_seed("train-c", tc.seed, k, epoch, i) for i in idx], self.device)
                # Which views each sample shows: own generators, none at all without view dropout.
                gens_v = sample_generators([mix_seed("train-views", tc.seed, k, epoch, i) for i in idx],
                                           self.device) if tc.view_dropout else None
                gens_f = sample_generators([mix_seed("train-films", tc.seed, k, epoch, i) for i in idx],
                                           self.device) if tc.film_augment and "films" in batch else None
                with acc.accumulate(model):
                    res = stepper.losses(batch, gens, gens_c, train=True, gens_views=gens_v, gens_films=gens_f)
                    acc.backward(res["loss"])
                    for key, v in res.items():
                        sums[key] = sums.get(key, 0.0) + v.detach().float()
                    n_micro += 1
                    bad_micro = bad_micro or not bool(torch.isfinite(res["loss"].detach()))
                    if acc.sync_gradients:
                        gn = acc.clip_grad_norm_(model.parameters(), tc.grad_clip)
                        # fp16: an overflowing gradient is the GradScaler's business — its step() skips
                        # the update and lowers the scale; only a non-finite loss counts as bad.
                        bad_grad = acc.scaler is None and not bool(torch.isfinite(gn))
                        flag = torch.tensor(float(bad_micro or bad_grad), device=self.device)
                        bad = bool(acc.reduce(flag, "max") > 0)  # every rank skips together
                        if not bad or acc.scaler is not None:
                            opt.step()  # with a scaler, inf/NaN gradients are skipped inside
                        sched.step()  # the lr follows the step count, skipped steps included
                        opt.zero_grad(set_to_none=True)
                b_in_epoch += 1
                if not acc.sync_gradients:
                    continue
                pos["step"] += 1
                step = pos["step"]
                self._progress.advance(step)
                if bad:
                    pos["bad_consecutive"] += 1
                    pos["bad_total"] += 1
                    self.log(f"warning: stage {k} step {step}: non-finite loss or gradient, update skipped "
                             f"({pos['bad_consecutive']} in a row, {pos['bad_total']} total)")
                    self.logger.scalars({"train/bad_steps_total": pos["bad_total"]}, step, self.prefix)
                else:
                    ema.update(acc.unwrap_model(model))
                    loss_now = acc.reduce(sums["loss"] / n_micro, "mean").item()
                    level = running_level(pos["loss_history"])
                    if level is not None and loss_now > EXPLODE_FACTOR * level:
                        pos["bad_consecutive"] += 1
                        exploding = (loss_now, level)
                        self.log(f"warning: stage {k} step {step}: loss {loss_now:.3g} is {loss_now / level:.3g}× its "
                                 f"running median {level:.3g} ({pos['bad_consecutive']} unhealthy steps in a row)")
                    else:
                        pos["bad_consecutive"], exploding = 0, None
                        pos["loss_history"] = (pos["loss_history"] + [loss_now])[-EXPLODE_WINDOW:]
                if pos["bad_consecutive"] >= tc.max_bad_steps:
                    self._progress.close()
                    raise self._diverged(step, epoch, pos["bad_consecutive"], exploding)
                if step % tc.log_every == 0 or step == 1 or step == total:
                    means = {key: acc.reduce(v / n_micro, "mean").item() for key, v in sums.items()}
                    dt = time.perf_counter() - t_upd
                    vox = n_micro * tc.batch_size * self.resolution**3 * acc.num_processes
                    scal = {f"train/{key}": v for key, v in means.items()}
                    scal.update({"train/lr": sched.get_last_lr()[0], "train/grad_norm": float(gn),
                                 "train/voxels_per_s": vox / max(dt, 1e-9),
                                 "train/peak_memory_mb": peak_memory_mb(self.device), "train/epoch": epoch + 1})
                    self.logger.scalars(scal, step, self.prefix)
                    self._progress.report(means["loss"], vox_s=f"{vox / max(dt, 1e-9):.3g}")
                sums, n_micro, bad_micro, t_upd = {}, 0, False, time.perf_counter()
                if step >= total or (self.stop_at_step is not None and step >= self.stop_at_step):
                    stopped = True
                    break
            epoch_done = b_in_epoch >= len(loader)
            pos["epoch"], pos["batch_in_epoch"] = (epoch + 1, 0) if epoch_done else (epoch, b_in_epoch)
            finished = pos["step"] >= total
            pos["completed"] = finished
            due = epoch_done and (epoch + 1) % tc.val_every_epochs == 0
            if (due or finished) and len(self.val_ds) > 0:
                val = self._validate(ema, pos["step"])
                # val is main-process only; mid-streak weights are not saved, so they cannot be the best
                improved = bool(val) and val["loss"] < pos["best_val"] and not pos["bad_consecutive"]
                if improved:
                    pos["best_val"] = val["loss"]
            else:
                improved = False
            if stopped or (epoch + 1) % tc.save_every_epochs == 0 or epoch + 1 == n_epochs:
                self._save("last", model, opt, sched, ema, pos, val)
            if improved:
                self._save("best", model, opt, sched, ema, pos, val)
            acc.wait_for_everyone()
        self._progress.close()
        if pos["completed"] and acc.is_main_process and not (self.dir / "best").exists():
            # No validation ran (empty val split): the final weights are the best we know.
            self._save("best", model, opt, sched, ema, pos, val)
        self._write_rank_report(acc.unwrap_model(model), seen)
        acc.wait_for_everyone()
        summary = {"stage": k, "name": self.stage_cfg.name, "steps": pos["step"], "completed": pos["completed"],
                   "best_val_loss": pos["best_val"], "val": val, "bad_steps": pos["bad_total"],
                   "time_s": time.perf_counter() - t_start, "optimized_parameters": optimized}
        acc.free_memory()  # drop accelerate's references to this stage's model/optimizer/loader
        return summary

    def _diverged(self, step: int, epoch: int, streak: int, exploding: Optional[tuple[float, float]]) -> TrainingDiverged:
        """The one-line stop message: where, which kind of unhealthy steps, what was kept, what to try."""
        tc = self.cfg.training
        if exploding is None:
            what = "a non-finite (NaN/Inf) loss or gradient"
        else:
            what = (f"a loss above {EXPLODE_FACTOR:g}× its running median (or non-finite); last exploding loss "
                    f"{exploding[0]:.3g} vs running median {exploding[1]:.3g}")
        last = resolve_snapshot(self.dir / "last")
        kept = f"{last} (step {read_meta(last)['step']})" if last else "(none yet)"
        return TrainingDiverged(
            f"stage {self.k} ({self.stage_cfg.name}) stopped at step {step} (epoch {epoch + 1}): {streak} consecutive "
            f"steps with {what} (training.max_bad_steps = {tc.max_bad_steps}). The last good checkpoint {kept} "
            "was kept. " + TROUBLESHOOTING.format(lr=tc.learning_rate, clip=tc.grad_clip)
        )

    def _validate(self, ema: EMA, step: int) -> dict[str, float]:
        acc = self.accelerator
        val: dict[str, float] = {}
        if acc.is_main_process:
            val, images = validate(self, ema.module, self.val_ds, self.log)
            self.logger.scalars({f"val/{key}": v for key, v in val.items()}, step, self.prefix)
            self.logger.images(images, step, self.prefix + "val/")
            msg = ", ".join(f"{key} {v:.4g}" for key, v in val.items())
            self.log(f"stage {self.k} step {step}: val {msg}")
        acc.wait_for_everyone()
        return val

    def _write_rank_report(self, model: torch.nn.Module, seen: dict[int, list[str]]) -> None:
        """Per-rank record of the case ids seen and a hash of the final weights (sharding checks)."""
        acc = self.accelerator
        report = {"rank": acc.process_index, "world": acc.num_processes,
                  "cases_seen": {str(e): ids for e, ids in seen.items()},
                  "weights_hash": weights_hash(model.state_dict())}
        write_json_atomic(self.dir / "ranks" / f"rank{acc.process_index}.json", report)

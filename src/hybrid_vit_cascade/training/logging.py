"""Run logging: TensorBoard (always), Weights & Biases (--wandb), and a metrics.jsonl for scripts.

Only the main process logs; the other ranks get a logger whose methods do nothing. W&B honours
WANDB_MODE=offline / WANDB_DIR like any wandb run (nothing here talks to the network itself).
metrics.jsonl holds each (stage, step) once: a resumed stage first drops its records after the
resume step (logged before a kill, and logged again now), a retrained stage all of its old ones.
TensorBoard does the same through one event directory per stage (tb/<stage>/): a resumed stage's
writer opens with purge_step = resume step + 1, so TensorBoard discards that stage's older events
from there on (a stage's steps restart at 1, so stages cannot share a directory to purge in).
A W&B run keeps its id in the checkpoint folder (wandb_run_id): a resumed training continues it.
`StageProgress` is the per-stage progress display (a bar on a terminal, plain lines otherwise).
"""
from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from hybrid_vit_cascade.files import write_text_atomic
from hybrid_vit_cascade.progress import duration

# Without a terminal (a log file, a pipe, CI) progress is one plain line per `training.log_every`
# steps, at most one per PLAIN_EVERY_S seconds (the stage's last step always prints): a long run's
# log stays a few hundred lines instead of a megabyte of carriage returns.
PLAIN_EVERY_S = 10.0


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA max_memory_allocated, else the process's max RSS (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux, bytes on macOS.
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _to_uint8_image(img: np.ndarray) -> np.ndarray:
    """(H, W) float in [-1, 1] → (H, W) uint8 for add_image / wandb.Image."""
    return ((np.clip(img, -1.0, 1.0) + 1.0) * 127.5).round().astype(np.uint8)


class RunLogger:
    """Scalars and images to TensorBoard (CHECKPOINT_DIR/tb/<stage>), optional W&B, and metrics.jsonl."""

    def __init__(
        self,
        checkpoint_dir: str | Path,
        enabled: bool = True,
        use_wandb: bool = False,
        wandb_project: Optional[str] = None,
        run_config: Optional[dict] = None,
        run_name: Optional[str] = None,
    ):
        self.enabled = enabled
        self.writers: dict[str, Any] = {}  # first tag component (the stage) → its SummaryWriter
        self.wandb_run = None
        self.jsonl = None
        if not enabled:
            return
        checkpoint_dir = Path(checkpoint_dir)
        self.tb_root = checkpoint_dir / "tb"
        self.jsonl = open(checkpoint_dir / "metrics.jsonl", "a")
        if use_wandb:
            try:
                import wandb
            except ImportError as err:  # pragma: no cover - wandb is in the test extra
                raise RuntimeError("--wandb needs the wandb package: pip install 'hybrid-vit-cascade[wandb]'") from err
            id_file = checkpoint_dir / "wandb_run_id"
            run_id = id_file.read_text().strip() if id_file.is_file() else None
            self.wandb_run = wandb.init(
                project=wandb_project or "hybrid-vit-cascade",
                name=run_name or checkpoint_dir.name,
                config=run_config,
                dir=os.environ.get("WANDB_DIR", str(checkpoint_dir)),
                id=run_id or None,
                resume="allow",  # the stored id: a resumed training continues its run
            )
            if run_id is None:
                write_text_atomic(id_file, self.wandb_run.id + "\n")

    def _writer(self, tag: str, purge_step: Optional[int] = None):
        """The SummaryWriter of the stage `tag` belongs to (its first component), opened on first use."""
        from torch.utils.tensorboard import SummaryWriter

        stage = tag.split("/", 1)[0]
        if purge_step is not None and stage in self.writers:
            self.writers.pop(stage).close()
        if stage not in self.writers:
            self.writers[stage] = SummaryWriter(log_dir=str(self.tb_root / stage), purge_step=purge_step)
        return self.writers[stage]

    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        """Log scalars (non-finite values are logged too: TensorBoard shows them as gaps)."""
        if not self.enabled:
            return
        values = {f"{prefix}{k}": float(v) for k, v in values.items()}
        for k, v in values.items():
            self._writer(k).add_scalar(k, v, step)
        if self.wandb_run is not None:
            # W&B wants one monotonic step per run; stages restart their step, so log it as a value.
            self.wandb_run.log({**values, f"{prefix}step": step})
        rec = {"step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}
        self.jsonl.write(json.dumps(rec) + "\n")
        self.jsonl.flush()

    def forget(self, prefix: str, after_step: int) -> int:
        """Drop the records of `prefix` (a stage) logged after `after_step`; returns how many left metrics.jsonl.

        TensorBoard: the stage's writer reopens with purge_step = after_step + 1 (its later events are
        discarded when read), so a resumed or retrained stage shows each step once there too.
        """
        if not self.enabled:
            return 0
        self._writer(prefix, purge_step=after_step + 1)
        path = Path(self.jsonl.name)
        lines = path.read_text().splitlines(keepends=True)
        keep = [line for line in lines if not _dropped(line, prefix, after_step)]
        if len(keep) == len(lines):
            return 0
        self.jsonl.close()
        write_text_atomic(path, "".join(keep))
        self.jsonl = open(path, "a")
        return len(lines) - len(keep)

    def images(self, images: dict[str, np.ndarray], step: int, prefix: str = "") -> None:
        """Log (H, W) images with values in [-1, 1]."""
        if not self.enabled:
            return
        for k, img in images.items():
            self._writer(prefix + k).add_image(f"{prefix}{k}", _to_uint8_image(img), step, dataformats="HW")
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({f"{prefix}{k}": wandb.Image(_to_uint8_image(v)) for k, v in images.items()})

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.enabled:
            self._writer(tag).add_text(tag, text, step)

    def flush(self) -> None:
        """Write buffered TensorBoard events and metrics.jsonl records to disk now."""
        if self.enabled:
            for w in self.writers.values():
                w.flush()
            self.jsonl.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        for w in self.writers.values():
            w.close()
        self.jsonl.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
        self.enabled = False


def _dropped(line: str, prefix: str, after_step: int) -> bool:
    if not line.endswith("\n"):
        return True  # a record cut short by a kill; the next append would glue onto it
    try:
        rec = json.loads(line)
    except ValueError:
        return False  # not ours to judge; keep it
    return rec.get("step", 0) > after_step and any(key.startswith(prefix) for key in rec)


class StageProgress:
    """Progress of one stage in optimizer steps: one tqdm bar on a terminal, plain lines (no '\\r') otherwise."""

    def __init__(self, desc: str, total: int, initial: int = 0, enabled: bool = True,
                 every_s: Optional[float] = None):
        self.desc, self.total, self.step, self.enabled = desc, total, initial, enabled
        self.every_s = PLAIN_EVERY_S if every_s is None else every_s
        self.first, self.t0, self.last_line = initial, time.perf_counter(), -math.inf
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True)

    def advance(self, step: int) -> None:
        """The stage is at optimizer step `step`."""
        if self.bar is not None:
            self.bar.update(step - self.step)
        self.step = step

    def report(self, loss: float, **extra: str) -> None:
        """Show the current loss: the bar's postfix, or a plain line when one is due."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", **extra)
            return
        now = time.perf_counter()
        if self.step < self.total and now - self.last_line < self.every_s:
            return
        self.last_line = now
        rate = (self.step - self.first) / max(now - self.t0, 1e-9)
        left = (self.total - self.step) / rate if rate > 0 else math.inf
        print(f"{self.desc}: step {self.step}/{self.total} ({100 * self.step / max(self.total, 1):.0f}%), "
              f"loss {loss:.4g}, {rate:.3g} steps/s, {duration(left)} left", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

"""Run logging: TensorBoard (always), Weights & Biases (--wandb), and a metrics.jsonl for scripts.

Only the main process logs; the other ranks get a logger whose methods do nothing. W&B honours
WANDB_MODE=offline / WANDB_DIR like any wandb run (nothing here talks to the network itself).
"""
from __future__ import annotations

import json
import math
import os
import resource
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch


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
    """Scalars and images to TensorBoard (CHECKPOINT_DIR/tb), optional W&B, and metrics.jsonl."""

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
        self.writer = None
        self.wandb_run = None
        self.jsonl = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        checkpoint_dir = Path(checkpoint_dir)
        self.writer = SummaryWriter(log_dir=str(checkpoint_dir / "tb"))
        self.jsonl = open(checkpoint_dir / "metrics.jsonl", "a")
        if use_wandb:
            try:
                import wandb
            except ImportError as err:  # pragma: no cover - wandb is in the test extra
                raise RuntimeError("--wandb needs the wandb package: pip install 'hybrid-vit-cascade[wandb]'") from err
            self.wandb_run = wandb.init(
                project=wandb_project or "hybrid-vit-cascade",
                name=run_name or checkpoint_dir.name,
                config=run_config,
                dir=os.environ.get("WANDB_DIR", str(checkpoint_dir)),
                resume="allow",
            )

    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        """Log scalars (non-finite values are logged too: TensorBoard shows them as gaps)."""
        if not self.enabled:
            return
        values = {f"{prefix}{k}": float(v) for k, v in values.items()}
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        if self.wandb_run is not None:
            # W&B wants one monotonic step per run; stages restart their step, so log it as a value.
            self.wandb_run.log({**values, f"{prefix}step": step})
        rec = {"step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}
        self.jsonl.write(json.dumps(rec) + "\n")
        self.jsonl.flush()

    def images(self, images: dict[str, np.ndarray], step: int, prefix: str = "") -> None:
        """Log (H, W) images with values in [-1, 1]."""
        if not self.enabled:
            return
        for k, img in images.items():
            self.writer.add_image(f"{prefix}{k}", _to_uint8_image(img), step, dataformats="HW")
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({f"{prefix}{k}": wandb.Image(_to_uint8_image(v)) for k, v in images.items()})

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.enabled:
            self.writer.add_text(tag, text, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self.writer.close()
        self.jsonl.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
        self.enabled = False

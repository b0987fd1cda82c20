#!/usr/bin/env python
"""The seed's training entry point; identical to `hvc train` (see `hvc train --help`).

    python training/train_progressive.py --config config/quick_2stage.json \
        --checkpoint_dir checkpoints/quick_2stage [--wandb --wandb_project NAME] [--resume_from PATH] [--stage K]

Multi-GPU: `accelerate launch --multi_gpu --num_processes N training/train_progressive.py ...`.
Several CPU processes (gloo): `torchrun --nproc_per_node N training/train_progressive.py ... --device cpu`
(`accelerate launch --cpu` starts ONE process; Accelerate's multi-CPU launcher needs MPI).
"""
import sys
from pathlib import Path

# Runs from a source checkout without `pip install -e .` too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hybrid_vit_cascade.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

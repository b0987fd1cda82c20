"""hvc — Hybrid-ViT Cascade: 3D CT from one or two X-rays. One verb per job (see `hvc VERB --help`)."""
from __future__ import annotations

import sys

from hybrid_vit_cascade.commands import VERBS, build_parser, main  # noqa: F401 (the entry point and its table)

if __name__ == "__main__":
    sys.exit(main())

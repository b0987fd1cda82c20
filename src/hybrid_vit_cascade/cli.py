"""hvc — Hybrid-ViT Cascade: 3D CT from one or two X-rays. One verb per job (see `hvc VERB --help`)."""
from __future__ import annotations

import argparse
import importlib
import sys

# Each verb lives in `commands/<verb>.py` with `add_arguments(p)` and `run(args) -> int`.
# verb -> (module, one-line help). Modules are imported lazily so `hvc --help` stays fast.
VERBS: dict[str, tuple[str, str]] = {
    "phantoms": ("hybrid_vit_cascade.commands.phantoms", "generate synthetic thorax CT phantoms (NIfTI)"),
    "prepare": ("hybrid_vit_cascade.commands.prepare", "turn CTs (NIfTI/DICOM/MHA/NRRD) into a training dataset with DRRs"),
    "drr": ("hybrid_vit_cascade.commands.drr", "render AP/lateral DRRs of a CT"),
    "train": ("hybrid_vit_cascade.commands.train", "train the cascade progressively (same as training/train_progressive.py)"),
    "infer": ("hybrid_vit_cascade.commands.infer", "reconstruct a CT (NIfTI, HU) from X-rays"),
    "evaluate": ("hybrid_vit_cascade.commands.evaluate", "score a checkpoint and baselines on a dataset"),
    "demo": ("hybrid_vit_cascade.commands.demo", "the main job on the embedded default: phantoms → dataset → train → infer → evaluate"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hvc", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (_, help_) in VERBS.items():
        sub.add_parser(verb, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in VERBS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown verb {argv[0]!r}; choose from {', '.join(VERBS)}")
        parser.print_help()
        return 0 if argv else 2
    verb = argv[0]
    module = importlib.import_module(VERBS[verb][0])
    p = argparse.ArgumentParser(prog=f"hvc {verb}", description=VERBS[verb][1])
    module.add_arguments(p)
    args = p.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

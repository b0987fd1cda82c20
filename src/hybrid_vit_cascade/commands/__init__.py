"""hvc — Hybrid-ViT Cascade: 3D CT from one or two X-rays. One verb per job (see `hvc VERB --help`).

The verbs' dispatch table and the one place that turns the project's own errors into one line;
`hybrid_vit_cascade.cli` is the console entry point over it (and `hvc demo` runs verbs through it).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from hybrid_vit_cascade import threads

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


# The project's own error types: a user's input or environment, not a bug, so one line is enough.
# Looked up in sys.modules: a type whose module was never imported cannot have been raised, and
# `hvc --help` stays free of torch.
USER_ERRORS = {
    "hybrid_vit_cascade.config": "ConfigError",
    "hybrid_vit_cascade.files": "UnsafePathError",
    "hybrid_vit_cascade.data.io": "CTReadError",
    "hybrid_vit_cascade.inference.xray_io": "XrayReadError",
    "hybrid_vit_cascade.runtime.checkpoint": "CheckpointError",
    "hybrid_vit_cascade.training.trainer": "TrainingDiverged",
}


def is_user_error(err: BaseException) -> bool:
    """A project error type, a ValueError from validation or an OSError (a path, a full disk)."""
    types = tuple(getattr(sys.modules[m], name) for m, name in USER_ERRORS.items() if m in sys.modules)
    return isinstance(err, (ValueError, OSError, *types))


def one_line(err: BaseException) -> str:
    """The error's message on one line (a config error lists one bad key per line)."""
    if type(err).__name__ == "ValidationError" and callable(getattr(err, "errors", None)):  # pydantic's
        return f"invalid {getattr(err, 'title', 'value')}: " + "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors())
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or [type(err).__name__]
    text = lines[0]
    for ln in lines[1:]:
        text += (" " if text.endswith(":") else "; ") + ln
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hvc", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (_, help_) in VERBS.items():
        sub.add_parser(verb, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(argv) and argv[0] == "--debug"  # `hvc --debug VERB ...`; `hvc VERB ... --debug` works too
    argv = argv[1:] if debug else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in VERBS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown verb {argv[0]!r}; choose from {', '.join(VERBS)}")
        parser.print_help()
        return 0 if argv else 2
    verb = argv[0]
    # Before the verb imports torch: a user's HVC_THREADS / OMP_NUM_THREADS is honoured, else the
    # thread count follows the free CPUs (threads.py: spin-waiting threads stall beside a busy process).
    try:
        threads.configure()
    except ValueError as err:
        print(f"hvc {verb}: error: {err}", file=sys.stderr)
        return 2
    module = importlib.import_module(VERBS[verb][0])
    p = argparse.ArgumentParser(prog=f"hvc {verb}", description=VERBS[verb][1])
    module.add_arguments(p)
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = p.parse_args(argv[1:])
    args.debug = args.debug or debug
    try:
        return int(module.run(args) or 0)
    except Exception as err:
        if args.debug or not is_user_error(err):
            raise
        print(f"hvc {verb}: error: {one_line(err)}", file=sys.stderr)
        return 2


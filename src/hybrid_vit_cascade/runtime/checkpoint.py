"""Checkpoint layout (DESIGN.md "Checkpoints"): atomic snapshots of one stage, and `load_cascade`.

CHECKPOINT_DIR/config.json, data_info.json, stage<k>_<name>/{last,best}/{model,ema}.safetensors,
state.pt (optimizer, scheduler, RNG, position), meta.json; std_scale.json once `hvc evaluate --calibrate`
has fitted the uncertainty's scale on the validation split (`hvc infer` applies it where it holds). A snapshot is written into a temp
directory and renamed into place, so a crash never leaves a half-written `last` or `best`.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hybrid_vit_cascade.config import Config, ConfigError, load_config
from hybrid_vit_cascade.files import atomic_dir, inside, write_json_atomic

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
CONFIG_FILE = "config.json"
DATA_INFO_FILE = "data_info.json"
STD_SCALE_FILE = "std_scale.json"


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, incomplete or does not match the config."""


def stage_dir(checkpoint_dir: str | Path, k: int, name: str) -> Path:
    """Directory of stage k (1-based) of the cascade; never outside `checkpoint_dir`.

    Every write and delete of a stage (snapshots, their `.old` cleanup, --overwrite) goes through
    here, so a stage name like `../../x` or a stage folder symlinked elsewhere is refused.
    """
    return inside(Path(checkpoint_dir) / f"stage{k}_{name}", checkpoint_dir, f"stage {k} ({name!r}) folder")


def save_resolved_config(cfg: Config, checkpoint_dir: str | Path) -> Path:
    """Save the resolved config (every default filled in) as CHECKPOINT_DIR/config.json."""
    path = Path(checkpoint_dir) / CONFIG_FILE
    write_json_atomic(path, cfg.to_dict())
    return path


def _cpu_contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses non-contiguous or shared storage; clone gives each tensor its own.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def save_snapshot(
    dst: str | Path,
    model_sd: dict[str, torch.Tensor],
    ema_sd: dict[str, torch.Tensor] | None,
    state: dict[str, Any] | None,
    meta: dict[str, Any],
) -> Path:
    """Atomically write a stage snapshot directory (`last` or `best`); the old one is kept on failure."""

    def fill(tmp: Path) -> None:
        save_file(_cpu_contiguous(model_sd), str(tmp / MODEL_FILE))
        if ema_sd is not None:
            save_file(_cpu_contiguous(ema_sd), str(tmp / EMA_FILE))
        if state is not None:
            torch.save(state, tmp / STATE_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    # atomic_dir moves the old snapshot aside to `<dst>.old` before the final rename;
    # `resolve_snapshot` falls back to it if a crash hits between the two renames.
    return atomic_dir(dst, fill)


def resolve_snapshot(path: str | Path) -> Path | None:
    """The usable snapshot at `path` (or its `.old` twin left by an interrupted save), else None."""
    path = Path(path)
    for p in (path, path.with_name(path.name + ".old")):
        if (p / MODEL_FILE).is_file() and (p / META_FILE).is_file():
            return p
    return None


def copy_snapshots(src_stage: str | Path, dst_stage: str | Path) -> None:
    """Copy a stage's `best` and `last` snapshots into another stage folder, each atomically."""
    for which in ("best", "last"):
        src = resolve_snapshot(Path(src_stage) / which)
        if src is not None:
            files = [f for f in src.iterdir() if f.is_file()]
            atomic_dir(Path(dst_stage) / which, lambda tmp: [shutil.copyfile(f, tmp / f.name) for f in files])


def read_meta(snapshot: str | Path) -> dict[str, Any]:
    return json.loads((Path(snapshot) / META_FILE).read_text())


def load_weights(snapshot: str | Path, ema: bool = True) -> dict[str, torch.Tensor]:
    """State dict of a snapshot: EMA weights if asked and present, else the raw weights."""
    snapshot = Path(snapshot)
    f = snapshot / EMA_FILE if ema and (snapshot / EMA_FILE).is_file() else snapshot / MODEL_FILE
    try:
        return load_file(str(f))
    except OSError:
        raise
    except Exception as err:  # safetensors raises its own SafetensorError (not exported by every version)
        raise CheckpointError(f"{f} is truncated or corrupt ({_reason(err)})") from None


def _reason(err: BaseException) -> str:
    """The first sentence of a library's error (torch appends a paragraph of advice)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text.split(". ")[0]


def load_state(snapshot: str | Path) -> dict[str, Any]:
    """The training state (optimizer, scheduler, RNG, position) of a snapshot."""
    import pickle

    f = Path(snapshot) / STATE_FILE
    if not f.is_file():
        raise CheckpointError(f"{snapshot} has no {STATE_FILE}; cannot resume from it")
    # Everything in state.pt is tensors / plain python (see rng_state), so weights_only works;
    # anything else is refused, never unpickled (torch's advice to retry with
    # weights_only=False would run whatever code the file holds).
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise CheckpointError(f"{f} is refused as unsafe: it holds pickled Python objects, not only tensors "
                                  "and plain values (was it written by hvc?)") from None
        raise CheckpointError(f"{f} is truncated or corrupt ({_reason(err)})") from None
    except (RuntimeError, EOFError, ValueError) as err:  # a cut-off zip archive / pickle stream
        raise CheckpointError(f"{f} is truncated or corrupt ({_reason(err)})") from None


def weights_hash(sd: dict[str, torch.Tensor]) -> str:
    """Stable SHA-256 (hex, 16 chars) of a state dict's names, dtypes, shapes and values."""
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().to("cpu").contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- RNG state (weights_only safe)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + CUDA) generator states as tensors / plain types."""
    py = random.getstate()
    np_state = np.random.get_state()
    st: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    """Inverse of `rng_state`."""
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = st["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(st["torch"])
    if torch.cuda.is_available() and st["cuda"]:
        torch.cuda.set_rng_state_all(st["cuda"])


# ---------------------------------------------------------------- reading a checkpoint directory


def seen_cases(manifest: dict) -> dict[str, list[str]]:
    """{"patient_ids", "source_sha256"}: sorted, of a manifest's train and val cases (what a model trained on them saw)."""
    seen = [c for c in manifest["cases"] if c.get("split") in ("train", "val")]
    return {"patient_ids": sorted({str(c["patient_id"]) for c in seen if c.get("patient_id")}),
            "source_sha256": sorted({c["source_sha256"] for c in seen if c.get("source_sha256")})}


def make_data_info(dataset_root: str | Path, manifest: dict, xray_stats: dict | None = None) -> dict[str, Any]:
    """data_info.json: what a checkpoint needs from its dataset and cannot get from config.json.

    li_max (the X-ray normalisation), the render size the training DRRs were cast through, the
    splits (which cases the model saw) and the dataset's settings hash; the dataset path is kept
    only so evaluation can find the training split for its baselines (it may be gone). `xray_stats`
    (data/xray_stats.py): the training X-rays' in-body quantiles, which clinical films are matched to.
    `seen`: the patient ids and source hashes of the train and val cases, so a CT can later be told
    apart as held out even when the dataset is gone (inference/real_anatomy.py).
    """
    return {
        "dataset": str(Path(dataset_root).resolve()),
        "xray_scale": {"li_max": float(manifest["xray_scale"]["li_max"])},
        "render_size": int(manifest["render_size"]),
        "settings_hash": manifest.get("settings_hash"),
        "splits": {s: [c["case_id"] for c in manifest["cases"] if c.get("split") == s] for s in ("train", "val", "test")},
        "seen": seen_cases(manifest),
        **({"xray_stats": xray_stats} if xray_stats is not None else {}),
    }


def read_data_info(checkpoint_dir: str | Path) -> dict[str, Any]:
    """CHECKPOINT_DIR/data_info.json, checked to hold li_max and render_size."""
    f = Path(checkpoint_dir) / DATA_INFO_FILE
    if not f.is_file():
        raise CheckpointError(f"{checkpoint_dir} has no {DATA_INFO_FILE}; is it a training checkpoint dir?")
    try:
        info = json.loads(f.read_text())
        float(info["xray_scale"]["li_max"])
        int(info["render_size"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{f} is unreadable or lacks xray_scale.li_max / render_size ({err!r}); "
                              "it was written by another version — retrain or re-create it") from None
    return info


def write_std_scale(checkpoint_dir: str | Path, record: dict[str, Any]) -> Path:
    """Save a validation-fitted std scale (inference/calibration_eval.fit_on_val's record) beside the weights."""
    return write_json_atomic(Path(checkpoint_dir) / STD_SCALE_FILE, record)


def read_std_scale(checkpoint_dir: str | Path) -> dict[str, Any] | None:
    """CHECKPOINT_DIR/std_scale.json, None if there is none; one without a finite scale > 0 is a CheckpointError."""
    f = Path(checkpoint_dir) / STD_SCALE_FILE
    if not f.is_file():
        return None
    try:
        record = json.loads(f.read_text())
        scale = float(record["scale"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{f} is unreadable or has no scale ({err!r}); delete it or re-run "
                              "`hvc evaluate --calibrate`") from None
    if not np.isfinite(scale) or scale <= 0:
        raise CheckpointError(f"{f}: the std scale must be a finite number > 0, got {scale}")
    return record


def read_config(checkpoint_dir: str | Path) -> Config:
    f = Path(checkpoint_dir) / CONFIG_FILE
    if not f.is_file():
        raise CheckpointError(f"{checkpoint_dir} has no {CONFIG_FILE}; is it a training checkpoint dir?")
    try:
        return load_config(f)
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def stage_snapshot(checkpoint_dir: str | Path, cfg: Config, k: int, which: str = "best") -> Path | None:
    """Snapshot of stage k: `which` ("best" or "last"), falling back to the other one."""
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    sd = stage_dir(checkpoint_dir, k, cfg.stages[k - 1].name)
    other = "last" if which == "best" else "best"
    return resolve_snapshot(sd / which) or resolve_snapshot(sd / other)


def complete_stage_weights(stage: torch.nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`weights` plus the stage's own (initial) values of the keys of CascadeStage.OPTIONAL_KEYS they lack.

    A checkpoint written before those parameters existed then loads strictly: every other key must
    still match, and the added ones keep the initialisation that leaves the old outputs unchanged.
    """
    optional = getattr(stage, "OPTIONAL_KEYS", ())
    own = stage.state_dict()
    lacking = {k: own[k] for k in optional if k in own and k not in weights}
    return {**weights, **lacking} if lacking else weights


def load_cascade(checkpoint_dir: str | Path, which: str = "best", ema: bool = True):
    """Rebuild the cascade from CHECKPOINT_DIR/config.json and load every stage that has weights.

    Returns (cfg, cascade in eval mode on CPU, data_info). `cascade.trained_stages` lists the
    1-based stages that were loaded; the others keep their random initialisation.
    """
    from hybrid_vit_cascade.models.cascade import Cascade

    cfg = read_config(checkpoint_dir)
    data_info = read_data_info(checkpoint_dir)
    cascade = Cascade(cfg)
    loaded = []
    for k in range(1, len(cfg.stages) + 1):
        snap = stage_snapshot(checkpoint_dir, cfg, k, which)
        if snap is None:
            continue
        weights = complete_stage_weights(cascade.stages[k - 1], load_weights(snap, ema=ema))
        try:
            cascade.stages[k - 1].load_state_dict(weights, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"weights in {snap} do not match config.json: {err}") from None
        loaded.append(k)
    if not loaded:
        raise CheckpointError(f"{checkpoint_dir} has no trained stage (no stage*/best or stage*/last)")
    cascade.trained_stages = loaded
    return cfg, cascade.eval(), data_info

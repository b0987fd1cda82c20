"""`hvc evaluate --clinical`: the same cases through a simulated clinical film, and the domain gap.

For each evaluated case, every view is rendered from the case's CT cube (the dataset's
`ct_<render_size>`, the cube the clean DRRs were cast through, back to HU) as a clinical CR/DX DICOM
film (`data/clinical.py`, parameters drawn from (seed, case, view)), read back through
`data/radiograph.read_radiograph` like a user's film, and reconstructed with the same seeds as
the clean X-rays. The rows `<method> [clinical film]` sit beside the clean rows; the gap is paired,
case by case: clean PSNR-3D − clinical PSNR-3D (issue target: ≤ GAP_TARGET_DB).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from hybrid_vit_cascade import metrics as M
from hybrid_vit_cascade.data.clinical import VIEW_POSITION, FilmParams, sample_film_params
from hybrid_vit_cascade.data.film_inputs import (FILM_SCENE_FACTOR, case_cube_hu, case_film_scene, placed_ct_hu,
                                                 placed_cube_hu, source_ct)
from hybrid_vit_cascade.data.preprocessing import resize_cube
from hybrid_vit_cascade.data.radiograph_fit import film_placement_mm
from hybrid_vit_cascade.geometry.physics import hu_to_unit
from hybrid_vit_cascade.files import inside
from hybrid_vit_cascade.inference.film_relevel import relevel_to_estimate
from hybrid_vit_cascade.runtime.sampling import FILM_RELEVEL, resolve_sampling
from hybrid_vit_cascade.runtime.seeding import mix_seed

TAG = " [clinical film]"  # suffix of a method's row / per-case key when its input was the clinical film
# … scored against the cube the film's crop shows (the field where the reader centred it), not the dataset's
PLACED = " [clinical film, placed]"
GAP_TARGET_DB = 1.5  # issue 11: the clinical film may cost at most this much PSNR-3D


def case_films(rec, hu: np.ndarray, case_id: str, folder: Path, seed: int, root: Path, keep: bool = False,
               fixed: Optional[dict[str, Any]] = None, views: Optional[list[str]] = None,
               outside=None) -> tuple[Tensor, list[dict[str, Any]], list[FilmParams], list[Path]]:
    """One simulated clinical film per view in `views` (None: every view of the checkpoint), read back like
    a user's: (V, P, P) model input over the checkpoint's V slots (absent views zero), the reader's info
    per film, the film parameters (drawn from (seed, case, view): a view's film is the same in every
    view set; `fixed` holds some, e.g. pitch_mm), the files. Films read together are levelled together
    (a single film by its own body width), as `hvc infer` reads the films it is given. `outside`: the
    patient beyond the model's cube (data/film_inputs.case_film_scene), None = air."""
    from hybrid_vit_cascade.data.film_inputs import film_round_trip
    from hybrid_vit_cascade.data.radiograph_fit import model_field

    views = list(rec.views) if views is None else list(views)
    params = [sample_film_params(mix_seed("clinical-film", seed, case_id, view), VIEW_POSITION[view], rec.cfg.data,
                                 **(fixed or {})) for view in views]
    x, infos, paths = film_round_trip(hu, rec.cfg.data, model_field(rec), views, params, case_id,
                                      inside(folder, root), root=root, keep=keep, outside=outside)
    full = torch.zeros((len(rec.views),) + x.shape[1:])
    full[rec.view_indices(views)] = torch.from_numpy(x)
    return full, infos, params, paths


@dataclasses.dataclass(frozen=True)
class CaseScene:
    """What a case's films are rendered from: the model's HU cube and the patient beyond it (or None)."""

    cube_hu: np.ndarray
    outside: Optional[tuple[np.ndarray, float]]  # data/film_inputs.case_film_scene
    description: str
    fov_mm: float
    window: tuple[float, float]
    ct: Any = None  # the source CT (data/io.CTVolume) when the scene came from it
    centre_mm: Optional[np.ndarray] = None  # the dataset cube's centre in it (manifest body_center_mm)

    def truth_at(self, delta_mm: np.ndarray, res: int) -> Tensor:
        """(1, res, res, res) ground truth in the model range of the field centred Δ mm (RAS+) from the cube:
        the source CT resampled there (film_inputs.placed_ct_hu), else the film's world moved (placed_cube_hu)."""
        if self.ct is not None and self.outside is not None:
            hu = placed_ct_hu(self.ct, self.centre_mm, self.fov_mm, self.cube_hu.shape[0], delta_mm)
        else:
            hu = placed_cube_hu(self.cube_hu, self.fov_mm, self.outside, delta_mm)
        unit = hu_to_unit(torch.from_numpy(hu), self.window).numpy()
        return torch.from_numpy(resize_cube(unit, res).astype(np.float32))[None]


def case_scene(rec, ds, index: int) -> CaseScene:
    """Load case `index`'s film scene once (its source CT is read here), for every film set of the case."""
    ct, centre = source_ct(ds, index), ds.cases[index].get("body_center_mm")
    outside, description = case_film_scene(ds, index, rec.render_size, rec.cfg.data, ct)
    return CaseScene(case_cube_hu(ds, index, rec.render_size, rec.window), outside, description,
                     float(rec.fov_mm), tuple(rec.window), ct, None if centre is None else np.asarray(centre, float))


def score_case(rec, reg, bp, scene: CaseScene, item: dict, x_clean: Tensor, sampling: dict[str, Any], seed: int,
               out_dir: Path, keep: bool, score: Callable[..., dict[str, float]],
               fixed: Optional[dict[str, Any]] = None, views: Optional[list[str]] = None, tag: str = "",
               calibrate: Optional[Callable[..., None]] = None):
    """One case (its `scene`: case_scene) through its clinical films of `views` (None: every view): (per-case metrics keyed
    `<method key><tag>[TAG]`, summary-row metrics keyed (method + TAG + tag, stage, res), the case's
    clinical record). `tag` is the clean rows' view-subset label (" [ap]"), so each film key pairs with
    the clean key it extends. `score` is evaluate's per-case scorer; `calibrate(result, truth, key)` (if
    given) scores the calibration of the cascade's samples against the truth of the field the crops show;
    `sampling` the clean runs' arguments (`baseline_steps`: the regression baseline's), so each pair differs
    only in the input — and in the DRR guidance when the caller left it unset: a film gets the film default
(runtime/sampling.py FILM_GUIDANCE_SCALE), as `hvc infer` gives it. Films are deleted after reading
unless `keep`."""
    from hybrid_vit_cascade.geometry.physics import denormalize_xray, normalize_xray

    cid = item["meta"]["case_id"]
    views = rec.check_views(views)
    x_film, infos, params, paths = case_films(rec, scene.cube_hu, cid, out_dir / "clinical", seed, out_dir, keep,
                                              fixed, views, scene.outside)
    li_film = denormalize_xray(x_film, rec.li_max)  # DRR consistency against the films as the reader made them
    sampling = dict(sampling)
    reg_steps = sampling.pop("baseline_steps", None)
    relevel = sampling.pop("relevel", FILM_RELEVEL)
    if sampling.get("guidance_scale") is None:  # a film is no line integral: the film default, as `hvc infer`
        sampling["guidance_scale"] = resolve_sampling(rec.cfg, display_input=True).guidance_scale
    x_cascade, notes = x_film, []
    if relevel:  # as `hvc infer`: the films re-levelled to a first reconstruction's DRRs (inference/film_relevel.py)
        x_cascade, notes = relevel_to_estimate(rec, x_film, views, seed=seed, case_keys=[cid], **sampling)
    last = rec.reconstruct(x_cascade, seed=seed, case_keys=[cid], views=views, **sampling)[-1]
    stage = f"stage{last.index}_{last.name}"
    runs = [(f"cascade/{stage}", "cascade", stage, last.mean[0], last.res, rec),
            ("back-projection", "back-projection", "", bp(x_film[None], rec.view_indices(views))[0], bp.res, rec)]
    if reg is not None:
        x_reg = normalize_xray(li_film, reg.li_max)
        if relevel:  # the baseline re-levels to its own first reconstruction
            x_reg, _ = relevel_to_estimate(reg, x_reg, views, steps=reg_steps, seed=seed, case_keys=[cid])
        rr = reg.reconstruct(x_reg, steps=reg_steps, seed=seed, case_keys=[cid], views=views)[-1]
        name = "regression" if not reg.is_diffusion else "baseline"
        runs.append((name, name, "", rr.mean[0], rr.res, reg))
    # Where the films' crops put the model's field (RAS+ mm from the dataset's cube): the cube they show.
    placement = film_placement_mm(dict(zip(views, infos)), rec.cfg.data.geometry)
    placed_truth = {res: scene.truth_at(placement, res) for res in {r[4] for r in runs}}
    methods, rows = {}, {}
    if calibrate is not None:
        calibrate(last, placed_truth[last.res], runs[0][0] + tag + PLACED)
    for key, name, stage_name, vol, res, owner in runs:
        methods[key + tag + TAG] = rows[(name + TAG + tag, stage_name, res)] = score(
            owner, vol, item["ct"][res], li_film, views=views)
        methods[key + tag + PLACED] = rows[(name + PLACED + tag, stage_name, res)] = score(
            owner, vol, placed_truth[res], li_film, views=views)
    idx = rec.view_indices(views)
    relevelled = {f"relevelled_{k}": v for k, v in input_psnr(x_cascade[idx], x_clean[idx], views).items()} if notes else {}
    record = {**input_psnr(x_film[idx], x_clean[idx], views), **relevelled, "views": views,
              "films": [p.name for p in paths] if keep else [],
              "guidance_scale": sampling["guidance_scale"],  # the cascade's DRR guidance on these films
              "placement_mm": [round(float(v), 1) for v in placement],  # the field the crops show, RAS+ mm
              "relevel": notes,  # the cascade's films re-levelled to its first reconstruction (empty: not)
              "scene": scene.description,  # what the films were rendered from
              "beyond_cube": scene.outside is not None,  # the patient beyond the model's cube is on them
              "params": [dataclasses.asdict(p) for p in params],
              "reader": infos}
    return methods, rows, record


def input_psnr(film_x: Tensor, clean_x: Tensor, views: list[str]) -> dict[str, float]:
    """PSNR (dB) of the film-derived model input vs the clean normalised X-rays, per view and mean."""
    s = M.drr_psnr(film_x, clean_x)
    out = {f"input_psnr_{v}": float(x) for v, x in zip(views, s)}
    out["input_psnr"] = float(np.mean(s))
    return out


def clinical_gap(per_case: list[dict[str, Any]], keys: list[str], suffix: str = TAG) -> list[dict[str, Any]]:
    """Per method: clean minus clinical-film PSNR-3D (the film rows `key + suffix`), paired over the cases
    that have both."""
    out = []
    for key in keys:
        pairs = [(c["methods"][key]["psnr3d"], c["methods"][key + suffix]["psnr3d"]) for c in per_case
                 if key in c["methods"] and key + suffix in c["methods"]]
        if not pairs:
            continue
        clean, film = (np.array(v, dtype=np.float64) for v in zip(*pairs))
        gap = clean - film
        ok = np.isfinite(gap)
        mean = float(gap[ok].mean()) if ok.any() else float("nan")
        out.append({"method": key, "cases": len(pairs), "psnr3d_clean": M.summarize(clean),
                    "psnr3d_clinical": M.summarize(film), "gap": M.summarize(gap),
                    "gap_median": float(np.median(gap[ok])) if ok.any() else float("nan"),
                    "gap_max": float(gap[ok].max()) if ok.any() else float("nan"),
                    "target_db": GAP_TARGET_DB, "meets_target": bool(ok.any() and mean <= GAP_TARGET_DB)})
    return out


def summary(per_case: list[dict[str, Any]], keys: list[Optional[str]], kept: str) -> dict[str, Any]:
    """metrics.json `clinical`: the paired gaps of `keys` (None skipped), the input PSNR, where the films are."""
    keys = [k for k in keys if k]
    return {"target_db": GAP_TARGET_DB, "vs clean": clinical_gap(per_case, keys),
            "vs clean, placed": clinical_gap(per_case, keys, PLACED),
            "input_psnr": M.summarize([c["clinical"]["input_psnr"] for c in per_case if "clinical" in c]),
            "input_views": next((c["clinical"]["views"] for c in per_case if "clinical" in c), None),
            "input_psnr_other_views": {label: M.summarize([c["clinical_views"][label]["input_psnr"] for c in per_case
                                                           if label in c.get("clinical_views", {})])
                                       for label in sorted({k for c in per_case for k in c.get("clinical_views", {})})},
            "films kept": kept,
            # films rendered with the patient beyond the model's cube (its source CT found) / all cases
            "scene_beyond_cube": [sum(c["clinical"]["beyond_cube"] for c in per_case if "clinical" in c),
                                  sum("clinical" in c for c in per_case)]}


def clinical_section(s: dict[str, Any]) -> list[str]:
    """Markdown lines: the clean vs clinical-film table and what the films were."""
    from hybrid_vit_cascade.inference.report import fmt_stat

    def table(gaps: list[dict[str, Any]]) -> list[str]:
        out = ["| method | cases | PSNR-3D clean (dB) | PSNR-3D clinical (dB) | gap (dB) | median | max | target |",
               "|---|---|---|---|---|---|---|---|"]
        for g in gaps:
            verdict = ("PASS" if g["meets_target"] else "FAIL") + f" (≤ {g['target_db']:.1f} dB)"
            out.append(f"| {g['method']} | {g['cases']} | {fmt_stat(g['psnr3d_clean'], '{:.2f}')} | "
                       f"{fmt_stat(g['psnr3d_clinical'], '{:.2f}')} | {fmt_stat(g['gap'], '{:.2f}')} | "
                       f"{g['gap_median']:+.2f} | {g['gap_max']:+.2f} | {verdict} |")
        return out

    lines = ["## Clean line integrals vs simulated clinical films (paired, per case)", "",
             "Each case's views rendered from its CT as clinical CR/DX DICOM films (larger field, dose noise, "
             "scatter, log/gamma + tone curve, unsharp masking, 12-bit, MONOCHROME1/2, collimation, a lead "
             "marker, burned-in text; data/clinical.py), read back by `read_radiograph` (header geometry, crop "
             "to the model's field, histogram matching) and reconstructed with the same seeds — and, as `hvc infer` does for a film, "
             "with the film default of DRR guidance (runtime/sampling.py FILM_GUIDANCE_SCALE) unless "
             "--guidance-scale was given. Gap = clean − clinical PSNR-3D, "
             f"target ≤ {s['target_db']:.1f} dB.", "",
             "**Scored in the field the films' crops show** (`[clinical film, placed]`): the reader centres each "
             "crop on the body it finds, not on the dataset's cube (which no film marks); the reconstruction is "
             "of that field, and is scored against the truth there (the cube moved by the crops' placement: "
             "data/radiograph_fit.film_placement_mm, data/film_inputs.placed_cube_hu). `hvc infer` writes it "
             "there too (the NIfTI's origin is the films' central ray at the isocentre).", ""]
    lines += table(s.get("vs clean, placed", []))
    lines += ["", "**Scored in the dataset's cube** (`[clinical film]`; the cube centred on the lungs' extent in the "
              "CT): this adds the reader's centring miss to the gap.", ""]
    lines += table(s["vs clean"])
    views = "+".join(s.get("input_views") or [])
    others = "".join(f"; from the {label} film(s) alone {fmt_stat(v, '{:.2f}')} dB"
                     for label, v in s.get("input_psnr_other_views", {}).items())
    lines += ["", f"Model input from the films vs the clean normalised X-rays ({views}): "
                  f"{fmt_stat(s['input_psnr'], '{:.2f}')} dB PSNR{others} (films read together are levelled "
                  f"together: a single film by its own body width). Films: {s['films kept']}."]
    if s.get("scene_beyond_cube"):
        n, m = s["scene_beyond_cube"]
        lines.append(f"The films of {n} of {m} case(s) show the patient above, below, in front of and behind the "
                     f"model's cube (neck, shoulders, abdomen: the source CT over {FILM_SCENE_FACTOR:g} × the cube, "
                     "data/film_inputs.case_film_scene), as a real film does"
                     + ("" if n == m else "; the others air beyond it (source CT not found)") + ".")
    lines.append("")
    return lines

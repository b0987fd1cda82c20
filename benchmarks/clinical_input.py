"""Where the clinical film's model input loses its PSNR: the reader's path taken apart, no reconstruction.

benchmarks/clinical_proxy.py found that the demo cascade needs a model input within ~42 dB PSNR of
the clean normalised X-ray to lose ≤ 1.5 dB PSNR-3D. This script scores, per held-out case and
view, the input the reader makes from a simulated clinical film (data/clinical.py, the film
`hvc evaluate --clinical` draws) and what each of its steps would give if it were perfect:

- `reader`: `read_radiograph` + `radiograph_to_model` per view, before the case's films are moved to
  their body-width level;
- `reader+level`: then `radiograph_fit.patient_levels` over the case's films — the whole reader, as
  `hvc infer` and `hvc evaluate --clinical` run it;
- `centre+pop`: the same film cropped on its central ray (where the clean DRR's cube projects),
  histogram-matched to the training population's in-body quantiles (the reader's intensity step);
- `centre+own`: cropped on the central ray, matched to this case's own clean in-body quantiles with
  the clean X-ray's body mask (a perfect tone-curve estimate; what remains is the chain's
  non-monotone part: scatter, unsharp masking, noise, 12 bits);
- `clean->pop`: the clean X-ray itself matched to the population quantiles (the ceiling of any
  population-quantile matching);
- `li_centre`: the film's noise-free line integrals cropped on the central ray (geometry and
  resampling alone).

    python benchmarks/clinical_input.py --checkpoint demo_out/checkpoints/cascade [--split test]
        [--fix scatter_spr=0 --fix usm_gain=0 ...] [--pitch 0.6]

`--fix` holds film parameters (sample_film_params keywords) to see what each part of the chain costs.
Writes benchmarks/results/clinical_input.json. CPU seconds per case at --pitch 0.6 (each 12 mm model
pixel averages > 300 film pixels; on the demo's 5 test cases --pitch 0.15 moved every mean by ≤ 0.01 dB).

Measured on the demo checkpoints trained at 61b5666 (benchmarks/results/clinical_input.json), 5 test
cases × 2 views, mean input PSNR (dB): reader 22.39, reader+level 23.38, centre+pop 24.75, centre+own
29.88, clean->pop 28.46, li_centre 49.57. On the earlier ones (a05bc78; before the level step): reader
22.1, centre+pop 24.7, centre+own 29.9, clean->pop 28.5, li_centre 49.6; with --fix
scatter_spr=0: 23.5 / 27.4 / 44.9 / 28.5 / 49.6; without unsharp masking and noise (--fix usm_gain=0
--fix dose_ugy=1e4 --fix electronic_ugy=0) every number moves by ≤ 0.05 dB. So geometry and
resampling keep ~50 dB; the reader's centring costs ~2.6 dB, matching to the population's
quantiles instead of the case's own ~5 dB, and scatter (an unknown low-frequency field in the
transmission domain, no monotone LUT undoes it) the rest of the way from ~45 to ~30 dB.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hybrid_vit_cascade import metrics as M  # noqa: E402
from hybrid_vit_cascade.data import clinical as C  # noqa: E402
from hybrid_vit_cascade.data.datasets import CTXrayDataset, load_manifest  # noqa: E402
from hybrid_vit_cascade.data.xray_stats import area_resample, body_mask, match_to_quantiles  # noqa: E402
from hybrid_vit_cascade.geometry.physics import normalize_xray  # noqa: E402
from hybrid_vit_cascade.inference import clinical_eval as CE  # noqa: E402
from hybrid_vit_cascade.inference.pipeline import Reconstructor  # noqa: E402
from hybrid_vit_cascade.data.radiograph import read_radiograph  # noqa: E402
from hybrid_vit_cascade.data.radiograph_fit import model_field, patient_levels, radiograph_to_model  # noqa: E402
from hybrid_vit_cascade.runtime.seeding import mix_seed  # noqa: E402

KINDS = ("reader", "reader+level", "centre+pop", "centre+own", "clean->pop", "li_centre")


def central(img: np.ndarray, spacing: float, n: int, pix: float) -> np.ndarray:
    """The (n, n) field of `pix` mm pixels centred on the image's centre (the central ray), area means."""
    H, W = img.shape
    return area_resample(img, H / 2 - n * pix / 2 / spacing, pix / spacing, W / 2 - n * pix / 2 / spacing,
                         pix / spacing, n)


def case_inputs(rec, field, hu: np.ndarray, clean: np.ndarray, view: str, params, folder: Path) -> dict:
    """Every KINDS input of one film (model range, (n, n))."""
    film = C.simulate_film(hu, rec.cfg.data, params)
    rad = read_radiograph(C.write_film_dicom(folder / "film.dcm", film, "BENCH"))
    n, pix = field.det_pixels, field.pixel_mm
    pop = np.asarray(field.xray_stats["views"][view]["in_body_quantiles"])
    body = body_mask(clean)
    own = np.quantile(clean[body], np.linspace(0, 1, len(pop)))
    x_centre = central(rad.pixels, rad.spacing_mm[0], n, pix)
    g = rec.cfg.data.geometry
    iso_pitch = params.pitch_mm * (g.sid / g.sdd if g.kind == "cone" else 1.0)
    li = central(C.film_line_integrals(hu, rec.cfg.data, params), iso_pitch, n, pix)
    return {"reader": radiograph_to_model(rad, field, view=view)[0],
            "centre+pop": match_to_quantiles(x_centre, body_mask(x_centre), pop),
            "centre+own": match_to_quantiles(x_centre, body, own),
            "clean->pop": match_to_quantiles(clean, body, pop),
            "li_centre": normalize_xray(torch.from_numpy(li), rec.li_max).numpy()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--split", nargs="+", default=["test"])
    ap.add_argument("--pitch", type=float, default=0.6, help="film pitch, mm (clinical: 0.1–0.2)")
    ap.add_argument("--fix", action="append", default=[], help="film parameter held, e.g. scatter_spr=0")
    ap.add_argument("--seed", type=int, default=0, help="films drawn as hvc evaluate --clinical --seed draws them")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "clinical_input.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    fixed = {"pitch_mm": args.pitch}
    for kv in args.fix:
        key, value = kv.split("=", 1)
        fixed[key] = value if key in ("curve", "shutter", "photometric", "modality") else float(value)

    rec = Reconstructor(args.checkpoint)
    field = model_field(rec)
    if field.xray_stats is None:
        raise SystemExit(f"{args.checkpoint}: data_info.json holds no xray_stats (retrain or re-prepare)")
    data = rec.data_info["dataset"]
    li_ds = float(load_manifest(data)["xray_scale"]["li_max"])
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        for split in args.split:
            ds = CTXrayDataset(data, split, [])
            for i in range(len(ds)):
                item = ds[i]
                cid = item["meta"]["case_id"]
                clean = (2 * ((item["xray"].numpy() + 1) / 2 * li_ds / rec.li_max) - 1)  # the model's normalisation
                hu = CE.case_cube_hu(ds, i, rec.render_size, rec.window)
                params, inputs = {}, {}
                for v, view in enumerate(rec.views):
                    params[view] = p = C.sample_film_params(mix_seed("clinical-film", args.seed, cid, view),
                                                            C.VIEW_POSITION[view], rec.cfg.data, **fixed)
                    inputs[view] = case_inputs(rec, field, hu, clean[v], view, p, Path(tmp))
                levelled, _ = patient_levels({view: xs["reader"] for view, xs in inputs.items()}, field)
                for v, view in enumerate(rec.views):
                    p, xs = params[view], {**inputs[view], "reader+level": levelled[view]}
                    row = {"case": cid, "view": view, "curve": p.curve, "scatter_spr": p.scatter_spr}
                    for k in KINDS:
                        x = np.clip(xs[k], -1, 1)[None].astype(np.float32)
                        row[k] = float(M.drr_psnr(x, clean[v:v + 1].astype(np.float32))[0])
                    points.append(row)
                    print(f"{cid} {view:>7}: " + "  ".join(f"{k} {row[k]:5.1f}" for k in KINDS), flush=True)
    summary = {k: float(np.mean([p[k] for p in points])) for k in KINDS}
    print("mean input PSNR (dB): " + "  ".join(f"{k} {v:.2f}" for k, v in summary.items()))
    out = {"checkpoint": args.checkpoint, "dataset": data, "splits": args.split, "fixed": fixed,
           "summary_db": summary, "points": points}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

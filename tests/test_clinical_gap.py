"""Issue 11's target — a simulated clinical film costs ≤ 1.5 dB PSNR-3D — held on tiny synthetic cases.

CI cannot train the demo model, so the target is held two ways:
(a) a proxy: the film → model-input mapping (write DICOM, `read_radiograph`, `radiograph_to_model`)
    must recover the clean normalised X-rays to ≥ INPUT_PSNR_FOR_TARGET dB. The threshold comes from
    benchmarks/clinical_proxy.py on the demo checkpoints (3 held-out phantoms, the cascade with its
    16 guided samples): clean inputs perturbed by white noise, blur, tone, gain, low-frequency fields
    and crop shifts, each reconstructed with the clean run's seed. Every perturbation with an input
    PSNR ≥ 41.6 dB cost ≤ 0.6 dB PSNR-3D (gain ±3 %: +0.30/+0.45 dB; blur σ 0.5 px at 46.3 dB: +0.18);
    white noise at 40.0 dB cost +1.56 dB (max +1.72), at 34.0 dB +4.74 dB; so ≥ 42 dB keeps the
    target. The direct-regression baseline is more tolerant (≤ 1.5 dB from 34.8 dB up).
(b) directly: a tiny model trained for a few seconds reconstructs from the clinical films within
    1.5 dB PSNR-3D of its reconstruction from the clean X-rays, mean over its 8 cases × 2 films (the
    model does use its X-rays: `test_tiny_model_depends_on_its_xrays`).
(a) fails today (strict xfail, so a fix shows up as XPASS): the reader recovers the demo films'
inputs to 23.28 dB (make demo at 04799bb; 22.45 dB at f0b9afa without the body-width level step,
21.9 dB before the registration fix) and the demo cascade, trained on films
(training.film_augment) and sampled without DRR guidance on them, loses 2.85 dB PSNR-3D in the field
the films' crops show (each film re-levelled and reconstructed twice), 5.90 dB in the dataset's cube (the regression baseline 1.41 / 4.63 dB; 8.5 dB
before film training; 2.99 / 5.85 dB and regression 1.46 / 4.70 dB at 50a7550, again at 5f83870); the tiny films here read back at ~26 dB. Where the demo
films lose it (benchmarks/clinical_input.py, 5 test cases × 2 views): the crop's centre is 12.8 mm
(vertical) and 5.1 mm (across) from where the cube projects, mean over 10 cases (the cube is centred
on the lungs' 3D extent, which a film shows only in projection; no 2D rule tried did better),
−2.6 dB; the training population's quantiles instead of the case's own, −5 dB (the clean X-ray
itself matched to them reaches only 28.5 dB); scatter, a low-frequency field no monotone LUT undoes,
takes the rest (perfect geometry and the case's own quantiles: 29.9 dB with scatter, 44.9 without).
(b) passes, narrowly (mean gap 1.41 dB; two cases lose ~3 dB): the barely trained tiny model is far more
tolerant of input error than the demo cascade, so (b) alone does not show the target is met.
What the film chain itself keeps is checked by `test_film_keeps_the_xray_given_the_body` (≥ 40 dB
given the case's own body and intensities; 41.6–48 dB measured: 12-bit steps, the toe clipping the
thinnest tissue to black, and area means of display values instead of line integrals cost the rest,
so even a perfect reader sits near the 42 dB proxy threshold on some films).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _trainkit import tiny_dataset, tiny_dict  # noqa: F401 (fixture)
from hybrid_vit_cascade import metrics as M
from hybrid_vit_cascade.data import clinical as C
from hybrid_vit_cascade.inference import clinical_eval as CE
from hybrid_vit_cascade.runtime.seeding import mix_seed

INPUT_PSNR_FOR_TARGET = 42.0  # dB, benchmarks/clinical_proxy.py (see the module docstring)
CHAIN_PSNR = 40.0  # dB, what an ideal film keeps given the body (see the module docstring)
COARSE = {"pitch_mm": 2.0}  # clinical pitch is 0.1–0.2 mm; 2 mm keeps CI fast (same PSNR at 0.5 mm: ±0.1 dB)
READER_GAP = ("the reader recovers the films' inputs to ~20–34 dB, below the 42 dB that keeps the demo cascade's "
              "loss ≤ 1.5 dB (crop centring, population quantiles vs the case's own, scatter: "
              "benchmarks/clinical_input.py)")


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):  # noqa: F811
    """A 16³ regression model trained 60 steps (~17 s) on the tiny phantoms, and all 8 of its cases."""
    from hybrid_vit_cascade.config import config_from_dict
    from hybrid_vit_cascade.data.datasets import CTXrayDataset
    from hybrid_vit_cascade.inference.pipeline import Reconstructor
    from hybrid_vit_cascade.training.progressive import train_progressive

    ck = tmp_path_factory.mktemp("clin") / "ck"
    d = tiny_dict(tiny_dataset, stages=(16,), objective="regression", num_epochs=20, val_samples=0,
                  log_every=100, save_every_epochs=20)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reproducible weights, and no thread thrashing on a shared CPU
    try:
        train_progressive(config_from_dict(d), ck, device="cpu", log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    splits = [CTXrayDataset(tiny_dataset, s, [16, 32]) for s in ("train", "val")]
    return Reconstructor(ck), _Cases(splits)


class _Cases:
    """The cases of several splits as one indexable list, with `case_cube_hu`'s view of each."""

    def __init__(self, splits):
        self.items = [(ds, i) for ds in splits for i in range(len(ds))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict:
        ds, i = self.items[k]
        return ds[i]

    def cube(self, k: int, rec) -> np.ndarray:
        ds, i = self.items[k]
        return CE.case_cube_hu(ds, i, rec.render_size, rec.window)


FILM_SEEDS = range(2)  # films per case: the gap varies from film to film and case to case, its mean less


def _films(rec, ds, i, folder, seed=0, **fixed):
    """One film per view of case i, every parameter drawn from (seed, case, view) unless fixed."""
    cid = ds[i]["meta"]["case_id"]
    hu = ds.cube(i, rec)
    paths = []
    for view in rec.views:
        p = C.sample_film_params(mix_seed("film", seed, cid, view), C.VIEW_POSITION[view], rec.cfg.data,
                                 **{**COARSE, **fixed})
        film = C.simulate_film(hu, rec.cfg.data, p)
        paths.append(C.write_film_dicom(folder / f"{cid}_{seed}_{view}.dcm", film, cid))
    return paths


def _read(rec, paths) -> torch.Tensor:
    """The films through the reader, as `hvc evaluate --clinical` reads them: (V, P, P) model input."""
    from hybrid_vit_cascade.data.radiograph import read_radiograph
    from hybrid_vit_cascade.data.radiograph_fit import model_field, patient_levels, radiograph_to_model

    field = model_field(rec)
    xs, _ = patient_levels({v: radiograph_to_model(read_radiograph(p), field, view=v)[0]
                            for v, p in zip(rec.views, paths)}, field)
    return torch.stack([torch.as_tensor(xs[v], dtype=torch.float32) for v in rec.views])


def test_film_keeps_the_xray_given_the_body(trained, tmp_path):
    """A noise-, scatter- and USM-free film, decoded by `read_radiograph` (Modality LUT, VOI window,
    MONOCHROME1, collimation) and cut at the central ray, maps back to the clean X-ray with the case's
    own body mask and in-body quantiles: the chain keeps the X-ray; the gap is in estimating them."""
    from hybrid_vit_cascade.data.xray_stats import area_resample, body_mask, match_to_quantiles
    from hybrid_vit_cascade.data.radiograph import read_radiograph
    from hybrid_vit_cascade.data.radiograph_fit import model_field

    rec, ds = trained
    field = model_field(rec)
    n, pix = field.det_pixels, field.pixel_mm
    for i in range(len(ds)):
        clean = ds[i]["xray"].numpy()
        paths = _films(rec, ds, i, tmp_path, usm_gain=0.0, scatter_spr=0.0, dose_ugy=1e4, electronic_ugy=0.0,
                       marker="", text_lines=0)  # no lead letter: one in the field is no part of the X-ray
        for v, path in enumerate(paths):
            rad = read_radiograph(path)
            (sr, sc), (H, W) = rad.spacing_mm, rad.pixels.shape
            x = area_resample(rad.pixels, H / 2 - n * pix / 2 / sr, pix / sr, W / 2 - n * pix / 2 / sc, pix / sc, n)
            body = body_mask(clean[v])
            x = np.clip(match_to_quantiles(x, body, np.quantile(clean[v][body], np.linspace(0, 1, 101))), -1, 1)
            assert M.drr_psnr(x[None], clean[v:v + 1])[0] >= CHAIN_PSNR, (i, rec.views[v])


@pytest.mark.xfail(strict=True, reason=READER_GAP)
def test_film_input_reaches_the_psnr_that_keeps_the_target(trained, tmp_path):
    """(a) The reader's model input from realistic films vs the clean normalised X-rays."""
    rec, ds = trained
    scores = []
    for i in range(len(ds)):
        for seed in FILM_SEEDS:
            x = _read(rec, _films(rec, ds, i, tmp_path, seed))
            scores += M.drr_psnr(x, ds[i]["xray"])
    assert np.mean(scores) >= INPUT_PSNR_FOR_TARGET, scores


def _psnr3d(rec, x: torch.Tensor, item: dict) -> float:
    pred = rec.reconstruct(x, case_keys=[item["meta"]["case_id"]])[-1].mean[0]
    return M.volume_metrics(rec.to_hu(pred[0]), rec.to_hu(item["ct"][16][0]), rec.window)["psnr3d"]


def test_tiny_model_depends_on_its_xrays(trained):
    """The check below has teeth: without X-rays (air everywhere) the tiny model loses > 3 dB."""
    rec, ds = trained
    for i in range(len(ds)):
        item = ds[i]
        assert _psnr3d(rec, item["xray"], item) - _psnr3d(rec, torch.full_like(item["xray"], -1.0), item) > 3.0


@pytest.mark.slow
def test_tiny_model_loses_at_most_1_5_db_on_clinical_films(trained, tmp_path):
    """(b) PSNR-3D from the clean X-rays − from the simulated clinical films, mean over the cases."""
    rec, ds = trained
    gaps = []
    for i in range(len(ds)):
        item = ds[i]
        clean = _psnr3d(rec, item["xray"], item)
        for seed in FILM_SEEDS:
            x_film = _read(rec, _films(rec, ds, i, tmp_path, seed))
            gaps.append(clean - _psnr3d(rec, x_film, item))
    assert np.mean(gaps) <= CE.GAP_TARGET_DB, gaps

"""training.film_augment: simulated clinical films, read back like a user's, as training inputs."""
from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from _trainkit import tiny_cfg, tiny_dataset, tiny_dict  # noqa: F401 (fixture)
from hybrid_vit_cascade.config import ConfigError, GeometryConfig, config_from_dict
from hybrid_vit_cascade.runtime.sampling import FILM_GUIDANCE_SCALE, resolve_sampling
from hybrid_vit_cascade.runtime.seeding import sample_generators
from hybrid_vit_cascade.training.step import StageStepper


def _cache(cfg, root, tmp_path, log=None):
    from hybrid_vit_cascade.data.datasets import CTXrayDataset, load_manifest
    from hybrid_vit_cascade.data.xray_stats import training_xray_stats
    from hybrid_vit_cascade.training.film_cache import build_film_cache

    man = load_manifest(root)
    ds = CTXrayDataset(root, "train", [16])
    cache = build_film_cache(cfg, ds, tmp_path / "film_cache", str(man.get("settings_hash")), int(man["render_size"]),
                             training_xray_stats(root), log or (lambda m: None))
    return cache, ds


def test_film_cache_holds_reader_inputs_and_is_reused(tiny_dataset, tmp_path):  # noqa: F811
    cfg = tiny_cfg(tiny_dataset, stages=(16,), film_augment=0.5, film_variants=2)
    cache, ds = _cache(cfg, tiny_dataset, tmp_path)
    for i in range(len(ds)):
        films = cache.load(ds.cases[i]["case_id"])
        clean = ds[i]["xray"].numpy()
        assert films.shape == (2, *clean.shape) and films.dtype == np.float32
        assert np.isfinite(films).all() and films.min() >= -1 and films.max() <= 1
        assert not np.allclose(films[0], films[1])  # two different films of the same case
        # a film of the case, not of another one: closer to its own clean X-rays than to the next case's
        other = ds[(i + 1) % len(ds)]["xray"].numpy()
        assert np.abs(films - clean).mean() < np.abs(films - other).mean()
        crops = cache.load_crops(ds.cases[i]["case_id"])  # where the reader centred each film's crop
        assert crops.shape == (2, clean.shape[0], 2) and np.isfinite(crops).all()
    said = []
    again, _ = _cache(cfg, tiny_dataset, tmp_path, said.append)
    assert again.root == cache.root and any("reusing" in m for m in said)
    more, _ = _cache(tiny_cfg(tiny_dataset, stages=(16,), film_augment=0.5, film_variants=3), tiny_dataset, tmp_path)
    assert more.root != cache.root  # another film count: another key


def test_no_film_cache_without_film_augment(tiny_dataset, tmp_path):  # noqa: F811
    cache, _ = _cache(tiny_cfg(tiny_dataset, stages=(16,)), tiny_dataset, tmp_path)
    assert cache is None and not (tmp_path / "film_cache").exists()


FOV = 160.0  # mm: 16 voxels of 10 mm at the stepper's stage
GEOM = GeometryConfig(kind="parallel", det_pixels=16, det_spacing=FOV / 16)


def _ctx(p: float, **kw) -> SimpleNamespace:
    cfg = SimpleNamespace(training=SimpleNamespace(film_augment=p), data=SimpleNamespace(geometry=GEOM, fov_mm=FOV))
    return SimpleNamespace(cfg=cfg, view_names=["ap", "lateral"], **kw)


def _stepper(p: float) -> StageStepper:
    return StageStepper(_ctx(p), model=None)


def test_film_inputs_follow_the_probability():
    B, F, V, P = 64, 3, 2, 4
    batch = {"xray": torch.zeros(B, V, P, P),
             "films": torch.arange(1, F + 1, dtype=torch.float32)[None, :, None, None, None].expand(B, F, V, P, P),
             "film_crops_mm": torch.arange(1, F + 1, dtype=torch.float32)[None, :, None, None].expand(B, F, V, 2)}
    gens = lambda: sample_generators(range(B))  # noqa: E731
    assert torch.equal(_stepper(0.0).film_inputs(batch, gens())[0], batch["xray"])
    always, placed, which = _stepper(1.0).film_inputs(batch, gens())
    assert set(always[:, 0, 0, 0].tolist()) == {1.0, 2.0, 3.0}  # every film variant drawn
    assert torch.equal(which + 1.0, always[:, 0, 0, 0])  # and which one each sample got
    # film f's crops sit f mm down and right in both views: its placement is (−f, −f, −f) mm RAS+
    assert torch.allclose(placed, -always[:, 0, 0, :1].expand(B, 3))
    half, placed, which = _stepper(0.5).film_inputs(batch, gens())
    assert torch.equal(which < 0, half[:, 0, 0, 0] == 0)  # −1: its own X-rays
    shown = (half[:, 0, 0, 0] > 0).float().mean().item()
    assert 0.3 < shown < 0.7
    assert torch.equal(placed[half[:, 0, 0, 0] == 0], torch.zeros(int((half[:, 0, 0, 0] == 0).sum()), 3))
    assert torch.equal(half, _stepper(0.5).film_inputs(batch, gens())[0])  # the seeds decide, nothing else
    assert torch.equal(_stepper(1.0).film_inputs(batch, None)[0], batch["xray"])  # validation: no generators


def test_training_with_film_augment_writes_its_films(tiny_dataset, tmp_path):  # noqa: F811
    from hybrid_vit_cascade.training.progressive import train_progressive

    d = tiny_dict(tiny_dataset, stages=(16, 32), film_augment=0.5, film_variants=1, max_steps_per_stage=3,
                  val_samples=0, view_dropout=0.5)
    d["data"]["cache_dir"] = str(tmp_path / "cache")
    train_progressive(config_from_dict(d), tmp_path / "ck", device="cpu", log=lambda m: None)
    (folder,) = (tmp_path / "cache" / "film_cache").iterdir()
    assert json.loads((folder / "complete.json").read_text())["films"] == 1
    assert len(list(folder.glob("*.crops.npy"))) == 6  # the 6 training cases of the tiny dataset …
    assert len(list(folder.glob("*.npy"))) == 12  # … their films and where the reader centred them
    # stage 2 is conditioned on stage 1's samples from each film, per view set: 3 more caches of 6 films each
    conds = [c for c in (tmp_path / "ck" / "cond_cache").iterdir() if (c / "complete.json").is_file()]
    from_films = [c for c in conds if json.loads((c / "complete.json").read_text())["cases"] == 6]
    assert len(conds) == 6 and len(from_films) == 3
    assert all(sorted(p.name for p in c.glob("*.npy"))[0].endswith(".film0.npy") for c in from_films)
    d["training"]["film_conditions"] = False  # the clean samples only, moved to each film's field
    train_progressive(config_from_dict(d), tmp_path / "ck2", device="cpu", log=lambda m: None)
    conds = [c for c in (tmp_path / "ck2" / "cond_cache").iterdir() if (c / "complete.json").is_file()]
    assert len(conds) == 3


def test_film_augment_must_be_a_probability(tiny_dataset):  # noqa: F811
    d = tiny_dict(tiny_dataset, film_augment=1.5)
    with pytest.raises(ConfigError, match="film_augment"):
        config_from_dict(d)


def test_film_variants_must_be_positive(tiny_dataset):  # noqa: F811
    d = tiny_dict(tiny_dataset, film_variants=0)
    with pytest.raises(ConfigError, match="film_variants"):
        config_from_dict(d)


def test_display_inputs_default_to_the_film_guidance(tiny_dataset):  # noqa: F811
    cfg = config_from_dict({**tiny_dict(tiny_dataset), "diffusion": {"sample_steps": 3, "guidance_scale": 1.0}})
    assert resolve_sampling(cfg).guidance_scale == 1.0
    assert resolve_sampling(cfg, display_input=True).guidance_scale == FILM_GUIDANCE_SCALE
    assert resolve_sampling(cfg, guidance_scale=0.5, display_input=True).guidance_scale == 0.5  # explicit wins


@pytest.mark.skipif(sys.platform != "linux", reason="the film pool forks: Linux only")
def test_a_pool_of_film_workers_makes_the_same_films(tiny_dataset, tmp_path, monkeypatch, capsys):  # noqa: F811
    """One training process spreads its cases over forked workers; every film and crop is bit-identical."""
    from hybrid_vit_cascade import threads
    from hybrid_vit_cascade.training import film_cache

    cfg = tiny_cfg(tiny_dataset, stages=(16,), film_augment=0.5, film_variants=1)
    one, ds = _cache(cfg, tiny_dataset, tmp_path / "one")
    monkeypatch.setattr(film_cache, "POOL_MIN_CASES", 2)
    monkeypatch.setattr(threads, "share", lambda jobs: 2)  # two workers even on a 1-CPU runner
    capsys.readouterr()
    pooled, _ = _cache(cfg, tiny_dataset, tmp_path / "pool")
    assert "films (2 processes)" in capsys.readouterr().err  # the pool was used
    assert pooled.complete and len(ds) >= 2
    for c in ds.cases:
        assert np.array_equal(one.load(c["case_id"]), pooled.load(c["case_id"]))
        assert np.array_equal(one.load_crops(c["case_id"]), pooled.load_crops(c["case_id"]))


def test_film_cache_splits_cases_over_ranks(tiny_dataset, tmp_path):  # noqa: F811
    """Two ranks (run one after the other here) each make their half; the last call marks it complete."""
    from hybrid_vit_cascade.data.datasets import CTXrayDataset, load_manifest
    from hybrid_vit_cascade.data.xray_stats import training_xray_stats
    from hybrid_vit_cascade.training.film_cache import build_film_cache

    cfg = tiny_cfg(tiny_dataset, stages=(16,), film_augment=0.5, film_variants=1)
    man, ds = load_manifest(tiny_dataset), CTXrayDataset(tiny_dataset, "train", [16])
    args = (cfg, ds, tmp_path / "fc", str(man.get("settings_hash")), int(man["render_size"]),
            training_xray_stats(tiny_dataset), lambda m: None, False)
    with pytest.raises(RuntimeError, match="is missing cases"):  # rank 0 alone: rank 1's cases are absent
        build_film_cache(*args, rank=0, world=2)
    half = build_film_cache(*args, rank=1, world=2)  # rank 1 makes the rest ...
    assert not half.complete  # ... but only rank 0 declares the cache complete
    done = build_film_cache(*args, rank=0, world=2)
    assert done.complete and len(list(done.root.glob("*.crops.npy"))) == len(ds)


def test_losses_show_the_film_and_keep_the_clean_xray_for_physics(monkeypatch):
    """With film_augment 1 the model is given the film; the physics loss is still given the clean X-rays."""
    from hybrid_vit_cascade.training import step as S

    seen = {}

    def physics(x0, xray, *args):
        seen["physics"] = xray
        return SimpleNamespace(total=torch.tensor(0.0), per_view=[])

    monkeypatch.setattr(S, "stage_model_fn", lambda model, xray, *a, **k: seen.setdefault("model", xray))
    monkeypatch.setattr(S, "physics_loss", physics)
    objective = SimpleNamespace(kind="diffusion", loss=lambda fn, x0, gens: SimpleNamespace(loss=torch.tensor(1.0),
                                                                                         x0_pred=x0))
    ctx = _ctx(1.0, k=1, objective=objective, stage_cfg=SimpleNamespace(use_physics_loss=True, physics_weight=0.1),
               projector=None, spacing_mm=None, hu_window=None, mu_water=None, li_max=None)
    clean, film = torch.zeros(2, 2, 4, 4), torch.ones(2, 1, 2, 4, 4)
    batch = {"xray": clean, "films": film, "x0": torch.zeros(2, 1, 4, 4, 4), "film_crops_mm": torch.zeros(2, 1, 2, 2)}
    StageStepper(ctx, model=None).losses(batch, None, None, train=True, gens_films=sample_generators([0, 1]))
    assert torch.equal(seen["model"], film[:, 0]) and seen["physics"] is clean


def test_a_film_cropped_off_centre_trains_on_the_cube_its_crop_shows(monkeypatch):
    """Target, stage k−1 condition and the physics loss's clean X-rays all move with the film's placement."""
    from hybrid_vit_cascade.geometry.translate import translate_volume, translate_xrays
    from hybrid_vit_cascade.geometry.views import make_view
    from hybrid_vit_cascade.training import step as S

    seen = {}

    def physics(x0, xray, *args):
        seen["physics"] = xray
        return SimpleNamespace(total=torch.tensor(0.0), per_view=[])

    def condition(prev, res, cfg, gens, level):
        seen["prev"] = prev
        return prev, None

    monkeypatch.setattr(S, "stage_model_fn", lambda *a, **k: None)
    monkeypatch.setattr(S, "physics_loss", physics)
    monkeypatch.setattr(S, "make_condition", condition)
    objective = SimpleNamespace(kind="diffusion", loss=lambda fn, x0, gens: seen.setdefault(
        "x0", x0) is not None and SimpleNamespace(loss=torch.tensor(1.0), x0_pred=x0))
    ctx = _ctx(1.0, k=2, objective=objective, resolution=16,
               stage_cfg=SimpleNamespace(use_physics_loss=True, physics_weight=0.1), projector=None, spacing_mm=10.0,
               hu_window=(-1024.0, 1024.0), mu_water=0.02, li_max=100.0)
    g = torch.Generator().manual_seed(0)
    x0, prev, clean = torch.rand(1, 1, 16, 16, 16, generator=g), torch.rand(1, 1, 8, 8, 8, generator=g), torch.rand(1, 2, 16, 16, generator=g)
    # AP crop 20 mm above and 10 mm right-of-image (patient's left) of the film's centre; lateral 20 mm above
    crops = torch.tensor([[[[-20.0, 10.0], [-20.0, 0.0]]]])
    batch = {"xray": clean, "x0": x0, "prev": prev, "films": torch.ones(1, 1, 2, 16, 16), "film_crops_mm": crops}
    StageStepper(ctx, model=None).losses(batch, None, None, train=True, gens_films=sample_generators([0]))
    delta = torch.tensor([[-10.0, 0.0, 20.0]])  # RAS+ mm: 10 mm toward the left, 20 mm superior
    assert torch.allclose(seen["x0"], translate_volume(x0, delta, FOV, fill=-1.0))
    assert torch.allclose(seen["prev"], translate_volume(prev, delta, FOV, fill=-1.0))
    views = [make_view(v, GEOM) for v in ("ap", "lateral")]
    assert torch.allclose(seen["physics"], translate_xrays(clean, delta, views, FOV / 16, fill=-1.0))
    assert not torch.allclose(seen["x0"], x0)
    # with stage k−1's samples from the films cached, a film sample is conditioned on its film's, as it is
    batch["prev_films"] = {"ap+lateral": torch.rand(1, 1, 1, 8, 8, 8, generator=g), "ap": torch.rand(1, 1, 1, 8, 8, 8)}
    StageStepper(ctx, model=None).losses(batch, None, None, train=True, gens_films=sample_generators([0]))
    assert torch.equal(seen["prev"], batch["prev_films"]["ap+lateral"][:, 0])


def test_registration_recovers_a_first_guess_far_off(tiny_dataset, tmp_path, monkeypatch):  # noqa: F811
    """A body anchor 100 mm too high (beyond one search's ±15 % of the field) still ends where a good one does."""
    from hybrid_vit_cascade.data import clinical as C
    from hybrid_vit_cascade.data import radiograph_fit as RF
    from hybrid_vit_cascade.data.datasets import CTXrayDataset, load_manifest
    from hybrid_vit_cascade.data.film_inputs import case_cube_hu
    from hybrid_vit_cascade.data.radiograph import read_radiograph
    from hybrid_vit_cascade.data.xray_stats import training_xray_stats

    cfg = tiny_cfg(tiny_dataset, stages=(16,))
    ds, man = CTXrayDataset(tiny_dataset, "train", [16]), load_manifest(tiny_dataset)
    hu = case_cube_hu(ds, 0, int(man["render_size"]), tuple(cfg.data.hu_window))
    film = C.simulate_film(hu, cfg.data, C.sample_film_params(0, "AP", cfg.data, pitch_mm=2.0, field=(1.6, 1.6)))
    rad = read_radiograph(C.write_film_dicom(tmp_path / "f.dcm", film, "X"))
    field = RF.ModelField(cfg.data.geometry, float(cfg.data.fov_mm), training_xray_stats(tiny_dataset))
    _, good = RF.radiograph_to_model(rad, field, view="ap")
    anchor = RF.body_anchor
    monkeypatch.setattr(RF, "body_anchor", lambda img, body: (lambda r, c, how: (r - 100.0 / rad.spacing_mm[0], c,
                                                                                 how))(*anchor(img, body)))
    _, far = RF.radiograph_to_model(rad, field, view="ap")
    assert abs(far["crop"]["registration_shift_mm"][0]) > RF.SEARCH * field.field_mm  # beyond one search
    assert np.allclose(far["crop"]["centre_offset_mm"], good["crop"]["centre_offset_mm"], atol=field.pixel_mm / 2)



def test_the_film_round_trip_levels_each_film_by_the_other_views_width(tiny_dataset, tmp_path):  # noqa: F811
    """Training films and `evaluate --clinical` go through the same body-width level step as `hvc infer`."""
    import math

    from hybrid_vit_cascade.data import clinical as C
    from hybrid_vit_cascade.data import radiograph_fit as RF
    from hybrid_vit_cascade.data import xray_stats as XS
    from hybrid_vit_cascade.data.datasets import CTXrayDataset, load_manifest
    from hybrid_vit_cascade.data.film_inputs import case_cube_hu, film_round_trip

    cfg = tiny_cfg(tiny_dataset, stages=(16,))
    ds, man = CTXrayDataset(tiny_dataset, "train", [16]), load_manifest(tiny_dataset)
    hu = case_cube_hu(ds, 0, int(man["render_size"]), tuple(cfg.data.hu_window))
    views = list(cfg.data.views)
    params = [C.sample_film_params(1, C.VIEW_POSITION[v], cfg.data, pitch_mm=2.0) for v in views]
    stats = XS.training_xray_stats(tiny_dataset)
    for v in views:
        stats["views"][v].pop("level_fits", None)

    def trip():
        field = RF.ModelField(cfg.data.geometry, float(cfg.data.fov_mm), stats)
        return film_round_trip(hu, cfg.data, field, views, params, "c0", tmp_path)

    plain, _, _ = trip()
    width = XS.body_width(XS.body_mask(plain[1]))
    want = 1.2 * XS.body_level(plain[0], XS.body_mask(plain[0]))  # a fit that asks for 1.2 × the matched level
    stats["views"][views[0]]["level_fits"] = {views[1]: [math.log(want / width), 1.0]}
    x, infos, _ = trip()
    assert XS.body_level(x[0], XS.body_mask(x[0])) == pytest.approx(want, rel=1e-3)
    assert f"level × 1.200 from the {views[1]} film's body width" in infos[0]["intensity"]
    np.testing.assert_array_equal(x[1], plain[1])  # no fits for the second view: as read


@pytest.mark.parametrize("det_pixels, expected_mm", [(32, 2.0), (256, None)])
def test_training_films_are_at_most_half_a_model_pixel(det_pixels, expected_mm):
    from hybrid_vit_cascade.config import GeometryConfig
    from hybrid_vit_cascade.data.radiograph_fit import ModelField
    from hybrid_vit_cascade.training.film_cache import FILM_PITCH_MM, film_pitch_mm

    field = ModelField(GeometryConfig(det_pixels=det_pixels), 360.0)
    # 32 px over ~378 mm: 11.8 mm pixels, the fixed pitch; 256 px: 1.48 mm pixels, half of one
    assert film_pitch_mm(field) == pytest.approx(expected_mm or field.pixel_mm / 2)
    assert film_pitch_mm(field) <= min(FILM_PITCH_MM, field.pixel_mm / 2)


@pytest.mark.parametrize("shutter", ["black", "white"])
def test_a_marked_film_is_read_like_the_same_film_without_marks(tiny_dataset, tmp_path, shutter):  # noqa: F811
    """A lead letter in the exposure and white text over the collimation band leave the crop and levels as they were."""
    import dataclasses

    from hybrid_vit_cascade.data import clinical as C
    from hybrid_vit_cascade.data import radiograph_fit as RF
    from hybrid_vit_cascade.data.datasets import CTXrayDataset, load_manifest
    from hybrid_vit_cascade.data.film_inputs import case_cube_hu
    from hybrid_vit_cascade.data.radiograph import read_radiograph
    from hybrid_vit_cascade.data.xray_stats import training_xray_stats

    cfg = tiny_cfg(tiny_dataset, stages=(16,))
    ds, man = CTXrayDataset(tiny_dataset, "train", [16]), load_manifest(tiny_dataset)
    hu = case_cube_hu(ds, 0, int(man["render_size"]), tuple(cfg.data.hu_window))
    field = RF.ModelField(cfg.data.geometry, float(cfg.data.fov_mm), training_xray_stats(tiny_dataset))
    base = C.sample_film_params(0, "AP", cfg.data, pitch_mm=1.0, field=(1.6, 1.6), shutter=shutter,
                                shutter_frac=(0.06, 0.1, 0.05, 0.1), marker="", text_lines=0, curve="gamma", gamma=0.5,
                                toe=0.3)  # gamma: the air stays well above a black mask
    marked = dataclasses.replace(base, marker="L", marker_mm=30.0, marker_at=(0.12, 0.82), text_lines=3,
                                 text_at=(0.92, 0.55))
    out = []
    for name, p in (("plain", base), ("marked", marked)):
        rad = read_radiograph(C.write_film_dicom(tmp_path / f"{name}.dcm", C.simulate_film(hu, cfg.data, p), "X"))
        out.append(RF.radiograph_to_model(rad, field, view="ap"))
    (x0, i0), (x1, i1) = out
    if shutter == "black":
        assert i1["dark_border_px"] == i0["dark_border_px"]  # the text on the band is band
        assert i1["notes"] == i0["notes"] and any("black border" in n for n in i0["notes"])  # raised to the air both times
    assert np.allclose(i1["crop"]["centre_offset_mm"], i0["crop"]["centre_offset_mm"], atol=field.pixel_mm / 4)
    assert np.abs(x1 - x0).mean() < 0.02


def test_films_see_the_patient_beyond_the_models_cube(tiny_dataset, tmp_path):  # noqa: F811
    """A film integrates everything the beam crosses: the source CT around the cube adds to the cube's integrals."""
    from hybrid_vit_cascade.data import clinical as C
    from hybrid_vit_cascade.data.datasets import CTXrayDataset, load_manifest
    from hybrid_vit_cascade.data.film_inputs import FILM_SCENE_FACTOR, case_cube_hu, case_film_scene

    cfg = tiny_cfg(tiny_dataset, stages=(16,))
    ds, man = CTXrayDataset(tiny_dataset, "train", [16]), load_manifest(tiny_dataset)
    rs = int(man["render_size"])
    outside, scene = case_film_scene(ds, 0, rs, cfg.data)
    assert outside is not None and scene.startswith("source CT")
    hu, edge = outside
    n = hu.shape[0]
    assert edge == pytest.approx(FILM_SCENE_FACTOR * cfg.data.fov_mm) and n == round(rs * FILM_SCENE_FACTOR)
    c = (np.arange(n) - (n - 1) / 2) * edge / n
    inner = np.abs(c) < cfg.data.fov_mm / 2
    assert (hu[np.ix_(inner, inner, inner)] == -1024).all() and (hu > -500).any()  # the cube is air; the rest is not
    assert (hu[~inner] == -1024).all()  # across the patient: the cube's own width (lateral films: arms raised)
    p = C.sample_film_params(0, "LL", cfg.data, pitch_mm=4.0)
    cube = case_cube_hu(ds, 0, rs, tuple(cfg.data.hu_window))
    alone, full = C.film_line_integrals(cube, cfg.data, p), C.film_line_integrals(cube, cfg.data, p, outside)
    assert (full >= alone - 1e-6).all() and (full - alone).max() > 0.1  # integrals add, and something is there
    # a dataset moved without its source CTs: air beyond the cube, said so
    source = ds.cases[0]["source"]
    ds.cases[0] = {**ds.cases[0], "source": str(tmp_path / "gone.nii.gz")}
    assert case_film_scene(ds, 0, rs, cfg.data) == (None, "the model's cube only (source CT not found): air beyond it")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a CT")  # one that cannot be read: the same, naming it
    ds.cases[0] = {**ds.cases[0], "source": str(tmp_path / "bad.nii.gz")}
    outside, scene = case_film_scene(ds, 0, rs, cfg.data)
    assert outside is None and scene.startswith(f"the model's cube only (source CT {tmp_path / 'bad.nii.gz'} unreadable")
    # a cone source close to the patient: the scene stops short of it (its half-edge < 0.95 × sid)
    ds.cases[0] = {**ds.cases[0], "source": source}
    near = cfg.data.model_copy(update={"geometry": cfg.data.geometry.model_copy(update={"sid": 300.0, "sdd": 500.0})})
    (hu, edge), _ = case_film_scene(ds, 0, rs, near)
    assert edge == pytest.approx(1.9 * 300.0) and edge < FILM_SCENE_FACTOR * cfg.data.fov_mm


def test_the_field_a_crop_shows_comes_from_the_cube_and_the_patient_around_it(tiny_dataset):  # noqa: F811
    """placed_cube_hu: the cube itself at Δ = 0; moved, the patient beyond the cube enters as the film saw it."""
    from hybrid_vit_cascade.data.datasets import CTXrayDataset, load_manifest
    from hybrid_vit_cascade.data.film_inputs import case_cube_hu, case_film_scene, placed_cube_hu

    cfg = tiny_cfg(tiny_dataset, stages=(16,))
    ds, man = CTXrayDataset(tiny_dataset, "train", [16]), load_manifest(tiny_dataset)
    rs, fov = int(man["render_size"]), float(cfg.data.fov_mm)
    cube = case_cube_hu(ds, 0, rs, tuple(cfg.data.hu_window))
    outside, _ = case_film_scene(ds, 0, rs, cfg.data)
    np.testing.assert_allclose(placed_cube_hu(cube, fov, None, [0, 0, 0]), cube, atol=1e-3)
    step = fov / rs  # one voxel, mm
    up = placed_cube_hu(cube, fov, None, [0, 0, 2 * step])  # the field 2 voxels superior: cube voxel k+2 at k
    np.testing.assert_allclose(up[:, :, :-2], cube[:, :, 2:], atol=1e-3)
    assert (up[:, :, -2:] == -1024).all()  # beyond the cube and no scene: air, as a cube-only film shows
    # with the scene (aligned to the cube's voxels), the entering slab is the scene's voxels there: the patient
    # beyond the cube as the film saw it; step toward the side where the scene holds the most tissue
    scene, edge = outside
    m, pad = scene.shape[0], (scene.shape[0] - rs) // 2
    assert edge / m == pytest.approx(step)
    sides = {+1: scene[pad:pad + rs, pad:pad + rs, pad + rs:pad + rs + 2], -1: scene[pad:pad + rs, pad:pad + rs, pad - 2:pad]}
    sign = max(sides, key=lambda k: (sides[k] > -500).sum())
    assert (sides[sign] > -500).any()  # something of the patient lies there
    moved = placed_cube_hu(cube, fov, outside, [0, 0, sign * 2 * step])
    inner, slab = (moved[:, :, :-2], moved[:, :, -2:]) if sign > 0 else (moved[:, :, 2:], moved[:, :, :2])
    np.testing.assert_allclose(inner, cube[:, :, 2:] if sign > 0 else cube[:, :, :-2], atol=1e-2)
    np.testing.assert_allclose(slab, sides[sign], atol=1e-2)


def test_the_placed_truth_resamples_the_patient_and_keeps_the_films_width(tiny_dataset):  # noqa: F811
    """placed_ct_hu: the source CT at the moved centre; across, only the cube's width (as the films show it)."""
    from hybrid_vit_cascade.data.datasets import CTXrayDataset, load_manifest
    from hybrid_vit_cascade.data.film_inputs import case_cube_hu, placed_ct_hu, source_ct
    from hybrid_vit_cascade.data.preprocessing import canonicalize

    cfg = tiny_cfg(tiny_dataset, stages=(16,))
    ds, man = CTXrayDataset(tiny_dataset, "train", [16]), load_manifest(tiny_dataset)
    rs, fov = int(man["render_size"]), float(cfg.data.fov_mm)
    ct, centre = source_ct(ds, 0), np.asarray(ds.cases[0]["body_center_mm"], dtype=float)
    cube = case_cube_hu(ds, 0, rs, tuple(cfg.data.hu_window))
    np.testing.assert_allclose(np.clip(placed_ct_hu(ct, centre, fov, rs, [0, 0, 0]), *cfg.data.hu_window), cube, atol=0.5)
    half = fov / rs / 2  # half a voxel toward the patient's right: the last slice is half beyond the films' width
    moved = placed_ct_hu(ct, centre, fov, rs, [half, 0, 0])
    full = canonicalize(ct, fov, rs, centre + [half, 0, 0])
    np.testing.assert_allclose(moved[:-1], full[:-1], atol=1e-3)
    np.testing.assert_allclose(moved[-1], -1024 + (full[-1] + 1024) / 2, atol=1e-3)

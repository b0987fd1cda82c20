"""Config validation: every bad value is an error whose message names the offending field."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from hybrid_vit_cascade.config import ConfigError, StageConfig, config_from_dict, load_config
from hybrid_vit_cascade.metrics import MIN_VOLUME_EDGE, ssim3d, volume_metrics

STAGE = dict(name="s1", volume_size=[16, 16, 16], voxel_dim=32, num_heads=2, patch_size=4)


def error_for(stage_over: dict | None = None, **top) -> str:
    stage = dict(STAGE, **(stage_over or {}))
    with pytest.raises(ConfigError) as info:
        config_from_dict({"stages": [stage], **top}, "cfg.json")
    return str(info.value)


@pytest.mark.parametrize(
    "over, key, words",
    [
        ({"volume_size": [18, 18, 18]}, "stages.0.patch_size", ["volume_size 18", "patch_size 4"]),
        ({"volume_size": [16, 16, 32]}, "stages.0.volume_size", ["cube"]),
        ({"volume_size": [16, 16]}, "stages.0.volume_size", ["three sizes"]),
        ({"voxel_dim": 30, "num_heads": 4}, "stages.0.num_heads", ["voxel_dim 30", "num_heads 4"]),
        ({"num_heads": 0}, "stages.0.num_heads", ["greater than 0"]),
        ({"patch_size": 0}, "stages.0.patch_size", ["greater than 0"]),
        ({"voxl_dim": 32}, "stages.0.voxl_dim", ["unknown key"]),
        ({"voxel_dim": "big"}, "stages.0.voxel_dim", ["integer"]),
        ({"voxel_dim": 32.5}, "stages.0.voxel_dim", ["integer"]),
        ({"use_depth_lifting": "maybe"}, "stages.0.use_depth_lifting", ["boolean"]),
        # Strict types: a quoted number or 1-for-true is a wrong type, not silently coerced.
        ({"voxel_dim": "32"}, "stages.0.voxel_dim", ["integer"]),
        ({"use_physics_loss": 1}, "stages.0.use_physics_loss", ["boolean"]),
        ({"lift_fusion": "max"}, "stages.0.lift_fusion", ["'conv' or 'mean'"]),
        ({"cond_noise_level": 1.5}, "stages.0.cond_noise_level", ["less than or equal to 1"]),
        ({"depth_bins": -1}, "stages.0.depth_bins", ["greater than 0"]),
    ],
)
def test_stage_errors_name_the_field(over, key, words):
    msg = error_for(over)
    assert "cfg.json" in msg
    assert f"{key}:" in msg, msg
    for w in words:
        assert w in msg, msg


def test_nested_unknown_key_and_wrong_type_name_the_path():
    assert "data.geometry.det_pixel: unknown key" in error_for(data={"geometry": {"det_pixel": 16}})
    assert "training.batch_size:" in error_for(training={"batch_size": "four"})
    assert "typo_section: unknown key" in error_for(typo_section={})


def test_stages_must_increase_in_size():
    with pytest.raises(ConfigError, match="stage volume sizes must increase"):
        config_from_dict({"stages": [dict(STAGE, name="a"), dict(STAGE, name="b")]})


def test_assignment_is_validated_too():
    s = StageConfig(**STAGE)
    with pytest.raises(ValueError, match="not divisible by patch_size 3"):
        s.patch_size = 3
    with pytest.raises(ValueError, match="volume_size 18 is not divisible by patch_size 4"):
        s.volume_size = (18, 18, 18)


def test_load_config_reports_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"stages": [dict(STAGE, voxel_dim=30, num_heads=4)]}))
    with pytest.raises(ConfigError, match=r"bad\.json(.|\n)*stages\.0\.num_heads"):
        load_config(path)


def test_new_model_fields_have_defaults_and_roundtrip():
    cfg = config_from_dict({"stages": [STAGE]})
    s = cfg.stages[0]
    assert (s.encoder_downsample, s.prior_grid, s.lift_fusion, s.unpatch_channels) == (1, 16, "conv", 8)
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "diffusion, words",
    [
        ({"min_snr_floor": 6.0}, ["min_snr_floor 6.0", "min_snr_gamma 5.0"]),
        ({"min_snr_floor": 1.0, "min_snr_gamma": None}, ["min_snr_floor needs", "min_snr_gamma"]),
        ({"min_snr_floor": -1.0}, ["diffusion.min_snr_floor", "greater than or equal to 0"]),
        ({"samples": 0}, ["diffusion.samples", "greater than 0"]),
        ({"guidance_scale": -0.5}, ["diffusion.guidance_scale", "greater than or equal to 0"]),
    ],
)
def test_diffusion_weighting_and_sampling_defaults_are_validated(diffusion, words):
    msg = error_for(diffusion=diffusion)
    assert "diffusion" in msg and all(w in msg for w in words), msg


def test_diffusion_sampling_defaults():
    d = config_from_dict({"stages": [STAGE]}).diffusion
    assert (d.min_snr_floor, d.samples, d.guidance_scale) == (0.0, 1, 0.0)  # the plain defaults: min-SNR-γ, 1 sample


# ---------------------------------------------------------------- configs that cannot work are refused at load


def test_shipped_configs_load():
    for path in sorted((Path(__file__).parents[1] / "config").glob("*.json")):
        assert load_config(path).stages, path


STAGE_JSON = json.dumps(STAGE)


@pytest.mark.parametrize(
    "text, where",
    [
        ('{"stages": [%s], "data": {"fov_mm": 300.0, "fov_mm": 360.0}}' % STAGE_JSON, r"data\.fov_mm"),
        ('{"stages": [%s], "training": {}, "training": {"seed": 1}}' % STAGE_JSON, "training"),
        ('{"stages": [{"name": "a", "name": "b", "volume_size": [16, 16, 16], "voxel_dim": 32, "num_heads": 2}]}',
         r"stages\.0\.name"),
    ],
)
def test_duplicate_json_key_is_an_error_naming_it_and_the_file(tmp_path, text, where):
    path = tmp_path / "dup.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"dup\.json: {where}: duplicate key"):
        load_config(path)


@pytest.mark.parametrize(
    "fragment, where, token",
    [
        ('"data": {"fov_mm": Infinity}', r"data\.fov_mm", "Infinity"),
        ('"data": {"split": [0.8, NaN, 0.1]}', r"data\.split\.1", "NaN"),
        ('"training": {"learning_rate": -Infinity}', r"training\.learning_rate", "-Infinity"),
        ('"data": {"mu_water": 1e999}', r"data\.mu_water", "Infinity"),  # overflows to inf in Python's json
    ],
)
def test_non_finite_number_in_a_file_is_an_error_naming_the_key(tmp_path, fragment, where, token):
    path = tmp_path / "inf.json"
    path.write_text('{"stages": [%s], %s}' % (STAGE_JSON, fragment))
    with pytest.raises(ConfigError, match=rf"inf\.json: {where}: {token} is not a finite number"):
        load_config(path)


@pytest.mark.parametrize(
    "over, key",
    [
        ({"data": {"fov_mm": math.inf}}, r"data\.fov_mm"),
        ({"data": {"hu_window": [-1024.0, math.nan]}}, r"data\.hu_window\.1"),
        ({"training": {"grad_clip": math.inf}}, r"training\.grad_clip"),
        ({"stages": [dict(STAGE, mlp_ratio=math.nan)]}, r"stages\.0\.mlp_ratio"),
    ],
)
def test_non_finite_float_in_a_dict_is_an_error_naming_the_key(over, key):
    with pytest.raises(ConfigError, match=rf"{key}: Input should be a finite number"):
        config_from_dict({"stages": [STAGE], **over}, "cfg.json")


@pytest.mark.parametrize(
    "split, words",
    [
        ([0, 0, 0], "train fraction must be > 0"),
        ([-1, 1, 1], "fractions must be ≥ 0"),
        ([0, 1, 1], "train fraction must be > 0"),
        ([0.8, -0.1, 0.3], "fractions must be ≥ 0"),
    ],
)
def test_impossible_split_is_refused(split, words):
    with pytest.raises(ConfigError, match=rf"data\.split: .*{words}"):
        config_from_dict({"stages": [STAGE], "data": {"split": split}}, "cfg.json")


def test_train_only_split_is_fine():
    assert config_from_dict({"stages": [STAGE], "data": {"split": [1, 0, 0]}}).data.split == (1.0, 0.0, 0.0)


def test_stage_below_what_validation_scores_is_refused():
    with pytest.raises(ConfigError, match=rf"stages\.0\.volume_size: .*volume_size 8 is below {MIN_VOLUME_EDGE}"):
        config_from_dict({"stages": [dict(STAGE, volume_size=[8, 8, 8])]}, "cfg.json")


def test_min_volume_edge_is_what_the_metrics_need():
    # The bound config enforces is exactly the metrics' own: a MIN³ stage loads and every volume metric scores it.
    n = MIN_VOLUME_EDGE
    config_from_dict({"stages": [dict(STAGE, volume_size=[n] * 3, patch_size=1)]})
    vol = np.random.default_rng(0).uniform(-1000, 1000, (n, n, n))
    assert set(volume_metrics(vol, vol + 1, (-1024.0, 1476.0))) >= {"ssim3d", "x2ct_ssim_avg"}
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        ssim3d(vol[1:, 1:, 1:], vol[1:, 1:, 1:])


@pytest.mark.parametrize("name", ["../../../escaped", "a/b", ".hidden", "", "-rf"])
def test_stage_name_must_be_one_safe_path_component(name):
    with pytest.raises(ConfigError, match=r"stages\.0\.name: .*not a safe file name"):
        config_from_dict({"stages": [dict(STAGE, name=name)]}, "cfg.json")


@pytest.mark.parametrize(
    "section, over, key, words",
    [
        ("training", {"learning_rate": 1e6}, "training.learning_rate", "less than or equal to 1"),
        ("training", {"learning_rate": 1.0, "weight_decay": 1.0}, "training", "AdamW would zero the weights"),
        ("training", {"max_steps_per_stage": 0}, "training.max_steps_per_stage", "greater than 0"),
        ("diffusion", {"min_snr_gamma": 0.0}, "diffusion.min_snr_gamma", "greater than 0"),
        ("data", {"geometry": {"det_spacing": 0.0}}, "data.geometry.det_spacing", "greater than 0"),
        ("data", {"geometry": {"det_pixels": 100000}}, "data.geometry.det_pixels", "less than or equal to 4096"),
        ("data", {"fov_mm": 360.0, "geometry": {"sid": 150.0, "sdd": 1050.0}}, "data.geometry",
         "source would sit inside the volume"),
    ],
)
def test_settings_that_cannot_train_are_refused(section, over, key, words):
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}: .*{words}"):
        config_from_dict({"stages": [STAGE], section: over}, "cfg.json")


def test_encoder_cannot_downsample_below_one_pixel():
    with pytest.raises(ConfigError, match=r"stages\.0\.encoder_downsample 6 halves the 32-pixel X-ray"):
        config_from_dict({"stages": [dict(STAGE, encoder_downsample=6)], "data": {"geometry": {"det_pixels": 32}}})


def test_limits_keep_working_values():
    cfg = config_from_dict({
        "stages": [dict(STAGE, encoder_downsample=5)],
        "training": {"learning_rate": 1.0, "weight_decay": 0.5},
        "data": {"geometry": {"kind": "parallel", "sid": 150.0, "det_pixels": 32, "det_spacing": 0.5}},
    })
    assert (cfg.training.learning_rate, cfg.data.geometry.sid) == (1.0, 150.0)

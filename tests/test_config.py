"""Config validation: every bad value is an error whose message names the offending field."""
from __future__ import annotations

import json

import pytest

from hybrid_vit_cascade.config import ConfigError, StageConfig, config_from_dict, load_config

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

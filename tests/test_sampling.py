"""runtime/sampling.py: (steps, sampler, samples, guidance, η, spread) resolved from arguments and the config."""
import pytest

from hybrid_vit_cascade.config import config_from_dict
from hybrid_vit_cascade.runtime.sampling import SamplingSettings, resolve_sampling, with_guidance_spread

STAGE = {"name": "s16", "volume_size": [16, 16, 16]}


def cfg(objective="diffusion", **diffusion):
    return config_from_dict({"stages": [STAGE], "training": {"objective": objective}, "diffusion": diffusion})


def test_unset_values_come_from_the_config():
    c = cfg(sample_steps=7, sampler="ddim", samples=3, guidance_scale=0.5, eta=0.2)
    assert resolve_sampling(c) == SamplingSettings(steps=7, sampler="ddim", samples=3, guidance_scale=0.5, eta=0.2)


def test_given_values_win_zero_included():
    c = cfg(sample_steps=7, sampler="ddim", samples=3, guidance_scale=0.5, eta=0.2)
    got = resolve_sampling(c, steps=2, sampler="ddim", samples=1, guidance_scale=0.0, eta=0.0)
    assert got == SamplingSettings(steps=2, sampler="ddim", samples=1, guidance_scale=0.0, eta=0.0)


def test_eta_belongs_to_ddim():
    c = cfg(sampler="ddim", eta=0.3)
    assert resolve_sampling(c, sampler="dpmpp").eta == 0.0  # the config's η is DDIM's; DPM-Solver++ is deterministic
    assert resolve_sampling(cfg(sampler="dpmpp", eta=0.3)).eta == 0.0
    assert resolve_sampling(c).eta == 0.3


def test_regression_checkpoint_defaults_to_one_unguided_sample():
    c = cfg("regression", samples=4, guidance_scale=1.0)
    got = resolve_sampling(c)
    assert (got.samples, got.guidance_scale) == (1, 0.0)  # the diffusion defaults never apply to regression
    assert resolve_sampling(c, samples=2).samples == 2  # explicit K still allowed (all K identical)


def test_grid_and_description():
    s = resolve_sampling(cfg(sample_steps=4))
    ts = s.grid("cosine")
    assert ts.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert s.describe() == "ddim, 4 steps"
    assert resolve_sampling(cfg(eta=0.5), steps=3).describe() == "ddim, 3 steps, η=0.5"


def test_guidance_spread_gives_each_chain_its_scale_around_the_mean():
    s = resolve_sampling(cfg(samples=5, guidance_scale=2.0, guidance_spread=0.5))
    assert s.guidance_spread == 0.5
    assert [s.chain_guidance(i) for i in range(5)] == [1.0, 1.5, 2.0, 2.5, 3.0]  # 2·(1 ± 0.5), evenly
    full = resolve_sampling(cfg(samples=3, guidance_scale=1.0), guidance_spread=1.0)
    assert [full.chain_guidance(i) for i in range(3)] == [0.0, 1.0, 2.0]
    assert resolve_sampling(cfg(samples=1, guidance_scale=1.5, guidance_spread=1.0)).chain_guidance(0) == 1.5
    assert [resolve_sampling(cfg(samples=4, guidance_scale=1.5)).chain_guidance(i) for i in range(4)] == [1.5] * 4


def test_a_spread_flag_overrides_the_config_and_none_keeps_it():
    c = cfg(samples=4, guidance_scale=1.0, guidance_spread=0.25)
    assert with_guidance_spread(c, None) is c
    assert resolve_sampling(with_guidance_spread(c, 0.75)).guidance_spread == 0.75
    assert c.diffusion.guidance_spread == 0.25  # the checkpoint's config itself is left alone
    with pytest.raises(ValueError, match=r"guidance spread must lie in \[0, 1\].*got 1.5"):
        with_guidance_spread(c, 1.5)


@pytest.mark.parametrize(
    "objective, kw, words",
    [
        ("diffusion", {"steps": 0}, "sampler steps must be ≥ 1, got 0"),
        ("diffusion", {"sampler": "euler"}, "unknown sampler 'euler'"),
        ("diffusion", {"samples": 0}, "samples must be ≥ 1, got 0"),
        ("diffusion", {"guidance_scale": -0.5}, "guidance scale must be ≥ 0, got -0.5"),
        ("diffusion", {"eta": -1.0}, "eta must be ≥ 0, got -1.0"),
        ("diffusion", {"guidance_spread": -0.1}, r"guidance spread must lie in \[0, 1\].*got -0.1"),
        ("diffusion", {"sampler": "dpmpp", "eta": 0.5}, "only meaningful for the DDIM sampler"),
        ("regression", {"guidance_scale": 1.0}, "guidance needs a diffusion checkpoint"),
    ],
)
def test_bad_values_named(objective, kw, words):
    with pytest.raises(ValueError, match=words):
        resolve_sampling(cfg(objective), **kw)

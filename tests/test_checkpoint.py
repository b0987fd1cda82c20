"""Checkpoint layout: atomic snapshots, RNG state, hashes, and `load_cascade` round trips."""
from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch

from _trainkit import tiny_cfg, tiny_dataset  # noqa: F401 (fixture)
from hybrid_vit_cascade.runtime.checkpoint import (
    CheckpointError, load_cascade, load_state, load_weights, read_meta, resolve_snapshot, rng_state, save_snapshot,
    set_rng_state, weights_hash,
)


def _sd(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(3, 4, generator=g), "a.bias": torch.randn(3, generator=g), "n": torch.tensor(5)}


def test_snapshot_roundtrip_and_atomic_replace(tmp_path):
    dst = tmp_path / "stage1_x" / "last"
    state = {"step": 3, "rng": rng_state(), "optimizer": {"state": {0: {"exp_avg": torch.ones(2)}}}}
    save_snapshot(dst, _sd(0), _sd(1), state, {"stage": 1, "step": 3})
    assert resolve_snapshot(dst) == dst
    assert all(torch.equal(load_weights(dst, ema=False)[k], _sd(0)[k]) for k in _sd(0))
    assert all(torch.equal(load_weights(dst, ema=True)[k], _sd(1)[k]) for k in _sd(1))
    st = load_state(dst)  # weights_only=True: no pickled code in state.pt
    assert st["step"] == 3 and torch.equal(st["optimizer"]["state"][0]["exp_avg"], torch.ones(2))
    # A failing save (unserialisable state) leaves the previous snapshot intact and no temp dirs behind.
    with pytest.raises(Exception):
        save_snapshot(dst, _sd(2), _sd(2), {"bad": lambda: 0}, {"stage": 1, "step": 4})
    assert read_meta(dst)["step"] == 3
    assert sorted(p.name for p in dst.parent.iterdir()) == ["last"]
    # Overwrite; then simulate a crash between the two renames: only `last.old` exists → it is used.
    save_snapshot(dst, _sd(2), None, None, {"stage": 1, "step": 4})
    assert read_meta(dst)["step"] == 4 and not (dst / "ema.safetensors").exists()
    dst.rename(dst.with_name("last.old"))
    assert resolve_snapshot(dst) == dst.with_name("last.old")
    assert resolve_snapshot(tmp_path / "nothing") is None


def test_rng_state_roundtrip():
    st = rng_state()
    draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.random(), np.random.rand(), torch.rand(3)
    # Through torch.save / weights_only load, as in state.pt.
    buf = __import__("io").BytesIO()
    torch.save(st, buf)
    buf.seek(0)
    set_rng_state(torch.load(buf, weights_only=True))
    again = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    assert again == draws


def test_weights_hash_sees_names_values_dtypes():
    a = _sd(0)
    assert weights_hash(a) == weights_hash({k: v.clone() for k, v in reversed(list(a.items()))})
    b = dict(a, **{"a.bias": a["a.bias"] + 1e-6})
    assert weights_hash(a) != weights_hash(b)
    assert weights_hash(a) != weights_hash({"renamed": a["a.weight"], "a.bias": a["a.bias"], "n": a["n"]})
    assert weights_hash(a) != weights_hash(dict(a, **{"a.weight": a["a.weight"].double()}))


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    from hybrid_vit_cascade.training.progressive import train_progressive

    ck = tmp_path_factory.mktemp("ck")
    cfg = tiny_cfg(tiny_dataset, num_epochs=1, max_steps_per_stage=2, val_samples=0)
    out = train_progressive(cfg, ck, device="cpu", log=lambda m: None)
    return ck, out["cascade"]


def _inputs(cascade, k: int):
    g = torch.Generator().manual_seed(k)
    r = cascade.resolutions[k]
    x = torch.randn(2, 1, r, r, r, generator=g)
    t = torch.tensor([0.3, 0.8])
    xray = torch.rand(2, 2, 32, 32, generator=g) * 2 - 1
    prev = torch.randn(2, 1, cascade.resolutions[k - 1], *(cascade.resolutions[k - 1],) * 2, generator=g) if k else None
    cn = torch.tensor([0.1, 0.1]) if k else None
    return x, t, xray, prev, cn


def test_load_cascade_rebuilds_from_config_alone(trained, tmp_path):
    ck, live = trained
    # Only config.json + data_info.json + stage folders: no dataset, no caches needed.
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "data_info.json"):
        shutil.copy(ck / name, copy / name)
    for d in ck.glob("stage*_*"):
        shutil.copytree(d, copy / d.name)
    cfg, cascade, info = load_cascade(copy, which="best", ema=True)
    assert cascade.trained_stages == [1, 2] and not cascade.training
    assert info["render_size"] == 32 and info["xray_scale"]["li_max"] > 0
    assert set(info["xray_stats"]["views"]) == {"ap", "lateral"}  # what clinical films are matched to
    with torch.no_grad():
        for k in range(2):
            args = _inputs(cascade, k)
            assert torch.equal(cascade.stages[k](*args), live.stages[k](*args))
    # Raw (non-EMA) weights differ from the EMA ones after training.
    _, raw, _ = load_cascade(copy, which="last", ema=False)
    sd_raw, sd_ema = raw.stages[0].state_dict(), cascade.stages[0].state_dict()
    assert any(not torch.equal(sd_raw[k], sd_ema[k]) for k in sd_raw)


def test_load_cascade_errors(trained, tmp_path):
    ck, _ = trained
    with pytest.raises(CheckpointError, match="config.json"):
        load_cascade(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(ck, bad, ignore=shutil.ignore_patterns("cond_cache", "tb"))
    d = json.loads((bad / "config.json").read_text())
    d["stages"][0]["voxel_dim"] = 64
    (bad / "config.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="do not match config.json"):
        load_cascade(bad)
    d["stages"][0]["voxel_dim"] = "wide"
    (bad / "config.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="stages.0.voxel_dim"):
        load_cascade(bad)
    with pytest.raises(ValueError, match="which"):
        load_cascade(ck, which="newest")

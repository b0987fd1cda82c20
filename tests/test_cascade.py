"""Cascade wiring: stage chain shapes, progressive freezing, checkpoint round trip."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from hybrid_vit_cascade.config import config_from_dict
from hybrid_vit_cascade.models.cascade import Cascade

P = 16  # detector pixels

STAGE = dict(
    voxel_dim=32, num_heads=2, vit_depth=2, patch_size=4, lift_channels=4, depth_bins=8,
    encoder_channels=8, refine_channels=8, prior_grid=4, unpatch_channels=4,
)


def tiny_cascade(resolutions, views=("ap", "lateral")) -> Cascade:
    torch.manual_seed(0)
    cfg = config_from_dict(
        {
            "stages": [dict(STAGE, name=f"s{k}", volume_size=[r] * 3) for k, r in enumerate(resolutions)],
            "data": {"views": list(views), "fov_mm": 256.0, "geometry": {"det_pixels": P}},
        }
    )
    return Cascade(cfg)


def open_output_path(module: torch.nn.Module) -> None:
    """Perturb the zero-initialised layers so outputs (and every gradient) are nonzero."""
    with torch.no_grad():
        for p in module.parameters():
            if torch.count_nonzero(p) == 0:
                p.normal_(0, 0.02)


@pytest.mark.parametrize("views", [["ap"], ["ap", "lateral"], ["lateral"]])
@pytest.mark.parametrize("resolutions", [[16, 32], [16, 24, 32]])
def test_chain_shapes(resolutions, views):
    cascade = tiny_cascade(resolutions, views)
    assert cascade.resolutions == resolutions and len(cascade.stages) == len(resolutions)
    B = 2
    xray = torch.rand(B, len(views), P, P) * 2 - 1
    prev = None
    with torch.no_grad():
        for k, res in enumerate(resolutions):
            stage = cascade.stages[k]
            assert stage.resolution == res and stage.has_prev == (k > 0)
            x_t = torch.randn(B, 1, res, res, res)
            cond = torch.full((B,), 0.1) if k else None
            v = stage(x_t, torch.rand(B), xray, prev, cond)
            assert v.shape == (B, 1, res, res, res)
            prev = v


def test_frozen_stage_gets_no_gradient_and_stays_bit_identical():
    cascade = tiny_cascade([16, 32])
    open_output_path(cascade)
    s0, s1 = cascade.stages
    cascade.freeze_except(1)
    cascade.train()
    assert not s0.training and s1.training  # train() keeps frozen stages in eval
    before = {k: v.clone() for k, v in s0.state_dict().items()}
    assert all(p.requires_grad for p in s1.parameters())
    assert not any(p.requires_grad for p in s0.parameters())
    # The optimiser sees every cascade parameter: freezing alone must keep stage 0 fixed.
    opt = torch.optim.AdamW(cascade.parameters(), lr=1e-2, weight_decay=0.1)
    xray = torch.rand(2, 2, P, P) * 2 - 1
    # Run stage 0 with autograd on: its output still must not carry gradients into stage 0.
    prev = s0(torch.randn(2, 1, 16, 16, 16), torch.rand(2), xray)
    v = s1(torch.randn(2, 1, 32, 32, 32), torch.rand(2), xray, prev, torch.zeros(2))
    v.square().mean().backward()
    opt.step()
    assert all(p.grad is None for p in s0.parameters())
    assert any(p.grad is not None and torch.count_nonzero(p.grad) for p in s1.parameters())
    for k, val in s0.state_dict().items():
        assert torch.equal(val, before[k]), k
    cascade.freeze_except(0)
    assert all(p.requires_grad for p in s0.parameters()) and not any(p.requires_grad for p in s1.parameters())


def test_freeze_except_rejects_a_stage_index_out_of_range():
    cascade = tiny_cascade([16, 32])
    with pytest.raises(IndexError, match="stage index 2 out of range for a 2-stage cascade"):
        cascade.freeze_except(2)


def test_state_dict_round_trips_through_safetensors(tmp_path):
    a = tiny_cascade([16, 32])
    open_output_path(a)
    path = tmp_path / "stage.safetensors"
    save_file(a.stages[1].state_dict(), str(path))  # fails on shared / non-contiguous tensors
    b = tiny_cascade([16, 32])
    b.stages[1].load_state_dict(load_file(str(path)))
    args = (torch.randn(1, 1, 32, 32, 32), torch.rand(1), torch.rand(1, 2, P, P), torch.randn(1, 1, 16, 16, 16), None)
    with torch.no_grad():
        torch.testing.assert_close(a.stages[1](*args), b.stages[1](*args), rtol=0, atol=0)

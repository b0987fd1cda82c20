"""Hybrid 3D ViT and cascade stage: AdaLN-Zero init, attention, token layout, gradients, validation."""
from __future__ import annotations

import pytest
import torch

from hybrid_vit_cascade.config import GeometryConfig, StageConfig
from hybrid_vit_cascade.models.denoiser import (
    Attention, Conv3d, DiTBlock, PatchEmbed3D, modulate, sincos_pos_embed_3d, timestep_embedding,
)
from hybrid_vit_cascade.models.stage import CascadeStage

P = 16  # detector pixels
FOV = 256.0  # mm


def tiny_stage(res: int = 16, index: int = 0, views=("ap", "lateral"), **over) -> CascadeStage:
    torch.manual_seed(0)
    cfg = dict(
        name=f"s{index}", volume_size=[res] * 3, voxel_dim=32, num_heads=2, vit_depth=2, patch_size=4,
        lift_channels=4, depth_bins=8, encoder_channels=8, refine_channels=8, prior_grid=4, unpatch_channels=4,
    )
    cfg.update(over)
    return CascadeStage(StageConfig(**cfg), index, list(views), P, GeometryConfig(det_pixels=P), FOV)


def inputs(stage: CascadeStage, B: int = 2, prev_res: int = 16):
    D, V = stage.resolution, len(stage.views)
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(B, 1, D, D, D, generator=g)
    t = torch.rand(B, generator=g)
    xray = torch.rand(B, V, P, P, generator=g) * 2 - 1
    prev = torch.randn(B, 1, prev_res, prev_res, prev_res, generator=g) if stage.has_prev else None
    cond = torch.rand(B, generator=g) * 0.3 if stage.has_prev else None
    return x_t, t, xray, prev, cond


def test_modulate():
    x = torch.randn(2, 5, 3)
    shift, scale = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(modulate(x, shift, scale), x * (1 + scale[:, None]) + shift[:, None])


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_sdpa_attention_matches_the_textbook_formula(heads):
    torch.manual_seed(0)
    attn = Attention(32, heads)
    x = torch.randn(3, 27, 32)
    q, k, v = attn.qkv(x).reshape(3, 27, 3, heads, 32 // heads).permute(2, 0, 3, 1, 4).unbind(0)
    ref = torch.softmax(torch.einsum("bhnd,bhmd->bhnm", q, k) / (32 // heads) ** 0.5, dim=-1) @ v  # (B, h, N, d)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), attn.proj(ref.transpose(1, 2).reshape(3, 27, 32)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("index", [0, 1])
def test_every_adaln_zero_block_is_identity_at_init(index):
    stage = tiny_stage(res=16, index=index)
    den = stage.denoiser
    x = torch.randn(2, den.grid**3, 32)
    c = torch.randn(2, 32)
    assert len(den.blocks) == 2
    for block in den.blocks:
        assert isinstance(block, DiTBlock)
        torch.testing.assert_close(block(x, c), x, rtol=0, atol=0)
    # the final layer and refinement output are zero too, so the untrained stage predicts v = 0
    assert torch.count_nonzero(den.final_layer(x, c)) == 0
    v = stage(*inputs(stage))
    assert torch.count_nonzero(v) == 0


def test_unpatchify_inverts_the_patch_embedding_token_order():
    stage = tiny_stage(res=16)
    den = stage.denoiser
    p, C = den.patch_size, den.unpatch_channels
    # A patch embedding whose output channel (c, i, j, k) copies voxel (i, j, k) of input channel c.
    embed = PatchEmbed3D(C, C * p**3, p)
    with torch.no_grad():
        embed.proj.weight.zero_()
        embed.proj.bias.zero_()
        for ch in range(C):
            for n in range(p**3):
                i, j, k = n // (p * p), (n // p) % p, n % p
                # unpatchify reads each token as (pd, ph, pw, C) with C fastest
                embed.proj.weight[n * C + ch, ch, i, j, k] = 1.0
    x = torch.randn(2, C, 16, 16, 16)
    torch.testing.assert_close(den.unpatchify(embed(x)), x)


def test_channels_last_conv_is_a_layout_not_a_value():
    """denoiser.Conv3d computes channels-last on CPU: the same output and gradients as nn.Conv3d, a contiguous weight."""
    torch.manual_seed(0)
    ours, ref = Conv3d(5, 7, 3, padding=1), torch.nn.Conv3d(5, 7, 3, padding=1)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, 6, 6, 6, requires_grad=True)
    y_ours, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-5, atol=1e-5)
    assert y_ours.is_contiguous(memory_format=torch.channels_last_3d)
    y_ours.square().sum().backward()
    g_ours = (x.grad.clone(), ours.weight.grad)
    x.grad = None
    y_ref.square().sum().backward()
    for a, b in zip(g_ours, (x.grad, ref.weight.grad)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert ours.weight.is_contiguous() and ours.weight.grad.is_contiguous()  # state dicts, optimizer states as before


def test_positional_embedding_is_fixed_and_distinct():
    pe = sincos_pos_embed_3d(32, 4)
    assert pe.shape == (64, 32)
    assert torch.cdist(pe, pe).add(torch.eye(64) * 1e3).min() > 1e-3  # every position distinct
    stage = tiny_stage()
    assert "pos_embed" not in dict(stage.named_parameters())
    assert "denoiser.pos_embed" not in stage.state_dict()  # rebuilt from the config, never stored
    assert sincos_pos_embed_3d(33, 2).shape == (8, 33)  # odd widths pad a zero channel


def test_timestep_embedding_resolves_continuous_time():
    e = timestep_embedding(torch.tensor([0.5, 0.501, 0.5]), 64)
    assert (e[0] - e[1]).abs().max() > 0.1
    torch.testing.assert_close(e[0], e[2])


@pytest.mark.parametrize("lifting", [True, False])
@pytest.mark.parametrize("index", [0, 1])
def test_gradients_reach_every_trainable_parameter(index, lifting):
    stage = tiny_stage(res=16, index=index, use_depth_lifting=lifting)
    assert (stage.lifting is not None) == lifting
    opt = torch.optim.Adam(stage.parameters(), lr=1e-3)
    x_t, t, xray, prev, cond = inputs(stage, prev_res=8)
    target = torch.randn_like(x_t)
    # AdaLN-Zero: at step 0 the gradients of parameters behind zeroed layers are exactly zero, so a
    # few optimiser steps first let every path open up.
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(stage(x_t, t, xray, prev, cond), target).backward()
        opt.step()
    opt.zero_grad()
    torch.nn.functional.mse_loss(stage(x_t, t, xray, prev, cond), target).backward()
    # The missing-view embedding is read only when a view is absent (tests/test_view_subsets.py).
    missing = {id(p) for p in stage.missing_view_parameters()}
    for name, p in stage.named_parameters():
        if id(p) in missing:
            continue
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.count_nonzero(p.grad) > 0, f"{name} has an all-zero gradient"


def test_without_depth_lifting_the_xray_still_conditions_the_output():
    stage = tiny_stage(use_depth_lifting=False)
    with torch.no_grad():  # open the zero-initialised output path
        for p in stage.parameters():
            if torch.count_nonzero(p) == 0:
                p.normal_(0, 0.05)
    x_t, t, xray, _, _ = inputs(stage)
    v, aux = stage(x_t, t, xray, return_aux=True)
    assert v.shape == x_t.shape and aux["depth_probs"] is None and aux["lifted"] is None
    assert not torch.allclose(v, stage(x_t, t, -xray))


def test_return_aux_exposes_depth_distributions():
    stage = tiny_stage(res=16, index=1)
    x_t, t, xray, prev, cond = inputs(stage, prev_res=8)
    v, aux = stage(x_t, t, xray, prev, cond, return_aux=True)
    assert aux["depth_probs"].shape == (2, 2, 8, P // 2, P // 2)  # encoder_downsample = 1
    torch.testing.assert_close(aux["depth_probs"].sum(2), torch.ones(2, 2, P // 2, P // 2))
    assert aux["lifted"].shape == (2, 4, 16, 16, 16)
    assert aux["prev_up"].shape == (2, 1, 16, 16, 16)  # prev upsampled trilinearly to this stage


@pytest.mark.parametrize("fusion, masked", [("conv", False), ("conv", True), ("mean", True)])
def test_grad_checkpointing_gives_the_same_output_and_gradients(fusion, masked):
    # The checkpointed path recomputes per ResBlock half and fuses lifted views share by share.
    plain = tiny_stage(index=1, lift_fusion=fusion)
    ckpt = tiny_stage(index=1, grad_checkpointing=True, lift_fusion=fusion)
    ckpt.load_state_dict(plain.state_dict())
    with torch.no_grad():  # nonzero outputs so the gradients are informative
        for a, b in zip(plain.parameters(), ckpt.parameters()):
            a.add_(torch.randn_like(a) * 0.02)
            b.copy_(a)
    args = inputs(plain, prev_res=8)
    mask = torch.tensor([[True, False], [True, True]]) if masked else None
    outs = []
    for m in (plain, ckpt):
        m.train()
        v = m(*args, view_mask=mask)
        v.square().mean().backward()
        outs.append((v.detach(), [p.grad.clone() for p in m.parameters() if p.grad is not None]))  # not: missing-view
    torch.testing.assert_close(outs[0][0], outs[1][0])
    for g0, g1 in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(g0, g1, rtol=1e-4, atol=1e-6)


def test_stage_rejects_bad_inputs_with_clear_errors():
    s0, s1 = tiny_stage(index=0), tiny_stage(index=1)
    x_t, t, xray, _, _ = inputs(s0)
    with pytest.raises(ValueError, match=r"expected 2 X-ray view\(s\)"):
        s0(x_t, t, xray[:, :1])
    with pytest.raises(ValueError, match=r"xray must be \(2, 2, 16, 16\)"):
        s0(x_t, t, xray[..., :8, :8])
    with pytest.raises(ValueError, match=r"x_t must be \(B, 1, 16, 16, 16\)"):
        s0(x_t[..., :8], t, xray)
    with pytest.raises(ValueError, match=r"t must be \(B,\)"):
        s0(x_t, t[:1], xray)
    with pytest.raises(ValueError, match="first stage takes no previous"):
        s0(x_t, t, xray, prev=x_t)
    with pytest.raises(ValueError, match="needs the previous stage's output"):
        s1(x_t, t, xray)
    with pytest.raises(ValueError, match="prev must be"):
        s1(x_t, t, xray, prev=x_t[:1])
    with pytest.raises(ValueError, match="one or two views"):
        tiny_stage(views=())


def test_scalar_t_and_missing_cond_noise_are_accepted():
    s1 = tiny_stage(index=1)
    x_t, t, xray, prev, _ = inputs(s1, prev_res=8)
    v = s1(x_t, torch.tensor(0.5), xray, prev, None)  # cond_noise None = clean previous stage
    assert v.shape == x_t.shape


def test_sampling_reuses_the_xray_encoding_with_unchanged_outputs():
    """stage_model_fn(reuse_condition=True) encodes the X-rays / prev once per chain; every call's output is equal."""
    from hybrid_vit_cascade.runtime.conditioning import stage_model_fn

    stage = tiny_stage(res=16, index=1).eval()
    with torch.no_grad():
        for p in stage.parameters():  # past the zero-init, so the output depends on every input
            p.add_(0.05 * torch.randn_like(p))
    x_t, t, xray, prev, cond = inputs(stage)
    mask = torch.tensor([[True, False], [True, True]])
    calls = []
    stage.encoder.register_forward_hook(lambda *a: calls.append(1))
    plain = stage_model_fn(stage, xray, prev, cond, view_mask=mask)
    reused = stage_model_fn(stage, xray, prev, cond, view_mask=mask, reuse_condition=True)
    with torch.no_grad():
        for s in (0.0, 0.5, 1.0):  # several sampler steps: other x_t and t each time
            x, tt = x_t + s, (t + s) % 1
            a = plain(x, tt)
            n = len(calls)
            assert torch.equal(reused(x, tt), a)
            assert len(calls) == n + (1 if s == 0.0 else 0)  # encoded on the first call only
    assert not torch.equal(plain(x_t, t), plain(x_t + 1, t))  # the output does depend on x_t

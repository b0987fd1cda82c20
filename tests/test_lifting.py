"""Depth lifting and back-projection agree with the DRR projector's geometry (world orientation)."""
from __future__ import annotations

import pytest
import torch

from hybrid_vit_cascade.config import GeometryConfig
from hybrid_vit_cascade.geometry.physics import hu_to_unit
from hybrid_vit_cascade.geometry.projector import Projector
from hybrid_vit_cascade.models.lifting import (
    PRIOR_UNIFORM_MIX,
    DepthLifting,
    backproject,
    depth_prior_from_volumes,
)

N = 32  # voxels per edge
FOV = 256.0  # mm
SPACING = FOV / N  # mm
P = 16  # detector pixels: coarser than the voxels, so a small blob has one clear peak pixel


def gaussian_blob(centre: tuple[int, int, int], sigma: float = 1.5, peak: float = 0.02) -> torch.Tensor:
    """(1, 1, N, N, N) attenuation (1/mm) with a Gaussian blob at voxel `centre` (RAS+ array indices)."""
    c = torch.arange(N, dtype=torch.float32)
    i, j, k = torch.meshgrid(c, c, c, indexing="ij")
    r2 = (i - centre[0]) ** 2 + (j - centre[1]) ** 2 + (k - centre[2]) ** 2
    return (peak * torch.exp(-r2 / (2 * sigma**2)))[None, None]


def peak_pixel(img: torch.Tensor) -> tuple[int, int]:
    return divmod(int(img.argmax()), img.shape[-1])


@pytest.mark.parametrize("kind", ["cone", "parallel"])
@pytest.mark.parametrize("views", [["ap"], ["lateral"], ["ap", "lateral"]])
@pytest.mark.parametrize("centre", [(22, 9, 13), (8, 20, 24), (25, 25, 6)])
def test_backprojection_reprojects_onto_the_drr_peak(kind, views, centre):
    proj = Projector(GeometryConfig(kind=kind, det_pixels=P), views)
    li = proj(gaussian_blob(centre), SPACING)  # (1, V, P, P)
    xray = 2 * li / li.max() - 1
    uv, depth = proj.voxel_to_detector(N, SPACING)
    uniform = torch.full((len(views), 8, 4, 4), 1 / 8)
    occ = backproject(xray, uniform, uv, depth)  # (1, 1, N, N, N)
    assert occ.shape == (1, 1, N, N, N)
    reproj = proj(occ, SPACING)
    for v in range(len(views)):
        assert peak_pixel(reproj[0, v]) == peak_pixel(li[0, v]), f"view {views[v]}"


@pytest.mark.parametrize("centre", [(22, 9, 13), (8, 20, 24), (25, 25, 6)])
def test_two_view_backprojection_intersects_at_the_blob(centre):
    # AP smears along y, lateral along x: only world-consistent lifting makes them cross at the blob.
    proj = Projector(GeometryConfig(kind="cone", det_pixels=P), ["ap", "lateral"])
    li = proj(gaussian_blob(centre), SPACING)
    uv, depth = proj.voxel_to_detector(N, SPACING)
    occ = backproject(2 * li / li.max() - 1, torch.full((2, 8, 4, 4), 1 / 8), uv, depth, combine="min")
    peak = torch.tensor(torch.unravel_index(occ[0, 0].argmax(), (N, N, N)))
    # a detector pixel spans ~2 voxels here; the crossing is still found to within one voxel
    assert (peak - torch.tensor(centre)).abs().max() <= 1


def test_lifting_module_matches_backprojection_with_identity_features():
    # With features = the intensity image, a uniform depth distribution and mean fusion, the learned
    # lifting is exactly the parameter-free back-projection: same geometry path, unit scale.
    views = ["ap", "lateral"]
    geom = GeometryConfig(kind="cone", det_pixels=P)
    lift = DepthLifting(views, geom, FOV, N, in_channels=1, lift_channels=1, depth_bins=8, prior_grid=4, fusion="mean")
    with torch.no_grad():
        for head in lift.feature_heads:
            head.weight.fill_(1.0)
            head.bias.zero_()
        for head in lift.depth_heads:
            head.weight.zero_()
            head.bias.zero_()
    xray = torch.rand(2, 2, P, P) * 2 - 1
    feats = ((xray + 1) / 2)[:, :, None]  # (B, V, 1, P, P)
    lifted, probs = lift(feats)
    assert lifted.shape == (2, 1, N, N, N)
    assert probs.shape == (2, 2, 8, P, P)
    torch.testing.assert_close(probs.sum(dim=2), torch.ones(2, 2, P, P))
    uv, depth = lift.voxel_geometry("cpu")
    expected = backproject(xray, lift.prior_probs(), uv, depth)
    torch.testing.assert_close(lifted, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "view, slab, near_source",
    [
        ("ap", (slice(None), slice(N // 2, None), slice(None)), True),  # anterior half: AP source side
        ("ap", (slice(None), slice(None, N // 2), slice(None)), False),  # posterior half
        ("lateral", (slice(N // 2, None), slice(None), slice(None)), True),  # right half: lateral source side
        ("lateral", (slice(None, N // 2), slice(None), slice(None)), False),
    ],
)
def test_depth_prior_puts_mass_where_the_training_ct_attenuates(view, slab, near_source):
    proj = Projector(GeometryConfig(kind="cone", det_pixels=P), [view])
    uv, depth = proj.voxel_to_detector(N, SPACING)
    hu = torch.full((N, N, N), -1000.0)
    hu[slab] = 0.0  # water in one half, air elsewhere
    vol = hu_to_unit(hu)[None, None]
    bins = 8
    probs = depth_prior_from_volumes(vol, uv, depth, bins=bins, grid=4)
    assert probs.shape == (1, bins, 4, 4)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 4, 4))
    assert probs.min() >= PRIOR_UNIFORM_MIX / bins - 1e-6
    centre = probs[0, :, 1:3, 1:3].mean(dim=(1, 2))  # central detector cells: rays cross the whole cube
    front, back = centre[: bins // 2].sum(), centre[bins // 2 :].sum()
    assert (front > 0.8) if near_source else (back > 0.8)


def test_init_prior_from_dataset_sets_log_prior():
    lift = DepthLifting(["ap"], GeometryConfig(det_pixels=P), FOV, N, 4, 2, depth_bins=8, prior_grid=4)
    hu = torch.full((N, N, N), -1000.0)
    hu[:, N // 2 :, :] = 0.0
    vols = [hu_to_unit(hu)[None, None], hu_to_unit(hu)[None, None]]
    probs = lift.init_prior_from_dataset(iter(vols))
    torch.testing.assert_close(lift.prior_probs(), probs)
    # a differently sized training CT is resampled to the stage resolution first
    small = hu_to_unit(hu)[None, None, ::2, ::2, ::2]
    torch.testing.assert_close(lift.init_prior_from_dataset(small), probs, atol=0.05, rtol=0)


def test_depth_prior_rejects_bad_volumes():
    proj = Projector(GeometryConfig(det_pixels=P), ["ap"])
    uv, depth = proj.voxel_to_detector(N, SPACING)
    with pytest.raises(ValueError, match=r"\(B, 1, D, D, D\)"):
        depth_prior_from_volumes(torch.zeros(N, N, N), uv, depth, 8, 4)
    with pytest.raises(ValueError, match="at least one"):
        depth_prior_from_volumes([], uv, depth, 8, 4)


def test_backproject_rejects_view_mismatch():
    proj = Projector(GeometryConfig(det_pixels=P), ["ap"])
    uv, depth = proj.voxel_to_detector(N, SPACING)
    with pytest.raises(ValueError, match="views"):
        backproject(torch.zeros(1, 2, P, P), torch.full((2, 8, 4, 4), 1 / 8), uv, depth)

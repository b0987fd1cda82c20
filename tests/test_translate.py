"""geometry/translate.py: the model's field moved over the patient, and where films' crops put it."""
import numpy as np
import pytest
import torch

from hybrid_vit_cascade.config import GeometryConfig
from hybrid_vit_cascade.geometry.projector import Projector
from hybrid_vit_cascade.geometry.translate import crop_placement, translate_volume, translate_xrays
from hybrid_vit_cascade.geometry.views import make_view, resolve_det_spacing

FOV = 160.0  # mm; 16 voxels of 10 mm


def test_translate_volume_by_whole_voxels_is_a_shift_with_air_entering():
    vol = torch.rand(1, 1, 16, 16, 16)
    out = translate_volume(vol, torch.tensor([[10.0, 0.0, -20.0]]), FOV, fill=-1.0)  # +1 voxel in x, −2 in z
    # the cube centred 10 mm to the right (+x) holds old voxel i+1 at i; 20 mm inferior holds old k−2 at k
    assert torch.allclose(out[0, 0, :-1, :, 2:], vol[0, 0, 1:, :, :-2], atol=1e-5)
    assert torch.allclose(out[0, 0, -1], torch.full((16, 16), -1.0))  # beyond the old cube: air
    assert torch.allclose(out[0, 0, :, :, :2], torch.full((16, 16, 2), -1.0))


def test_translate_volume_by_zero_is_the_identity():
    vol = torch.rand(2, 1, 8, 8, 8)
    assert torch.allclose(translate_volume(vol, torch.zeros(2, 3), FOV, fill=-1.0), vol, atol=1e-6)


@pytest.mark.parametrize("view", ["ap", "pa", "lateral"])
def test_translated_xrays_are_the_xrays_of_the_translated_cube(view):
    # parallel beam: moving the cube moves its shadow exactly by its component across the view
    geom = GeometryConfig(kind="parallel", det_pixels=16, det_spacing=FOV / 16)
    proj = Projector(geom, [view])
    mu = torch.zeros(1, 1, 16, 16, 16)
    mu[0, 0, 4:10, 5:12, 3:9] = 0.02  # an off-centre block, mm⁻¹
    delta = torch.tensor([[20.0, -30.0, 10.0]])  # whole pixels on every axis
    moved = proj(translate_volume(mu, delta, FOV, fill=0.0), FOV / 16)
    shifted = translate_xrays(proj(mu, FOV / 16), delta, [make_view(view, geom)], FOV / 16, fill=0.0)
    assert torch.allclose(moved, shifted, atol=1e-5)
    assert moved.abs().sum() > 0


def test_translated_xrays_follow_a_cone_beam_within_its_magnification():
    geom = GeometryConfig(kind="cone", sid=1000.0, sdd=1500.0, det_pixels=16)
    view = make_view("ap", geom)
    pixel_iso = resolve_det_spacing(view, FOV) * view.sid / view.sdd
    proj = Projector(geom, ["ap"])
    mu = torch.zeros(1, 1, 16, 16, 16)
    mu[0, 0, 5:11, 6:10, 5:11] = 0.02
    delta = torch.tensor([[-pixel_iso * 2, 0.0, 0.0]])  # two detector pixels across
    moved = proj(translate_volume(mu, delta, FOV, fill=0.0), FOV / 16)
    shifted = translate_xrays(proj(mu, FOV / 16), delta, [view], pixel_iso, fill=0.0)
    err = (moved - shifted).abs().max() / moved.abs().max()
    assert err < 0.1  # sub-pixel differences from the depth's magnification only
    unmoved = (proj(mu, FOV / 16) - moved).abs().max() / moved.abs().max()
    assert unmoved > 3 * err  # and the shift is real


def test_translate_xrays_rejects_a_view_count_mismatch():
    geom = GeometryConfig(kind="parallel", det_pixels=8, det_spacing=2.0)
    with pytest.raises(ValueError, match="need 2 views"):
        translate_xrays(torch.zeros(1, 2, 8, 8), torch.zeros(1, 3), [make_view("ap", geom)], 2.0, 0.0)


def test_crop_placement_takes_each_axis_from_the_films_that_see_it():
    geom = GeometryConfig(kind="cone", sid=1000.0, sdd=1500.0, det_pixels=16)
    views = [make_view("ap", geom), make_view("lateral", geom)]
    # AP crop 10 mm down and 4 mm right (toward the patient's left); lateral 20 mm down, 6 mm left (anterior)
    crops = torch.tensor([[[10.0, 4.0], [20.0, -6.0]]])
    both = crop_placement(crops, views)[0]
    assert np.allclose(both.numpy(), [-4.0, 6.0, -15.0])  # RAS+: left is −x, anterior +y, down −z (mean)
    ap_only = crop_placement(crops, views, torch.tensor([[True, False]]))[0]
    assert np.allclose(ap_only.numpy(), [-4.0, 0.0, -10.0])  # a single film's depth stays 0

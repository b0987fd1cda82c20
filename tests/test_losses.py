"""v-prediction loss (min-SNR weighting) and the view-correct DRR physics loss."""
import pytest
import torch

from hybrid_vit_cascade.config import GeometryConfig
from hybrid_vit_cascade.diffusion.losses import physics_loss, predicted_xray, v_loss
from hybrid_vit_cascade.diffusion.schedule import log_snr, q_sample, v_target, x0_from_v
from hybrid_vit_cascade.geometry.physics import hu_to_mu, hu_to_unit, normalize_xray
from hybrid_vit_cascade.geometry.projector import Projector

N, P = 16, 16  # voxels per edge, detector pixels
SPACING = 360.0 / N  # mm
WINDOW = (-1024.0, 1476.0)  # HU
MU_WATER = 0.0193  # 1/mm
LI_MAX = 12.0


# ---------------------------------------------------------------- v loss


def test_v_loss_is_mse_and_reductions():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 1, 4, 4, 4, generator=g), torch.randn(3, 1, 4, 4, 4, generator=g)
    t = torch.rand(3, generator=g)
    torch.testing.assert_close(v_loss(a, b, t), torch.nn.functional.mse_loss(a, b))
    per = v_loss(a, b, t, reduction="none")
    assert per.shape == (3,)
    torch.testing.assert_close(per, (a - b).pow(2).mean(dim=(1, 2, 3, 4)))
    torch.testing.assert_close(v_loss(a, b, t, reduction="sum"), per.sum())


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("floor", [0.0, 1.0])
def test_min_snr_v_loss_equals_clamped_snr_x0_loss(schedule, floor):
    # Hang et al. 2023 weight the x0 loss by min(SNR, γ); the v loss with min_snr_weight is the same
    # thing, and with a floor the x0 weight is clamp(SNR, floor, γ).
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(5, 1, 4, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(5, 1, 4, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0.05, 0.3, 0.6, 0.95, 0.99], dtype=torch.float64)
    x_t = q_sample(x0, eps, t, schedule)
    v = v_target(x0, eps, t, schedule)
    v_pred = v + 0.1 * torch.randn(v.shape, generator=g, dtype=torch.float64)
    gamma = 5.0
    got = v_loss(v_pred, v, t, min_snr_gamma=gamma, reduction="none", schedule=schedule, min_snr_floor=floor)
    x0_err = (x0_from_v(x_t, v_pred, t, schedule) - x0).pow(2).mean(dim=(1, 2, 3, 4))
    snr = log_snr(t, schedule).exp()
    torch.testing.assert_close(got.double(), snr.clamp(floor, gamma) * x0_err)


def test_v_loss_bad_inputs():
    x = torch.zeros(2, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="same shape"):
        v_loss(x, torch.zeros(2, 1, 4, 4, 3), torch.rand(2))
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        v_loss(x, x, torch.rand(3))
    with pytest.raises(ValueError, match="reduction"):
        v_loss(x, x, torch.rand(2), reduction="max")


# ---------------------------------------------------------------- physics loss


def _phantom(shift=0):
    """An asymmetric HU cube (so AP and lateral projections differ), optionally shifted along x (R)."""
    hu = torch.full((1, 1, N, N, N), -1000.0)  # air
    hu[..., 3:13, 4:12, 2:14] = 0.0  # water body
    hu[..., 4:7, 5:9, 4:12] = 800.0  # bone-like rod on the patient's left-posterior side
    hu[..., 9:12, 8:11, 6:9] = -500.0  # lung-like pocket
    return torch.roll(hu, shifts=shift, dims=2)


@pytest.fixture(scope="module")
def projector():
    return Projector(GeometryConfig(kind="cone", det_pixels=P), ["ap", "lateral"])


def _kw(projector):
    return dict(projector=projector, spacing_mm=SPACING, hu_window=WINDOW, mu_water=MU_WATER, li_max=LI_MAX)


def test_physics_loss_zero_for_ground_truth(projector):
    hu = _phantom()
    li = projector(hu_to_mu(hu, MU_WATER), SPACING)  # (1, 2, P, P) as data preparation renders it
    xray = normalize_xray(li, LI_MAX)
    x0 = hu_to_unit(hu, WINDOW)
    out = physics_loss(x0, xray, **_kw(projector))
    assert out.per_view.shape == (2,)
    assert out.total.item() < 1e-10 and out.per_view.abs().max().item() < 1e-10
    torch.testing.assert_close(predicted_xray(x0, **_kw(projector)), xray, atol=1e-5, rtol=0)


def test_physics_loss_positive_for_shifted_volume_and_has_gradients(projector):
    xray = normalize_xray(projector(hu_to_mu(_phantom(), MU_WATER), SPACING), LI_MAX)
    x0 = hu_to_unit(_phantom(shift=2), WINDOW).requires_grad_(True)
    out = physics_loss(x0, xray, **_kw(projector))
    # A shift along x (patient R–L) moves the AP image sideways but only slightly magnifies the lateral.
    assert out.per_view[0] > 10 * out.per_view[1] > 0
    torch.testing.assert_close(out.total, out.per_view.mean())
    out.total.backward()
    assert x0.grad is not None and torch.isfinite(x0.grad).all() and x0.grad.abs().sum() > 0


def test_physics_loss_is_view_correct(projector):
    # The lateral prediction must be compared with the lateral X-ray: corrupting only the lateral
    # target leaves the AP term at zero, and swapping the views is penalised.
    hu = _phantom()
    xray = normalize_xray(projector(hu_to_mu(hu, MU_WATER), SPACING), LI_MAX)
    x0 = hu_to_unit(hu, WINDOW)
    bad_lat = xray.clone()
    bad_lat[:, 1] = bad_lat[:, 1].flip(-1)
    out = physics_loss(x0, bad_lat, **_kw(projector))
    assert out.per_view[0].item() < 1e-10 and out.per_view[1].item() > 1e-3
    swapped = physics_loss(x0, xray.flip(1), **_kw(projector))
    assert swapped.per_view.min().item() > 1e-3


def test_physics_loss_averages_over_samples_and_pixels_per_view(projector):
    hu = torch.cat([_phantom(), _phantom(shift=3)])  # (2, 1, N, N, N)
    xray = normalize_xray(projector(hu_to_mu(_phantom(), MU_WATER), SPACING), LI_MAX).expand(2, -1, -1, -1)
    x0 = hu_to_unit(hu, WINDOW)
    out = physics_loss(x0, xray, **_kw(projector))
    per = (predicted_xray(x0, **_kw(projector)) - xray).pow(2).mean(dim=(2, 3))  # (B, V)
    torch.testing.assert_close(out.per_view, per.mean(0))
    torch.testing.assert_close(out.total, per.mean())


def test_physics_loss_bad_inputs(projector):
    x0 = torch.zeros(1, 1, N, N, N)
    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
        physics_loss(x0[:, 0], torch.zeros(1, 2, P, P), **_kw(projector))
    with pytest.raises(ValueError, match="views"):
        physics_loss(x0, torch.zeros(1, 3, P, P), **_kw(projector))

"""Intensity physics: HU ↔ model range, HU → μ, line integral ↔ X-ray range."""
import pytest
import torch

from hybrid_vit_cascade.geometry.physics import (
    denormalize_xray,
    hu_to_mu,
    hu_to_unit,
    mu_to_hu,
    normalize_xray,
    unit_to_hu,
    unit_to_mu,
)

WINDOW = (-1024.0, 1476.0)


def test_hu_unit_round_trip_inside_window():
    hu = torch.linspace(WINDOW[0], WINDOW[1], 101, dtype=torch.float64)
    x = hu_to_unit(hu, WINDOW)
    assert x.min().item() == pytest.approx(-1.0) and x.max().item() == pytest.approx(1.0)
    torch.testing.assert_close(unit_to_hu(x, WINDOW), hu)


def test_hu_to_unit_clips_outside_window():
    x = hu_to_unit(torch.tensor([-3000.0, 5000.0]), WINDOW)
    torch.testing.assert_close(x, torch.tensor([-1.0, 1.0]))


def test_hu_to_unit_known_values():
    # water (0 HU) sits at 2 * 1024 / 2500 - 1 in the default window
    x = hu_to_unit(torch.tensor([0.0]), WINDOW)
    assert x.item() == pytest.approx(2 * 1024 / 2500 - 1)


def test_hu_to_mu_values_and_clip():
    mu = hu_to_mu(torch.tensor([-2000.0, -1000.0, 0.0, 1000.0]), mu_water=0.02)
    torch.testing.assert_close(mu, torch.tensor([0.0, 0.0, 0.02, 0.04]))


def test_mu_hu_round_trip_and_unit_to_mu():
    hu = torch.tensor([-1000.0, -500.0, 0.0, 1200.0], dtype=torch.float64)
    torch.testing.assert_close(mu_to_hu(hu_to_mu(hu, 0.0193), 0.0193), hu)
    x = hu_to_unit(hu, WINDOW)
    torch.testing.assert_close(unit_to_mu(x, WINDOW, 0.0193), hu_to_mu(hu, 0.0193))


def test_hu_to_mu_is_differentiable():
    hu = torch.tensor([-500.0, 100.0], requires_grad=True)
    hu_to_mu(hu, 0.02).sum().backward()
    torch.testing.assert_close(hu.grad, torch.full((2,), 0.02 / 1000))


def test_xray_normalisation_round_trip():
    li = torch.rand(2, 2, 8, 8, dtype=torch.float64) * 7.0
    x = normalize_xray(li, li_max=7.0)
    assert x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(denormalize_xray(x, 7.0), li)
    assert normalize_xray(torch.tensor(0.0), 5.0).item() == -1.0
    assert normalize_xray(torch.tensor(5.0), 5.0).item() == 1.0


@pytest.mark.parametrize(
    "call",
    [
        lambda: hu_to_unit(torch.zeros(1), (100.0, 100.0)),
        lambda: unit_to_hu(torch.zeros(1), (200.0, 100.0)),
        lambda: hu_to_mu(torch.zeros(1), 0.0),
        lambda: normalize_xray(torch.zeros(1), 0.0),
        lambda: denormalize_xray(torch.zeros(1), -1.0),
    ],
)
def test_bad_parameters_raise(call):
    with pytest.raises(ValueError):
        call()

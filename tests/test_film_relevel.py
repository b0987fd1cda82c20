"""inference/film_relevel.py: a film's tone moved onto a first reconstruction's DRRs, its detail kept."""
from types import SimpleNamespace

import numpy as np
import torch

from hybrid_vit_cascade.data.xray_stats import body_mask
from hybrid_vit_cascade.inference.film_relevel import relevel_to_estimate


def _chest(seed: int, P: int = 32) -> np.ndarray:
    """A normalised X-ray: air (−1) around an elliptical body with smooth structure inside."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[:P, :P] / (P - 1) * 2 - 1
    body = (r / 0.8) ** 2 + (c / 0.6) ** 2 < 1
    inner = 0.2 + 0.3 * np.cos(3 * r + rng.uniform(0, 3)) * np.sin(2 * c) + 0.05 * rng.standard_normal((P, P))
    return np.where(body, inner, -1.0)


class _Rec:
    """The Reconstructor's surface relevel_to_estimate uses; its first reconstruction's DRRs are `drr`."""

    views = ["ap", "lateral"]

    def __init__(self, drr: np.ndarray):
        self.drr, self.calls = torch.from_numpy(drr).float(), []

    def check_views(self, views):
        return list(self.views) if views is None else [v for v in self.views if v in views]

    def view_indices(self, views):
        return [i for i, v in enumerate(self.views) if v in self.check_views(views)]

    def reconstruct(self, x, views=None, **kw):
        self.calls.append((x.clone(), views, kw))
        return [SimpleNamespace(mean=torch.zeros(x.shape[0], 1, 4, 4, 4))]

    def project(self, mean):
        return self.drr[None]


def test_the_film_takes_the_estimates_in_body_tone_and_keeps_its_order():
    film = np.stack([_chest(0), _chest(1)])
    drr = np.stack([_chest(2), _chest(3)]) * 0.7 + 0.1  # the estimate's own levels
    rec = _Rec(drr)
    out, notes = relevel_to_estimate(rec, torch.from_numpy(film).float(), None, seed=3, samples=16)
    assert rec.calls[0][2] == {"seed": 3, "samples": 4} and len(notes) == 2  # a first pass of at most 4 chains
    out = out.numpy()
    for v in range(2):
        mask = body_mask(film[v])
        q = np.linspace(0, 1, 11)
        np.testing.assert_allclose(np.quantile(out[v][mask], q), np.quantile(drr[v][mask], q), atol=0.02)
        order = np.argsort(film[v][mask], kind="stable")
        assert (np.diff(out[v][mask][order]) >= -1e-9).all()  # a monotone map: the film's detail is kept
        assert (out[v][~mask] <= out[v][mask].min() + 1e-6).all()  # air stays below the body


def test_a_single_film_is_relevelled_alone():
    film = np.stack([_chest(0), np.full((32, 32), -1.0)])  # the lateral slot is empty
    rec = _Rec(np.stack([_chest(2) * 0.5, _chest(3)]))
    out, notes = relevel_to_estimate(rec, torch.from_numpy(film).float(), ["ap"])
    assert rec.calls[0][1] == ["ap"] and len(notes) == 1 and notes[0].startswith("ap:")
    assert torch.equal(out[1], torch.from_numpy(film[1]).float())  # the absent view is not touched
    assert not torch.allclose(out[0], torch.from_numpy(film[0]).float())


def test_a_flat_estimate_or_a_flat_film_is_left_as_read():
    film = np.stack([_chest(0), np.where(_chest(1) > -1, 0.3, -1.0)])  # the lateral's body is one value
    drr = np.stack([np.where(_chest(2) > -1, 0.2, -1.0), _chest(3)])  # the AP estimate is flat in the body
    out, notes = relevel_to_estimate(_Rec(drr), torch.from_numpy(film).float(), None)
    assert torch.equal(out, torch.from_numpy(film).float())
    assert "flat in the body" in notes[0] and "constant" in notes[1]

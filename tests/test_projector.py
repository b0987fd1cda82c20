"""Projector: analytic line integrals, image orientation, gradients, batching, voxel→detector map."""
import pytest
import torch

from hybrid_vit_cascade.config import GeometryConfig
from hybrid_vit_cascade.geometry.projector import Projector
from hybrid_vit_cascade.geometry.views import DET_MARGIN, make_view, resolve_det_spacing

VIEWS = ["ap", "pa", "lateral"]


def _geom(kind: str, P: int = 24, det_spacing=None) -> GeometryConfig:
    # a short source distance makes the cone strongly divergent, so cone errors would show
    return GeometryConfig(kind=kind, sid=200.0, sdd=300.0, det_pixels=P, det_spacing=det_spacing)


def _centres(n: int, spacing: float) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * spacing  # voxel centres, mm


def _unit_rays(view, det_spacing):
    origin, ray = view.rays(det_spacing)  # (P, P, 3)
    return origin, ray / ray.norm(dim=-1, keepdim=True)


def _cube_chord(origin, dirn, half):
    """Exact chord length (mm) of each ray through the cube [-half, half]³ (slab method)."""
    with torch.no_grad():
        inv = 1.0 / torch.where(dirn.abs() < 1e-15, torch.full_like(dirn, 1e-15), dirn)
        t1, t2 = (-half - origin) * inv, (half - origin) * inv
        t_in = torch.minimum(t1, t2).amax(-1)
        t_out = torch.maximum(t1, t2).amin(-1)
    return (t_out - t_in).clamp(min=0)


def _sphere_chord(origin, dirn, centre, radius):
    """Exact chord length (mm) of each (unit-direction) ray through a sphere."""
    w = origin - centre
    along = (w * dirn).sum(-1)
    dist2 = (w * w).sum(-1) - along**2
    return 2 * (radius**2 - dist2).clamp(min=0).sqrt()


def _sphere_volume(n, spacing, centre, radius, sub=4):
    """Partial-volume voxelisation (sub³ samples per voxel) of a sphere, float64 (n, n, n) fractions."""
    off = (torch.arange(sub, dtype=torch.float64) + 0.5) / sub - 0.5
    fine = (_centres(n, spacing)[:, None] + off[None, :] * spacing).reshape(-1)  # (n*sub,)
    x, y, z = fine[:, None, None] - centre[0], fine[None, :, None] - centre[1], fine[None, None, :] - centre[2]
    inside = ((x**2 + y**2 + z**2) <= radius**2).double()
    return inside.reshape(n, sub, n, sub, n, sub).mean(dim=(1, 3, 5))


@pytest.mark.parametrize("kind", ["parallel", "cone"])
@pytest.mark.parametrize("view", VIEWS)
def test_uniform_cube_chord_lengths(kind, view):
    n, spacing, mu = 16, 2.0, 0.02
    proj = Projector(_geom(kind, det_spacing=3.0), [view])  # detector wider than the cube's shadow
    li = proj(torch.full((1, 1, n, n, n), mu, dtype=torch.float64), spacing)[0, 0]  # (P, P)
    half = n * spacing / 2
    v = proj.views[0]
    origin, dirn = _unit_rays(v, proj.det_spacing(2 * half))
    exact = _cube_chord(origin, dirn, half) * mu
    # Rays that cross both principal faces at least one voxel inside the side faces see only the
    # interior of the bilinear interpolant, where Joseph's sum is exact.
    a = v.principal_axis
    ok = torch.ones_like(exact, dtype=torch.bool)
    for face in (-half, half):
        t = (face - origin[..., a]) / dirn[..., a]
        p = origin + t[..., None] * dirn
        side = [i for i in range(3) if i != a]
        ok &= (p[..., side].abs() <= half - spacing + 1e-9).all(-1)
    assert ok.sum() >= 16, "test geometry should leave interior pixels"
    torch.testing.assert_close(li[ok], exact[ok], rtol=1e-9, atol=1e-12)
    # Rays passing more than half a voxel outside the cube miss the interpolant's support entirely
    # (bilinear with zero padding ramps to 0 half a voxel beyond the faces).
    outside = _cube_chord(origin, dirn, half + spacing / 2 + 1e-6) == 0
    assert outside.sum() > 0 and li[outside].abs().max() == 0


@pytest.mark.parametrize("kind", ["parallel", "cone"])
@pytest.mark.parametrize("view", VIEWS)
def test_off_centre_sphere_chord_lengths(kind, view):
    # Error budget: the partial-volume sphere (12 voxels radius) differs from the true sphere by
    # voxelisation, ~0.3 % on central chords; a geometry error (wrong magnification, offset,
    # flipped axis) would move the silhouette of this off-centre sphere and fail by far more.
    n, spacing, mu, radius = 32, 1.0, 0.02, 12.0
    centre = torch.tensor([2.5, -2.0, 1.5], dtype=torch.float64)  # mm, RAS+
    vol = _sphere_volume(n, spacing, centre, radius) * mu
    proj = Projector(_geom(kind, P=32), [view])
    li = proj(vol[None, None], spacing)[0, 0]
    origin, dirn = _unit_rays(proj.views[0], proj.det_spacing(n * spacing))
    exact = _sphere_chord(origin, dirn, centre, radius) * mu
    inner = exact > 0.8 * 2 * radius * mu  # rays well inside the silhouette
    assert inner.sum() >= 20
    rel = (li[inner] - exact[inner]).abs() / exact[inner]
    assert rel.max().item() < 0.01, f"sphere chord max relative error {rel.max().item():.4f}"
    assert rel.mean().item() < 0.004, f"sphere chord mean relative error {rel.mean().item():.4f}"
    # and nothing outside the silhouette (plus the one-voxel interpolation band)
    far = _sphere_chord(origin, dirn, centre, radius + 1.5 * spacing) == 0
    assert li[far].abs().max() == 0


def test_parallel_detector_integral_equals_volume_integral():
    # Σ li · δ² over a parallel-beam detector = ∫ μ dV when the detector covers the volume.
    n, spacing = 16, 2.0
    torch.manual_seed(0)
    vol = torch.rand(1, 1, n, n, n, dtype=torch.float64) * 0.03
    # Pixels at half the voxel pitch, offset by a quarter voxel: the midpoint rule on each half cell
    # is exact for the piecewise-bilinear interpolant, so the sum is exact to rounding.
    proj = Projector(GeometryConfig(kind="parallel", det_pixels=40, det_spacing=spacing / 2), VIEWS)
    li = proj(vol, spacing)[0]  # (V, P, P)
    total = vol.sum() * spacing**3
    for v in range(len(VIEWS)):
        got = li[v].sum() * proj.det_spacing(n * spacing) ** 2
        assert got.item() == pytest.approx(total.item(), rel=1e-9)


def _marker(n, idx, value=1.0):
    vol = torch.zeros(1, 1, n, n, n)
    vol[(0, 0) + idx] = value
    return vol


def _centroid(img):
    P = img.shape[-1]
    r = torch.arange(P, dtype=img.dtype)
    w = img / img.sum()
    return (w.sum(1) * r).sum().item(), (w.sum(0) * r).sum().item()  # (row, col)


@pytest.mark.parametrize("kind", ["parallel", "cone"])
def test_radiographic_orientation(kind):
    n = 16
    proj = Projector(_geom(kind, P=32), VIEWS)
    mid, hi, lo = n // 2, n - 3, 2
    centre = (32 - 1) / 2
    right = proj(_marker(n, (hi, mid, mid)), 2.0)[0]  # patient's right (+x)
    anterior = proj(_marker(n, (mid, hi, mid)), 2.0)[0]  # anterior (+y)
    superior = proj(_marker(n, (mid, mid, hi)), 2.0)[0]  # superior (+z)
    inferior = proj(_marker(n, (mid, mid, lo)), 2.0)[0]
    ap, pa, lat = 0, 1, 2
    # AP and PA: patient's right on the image's left
    assert _centroid(right[ap])[1] < centre - 2
    assert _centroid(right[pa])[1] < centre - 2
    # left lateral: anterior on the image's left
    assert _centroid(anterior[lat])[1] < centre - 2
    # head at the top in every view
    for v in (ap, pa, lat):
        assert _centroid(superior[v])[0] < centre - 2
        assert _centroid(inferior[v])[0] > centre + 2
    # a marker on the patient's right lies on the lateral's central column band (it is along the ray)
    assert abs(_centroid(right[lat])[1] - centre) < 1.5


def test_ap_and_lateral_differ_for_asymmetric_phantom():
    n = 16
    vol = torch.zeros(1, 1, n, n, n)
    vol[0, 0, 2:6, 4:12, 3:13] = 0.02  # a slab on the patient's right, spanning anterior-posterior
    vol[0, 0, 8:14, 10:14, 6:9] = 0.03  # an anterior block on the left
    li = Projector(_geom("cone"), ["ap", "lateral"])(vol, 2.0)[0]
    assert (li[0] - li[1]).abs().max() > 0.1 * li.max()


@pytest.mark.parametrize("kind", ["parallel", "cone"])
def test_gradcheck(kind):
    torch.manual_seed(0)
    proj = Projector(GeometryConfig(kind=kind, sid=60.0, sdd=90.0, det_pixels=5), ["ap", "lateral"])
    vol = torch.rand(2, 1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: proj(m, 3.0), (vol,), eps=1e-6, atol=1e-6)


def test_batch_and_views_consistent_with_single_calls():
    torch.manual_seed(1)
    vol = torch.rand(3, 1, 12, 12, 12) * 0.02
    geom = _geom("cone", P=20)
    both = Projector(geom, ["ap", "lateral"])(vol, 2.5)  # (3, 2, P, P)
    for b in range(3):
        for v, name in enumerate(["ap", "lateral"]):
            one = Projector(geom, [name])(vol[b : b + 1], 2.5)[0, 0]
            torch.testing.assert_close(both[b, v], one, rtol=1e-5, atol=1e-6)


def test_chunked_forward_and_backward_match_unchunked(monkeypatch):
    import hybrid_vit_cascade.geometry.projector as pm

    torch.manual_seed(2)
    vol = torch.rand(2, 1, 12, 12, 12, dtype=torch.float64)
    w = torch.rand(2, 2, 16, 16, dtype=torch.float64)

    def run():
        v = vol.clone().requires_grad_()
        out = Projector(_geom("cone", P=16), ["ap", "lateral"])(v, 2.0)
        (out * w).sum().backward()
        return out.detach(), v.grad

    full, grad = run()
    monkeypatch.setattr(pm, "_CHUNK_ELEMENTS", 2 * 16 * 16 * 5)  # 5 slices per chunk, both passes
    chunked, grad_chunked = run()
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(grad_chunked, grad)


def test_half_precision_input_is_projected_in_fp32():
    torch.manual_seed(3)
    vol = torch.rand(1, 1, 12, 12, 12) * 0.02
    proj = Projector(_geom("cone", P=16), ["ap", "lateral"])
    out = proj(vol.to(torch.bfloat16), 2.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, proj(vol.to(torch.bfloat16).float(), 2.0))


@pytest.mark.parametrize("kind", ["parallel", "cone"])
def test_voxel_to_detector_matches_projected_markers(kind):
    n, spacing, P = 16, 2.0, 32
    proj = Projector(_geom(kind, P=P), VIEWS)
    uv, depth = proj.voxel_to_detector(n, spacing)
    assert uv.shape == (3, n, n, n, 2) and depth.shape == (3, n, n, n)
    assert uv.dtype == torch.float32 and uv.abs().max() <= 1 and depth.abs().max() < 1
    for idx in [(3, 8, 12), (12, 4, 5), (8, 13, 2)]:
        img = proj(_marker(n, idx), spacing)[0]  # (V, P, P)
        for v in range(3):
            row, col = _centroid(img[v])
            x, y = uv[(v,) + idx].tolist()
            # grid_sample coords (align_corners=False) → pixel index: (g + 1) * P / 2 - 0.5
            assert (x + 1) * P / 2 - 0.5 == pytest.approx(col, abs=0.35)
            assert (y + 1) * P / 2 - 0.5 == pytest.approx(row, abs=0.35)


def test_voxel_to_detector_depth_runs_from_source_to_detector():
    n = 8
    proj = Projector(_geom("cone"), VIEWS)
    _, depth = proj.voxel_to_detector(n, 3.0)
    ap, pa, lat = depth
    # AP source is anterior (+y = high j): anterior voxels are on the source side (negative depth)
    assert ap[4, -1, 4] < 0 < ap[4, 0, 4]
    assert pa[4, -1, 4] > 0 > pa[4, 0, 4]
    # left lateral source on the patient's right (+x = high i)
    assert lat[-1, 4, 4] < 0 < lat[0, 4, 4]
    torch.testing.assert_close(ap[4, :, 4], torch.linspace(-(n - 1) / n, (n - 1) / n, n).flip(0))


def test_default_det_spacing_covers_magnified_fov():
    g = GeometryConfig(kind="cone", sid=850.0, sdd=1050.0, det_pixels=64)
    v = make_view("ap", g)
    assert resolve_det_spacing(v, 360.0) == pytest.approx(360.0 * 1050 / 850 * (1 + DET_MARGIN) / 64)
    gp = GeometryConfig(kind="parallel", det_pixels=64)
    assert resolve_det_spacing(make_view("lateral", gp), 360.0) == pytest.approx(360.0 * (1 + DET_MARGIN) / 64)
    fixed = GeometryConfig(kind="cone", det_pixels=64, det_spacing=1.5)
    assert Projector(fixed, ["ap"]).det_spacing(123.0) == 1.5


def test_bad_inputs_raise():
    proj = Projector(_geom("cone"), ["ap"])
    with pytest.raises(ValueError, match="B, 1, D, H, W"):
        proj(torch.zeros(1, 8, 8, 8), 1.0)
    with pytest.raises(ValueError, match="cube"):
        proj(torch.zeros(1, 1, 8, 8, 4), 1.0)
    with pytest.raises(ValueError, match="spacing"):
        proj(torch.zeros(1, 1, 8, 8, 8), 0.0)
    bad = torch.zeros(1, 1, 8, 8, 8)
    bad[0, 0, 1, 2, 3] = float("nan")
    assert torch.isnan(proj(bad, 1.0)).any()  # propagates, for the trainer's bad-step logic
    with pytest.raises(ValueError, match="unknown view"):
        Projector(_geom("cone"), ["oblique"])
    with pytest.raises(ValueError, match="distinct"):
        Projector(_geom("cone"), ["ap", "ap"])


@pytest.mark.parametrize("kind", ["parallel", "cone"])
def test_separable_adjoint_matches_grid_sample_adjoint(kind, monkeypatch):
    import hybrid_vit_cascade.geometry.projector as pm

    torch.manual_seed(4)
    vol = torch.rand(2, 1, 12, 12, 12, dtype=torch.float64)
    w = torch.rand(2, 3, 16, 16, dtype=torch.float64)

    def grad():
        v, proj = vol.clone().requires_grad_(), Projector(_geom(kind, P=16), VIEWS)
        (proj(v, 2.0) * w).sum().backward()
        return v.grad, proj

    fast, proj = grad()
    assert all(a is not None for a in proj._adjoints.values()), "ap/pa/lateral should take the separable path"
    monkeypatch.setattr(pm.SeparableAdjoint, "build", staticmethod(lambda axes, grids: None))
    torch.testing.assert_close(fast, grad()[0], rtol=1e-12, atol=1e-12)

"""DRR throughput and accuracy: our Joseph projector vs DiffDRR 0.6.1 (Siddon and trilinear), CPU.

Setup (identical for every method): cone beam, sid 850 mm, sdd 1050 mm, views AP + lateral, detector
P×P covering the 360 mm FOV magnified (det_spacing=None), fp32, `--threads` torch threads. Volumes:
DiffDRR's example chest CT resampled to a canonical n³ cube (360 mm), HU → μ; a batch of 8 volumes
(the CT scaled by 1.00, 1.01, …, 1.07 so they differ).

Ours renders the 8 volumes × 2 views in ONE call. DiffDRR holds one volume per `DRR`: we render the
2 views as a batch of 2 poses per call and loop over the volumes, swapping the `density` buffer
(cheap). When a DiffDRR row is slow, only k < 8 volumes are timed and throughput is 2k / time
(images are independent, so time is linear in k); `volumes_timed` in the JSON says so.

Throughput = images (volume·view pairs) per second. fwd = forward under no_grad; fwd+bwd = forward
with the volume requiring grad, plus backward of a weighted sum. Relative error = ‖ours − DiffDRR‖₂ /
‖DiffDRR‖₂ over both views of volume 0. Ours' first call builds and caches the sampling grid
(reported as `setup_s`); training reuses it every step, so timings exclude it.

    python benchmarks/bench_drr.py            # full: n ∈ {64,128,256} × P ∈ {64,128,256}
    python benchmarks/bench_drr.py --quick    # n = P ∈ {64, 128}
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hybrid_vit_cascade.config import GeometryConfig  # noqa: E402
from hybrid_vit_cascade.geometry.physics import hu_to_mu  # noqa: E402
from hybrid_vit_cascade.geometry.projector import Projector  # noqa: E402
from harness import cpu_name  # noqa: E402  (benchmarks/ is on sys.path: this script's own folder)

VIEWS = ["ap", "lateral"]
BATCH = 8
RENDERERS = {  # name -> (renderer, constructor kwargs, call kwargs); DiffDRR defaults
    "diffdrr_siddon": ("siddon", {}, {}),
    "diffdrr_trilinear": ("trilinear", {}, {"n_points": 500}),
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _time(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls (seconds)."""
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_ours(mu: torch.Tensor, spacing: float, P: int, repeats: int) -> dict:
    proj = Projector(GeometryConfig(kind="cone", sid=850.0, sdd=1050.0, det_pixels=P), VIEWS)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = proj(mu, spacing)  # first call: builds the cached grid
    setup = time.perf_counter() - t0

    def fwd():
        with torch.no_grad():
            proj(mu, spacing)

    w = torch.randn(BATCH, len(VIEWS), P, P)

    def fwd_bwd():
        m = mu.detach().requires_grad_()
        (proj(m, spacing) * w).sum().backward()

    fwd()  # warm-up (allocator, threads)
    t_f = _time(fwd, repeats)
    t_b = _time(fwd_bwd, max(1, repeats - 1))
    n_img = BATCH * len(VIEWS)
    return {"out": out[0], "setup_s": setup, "fwd_s": t_f, "fwd_bwd_s": t_b,
            "fwd_img_s": n_img / t_f, "fwd_bwd_img_s": n_img / t_b, "volumes_timed": BATCH}


def bench_diffdrr(mu: torch.Tensor, spacing: float, P: int, name: str, budget_s: float, skip_s: float) -> dict:
    from hybrid_vit_cascade.geometry.diffdrr_bridge import make_diffdrr

    renderer, init, kwargs = RENDERERS[name]
    geom = GeometryConfig(kind="cone", sid=850.0, sdd=1050.0, det_pixels=P)
    drr, poses = make_diffdrr(mu[0, 0], spacing, geom, VIEWS, renderer, init)
    vols = [mu[b, 0].contiguous() for b in range(BATCH)]

    def render(b: int, grad: bool):
        if grad:
            drr.density = vols[b].clone().requires_grad_()
            img = drr(poses, **kwargs)
            (img * torch.randn_like(img)).sum().backward()
            return img.detach()
        drr.density = vols[b]
        with torch.no_grad():
            return drr(poses, **kwargs)

    # volume 0, untimed as a measurement: warm-up, reference image, and a cost estimate
    t0 = time.perf_counter()
    ref = render(0, False)[:, 0]  # (V, P, P)
    first = time.perf_counter() - t0
    res: dict = {"ref": ref}
    for mode, grad in (("fwd", False), ("fwd_bwd", True)):
        if first > skip_s:
            res[f"{mode}_s"] = None
            res[f"skipped_{mode}"] = f"one volume took {first:.0f} s > {skip_s:.0f} s"
            continue
        k = int(min(BATCH, max(1, budget_s // max(first * (2.0 if grad else 1.0), 1e-3))))
        t0 = time.perf_counter()
        for b in range(k):
            render(b, grad)
        t = time.perf_counter() - t0
        res[f"{mode}_s"] = t * BATCH / k  # the 8-volume batch, linear in volumes
        res[f"{mode}_img_s"] = k * len(VIEWS) / t
        res[f"volumes_timed_{mode}"] = k
    return res


MD_BEGIN, MD_END = "<!-- drr-bench:begin -->", "<!-- drr-bench:end -->"


def _fmt(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def markdown_table(result: dict) -> str:
    """The DRR table for BENCHMARKS.md from a drr.json result."""
    m = result["meta"]
    lines = [
        f"CPU: {m['cpu']}, {m['threads']} threads, torch {m['torch']}, DiffDRR {m.get('diffdrr', 'n/a')}; "
        f"{m['date']}; `{m['command']}`.",
        "",
        "Throughput in images (volume × view) per second, batch of 8 volumes × 2 views (AP, lateral); "
        "speed-up = ours / DiffDRR; error = ‖ours − DiffDRR‖₂ / ‖DiffDRR‖₂ on the example chest CT.",
        "",
        "| n³ | P² | ours fwd | ours fwd+bwd | Siddon fwd | Siddon fwd+bwd | ×Siddon fwd | ×Siddon f+b | err vs Siddon "
        "| trilinear fwd | trilinear fwd+bwd | ×tri fwd | ×tri f+b | err vs trilinear |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        o = r["ours"]
        cells = [str(r["n"]), str(r["P"]), _fmt(o["fwd_img_s"], ".1f"), _fmt(o["fwd_bwd_img_s"], ".1f")]
        for name in RENDERERS:
            d = r.get(name)
            if d is None:
                cells += ["—"] * 5
                continue
            cells += [_fmt(d.get("fwd_img_s"), ".2f"), _fmt(d.get("fwd_bwd_img_s"), ".2f"),
                      _fmt(d.get("speedup_fwd"), ".0f") + "×" if d.get("speedup_fwd") else "skipped",
                      _fmt(d.get("speedup_fwd_bwd"), ".0f") + "×" if d.get("speedup_fwd_bwd") else "skipped",
                      f"{d['rel_err'] * 100:.2f} %"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


INTRO = """`benchmarks/bench_drr.py` compares our projector (`geometry/projector.py`, Joseph-style: one batched
bilinear `grid_sample` per view over all slices × all volumes) with DiffDRR 0.6.1's Siddon (its default,
nearest-neighbour voxels) and trilinear (500 points per ray, its default) renderers on the same CPU and
thread count, same cone geometry (sid 850 mm, sdd 1050 mm, 360 mm FOV, detector covering the magnified
FOV + 5 %), views AP and lateral, a batch of 8 volumes (DiffDRR's example chest CT resampled to n³,
scaled ×1.00…1.07).

How each side is timed: ours renders the 8 × 2 images in one call. DiffDRR holds one volume per `DRR`
module, so it renders the 2 views as one batch of 2 poses and loops over the 8 volumes (swapping its
`density` buffer); for slow rows only k < 8 volumes are timed and throughput is 2k / time
(`volumes_timed_*` in `benchmarks/results/drr.json`). fwd = forward under `no_grad`; fwd+bwd = forward
with the volume requiring grad plus backward. Ours excludes the first call, which builds the sampling
grid once per (size, spacing, device) and caches it (`setup_s` in the JSON)."""

WHY_FWD = ("Ours does one `grid_sample` per view over all slices with the 8 volumes as channels, so interpolation "
           "weights are computed once per sample for all volumes; DiffDRR traces each volume separately and "
           "(Siddon) sorts 3n plane crossings per ray.")
WHY_BWD = ("Where the ratio is lowest the time is the dense volume gradient, not the rays. On CPU, for the "
           "axis-aligned views, the backward is the exact separable adjoint (`geometry/separable_adjoint.py`: "
           "per slice the bilinear weights factor into one matrix per in-slice axis — one dense GEMM per volume "
           "and view, then one sparse product that writes each volume's gradient once in its final layout); "
           "elsewhere grid_sample's scatter adjoint. Every call must still return a fresh 8 × n³ gradient "
           "(537 MB at 256³) whose pages the kernel zero-fills, and read the volume once per view, so memory "
           "traffic sets a floor that the few rays of a 64² detector cannot amortise. A one-off profile after "
           "the separable adjoint (256³/64², load ≈ 2, not re-run by the script): sparse product 35 %, dense "
           "GEMM 33 % (mostly multiplying zeros: ≤ 3 non-zero taps per voxel out of P), forward grid_sample "
           "28 %; a fresh 537 MB tensor costs 140 ms with the default allocator (24 ms with "
           "THP_MEM_ALLOC_ENABLE=1), which with two volume reads puts the floor near 0.17 s per call against "
           "0.35–0.40 s measured. Siddon (DiffDRR's default) is cheap to differentiate (nearest-neighbour "
           "lookups), so its fwd+bwd ratio is the lower of the two.")


def _span(values, spec: str) -> str:
    vals = [v for v in values if v is not None]
    return "—" if not vals else f"{format(min(vals), spec)}–{format(max(vals), spec)}"


def markdown(result: dict) -> str:
    """The DRR section of BENCHMARKS.md: method, the table (between the DRR markers) and ranges read from it."""
    rows = result["rows"]
    lines = ["## DRR projector", "", INTRO, "", f"{MD_BEGIN}\n{markdown_table(result)}\n{MD_END}", ""]
    lines.append(f"Grid setup (first call, cached afterwards): {_span([r['ours']['setup_s'] for r in rows], '.2f')} s.")
    if "loadavg_start" in result["meta"]:  # a shared machine slows both sides alike, single rows vary
        lines[-1] += f" Load average when the run started: {', '.join(map(str, result['meta']['loadavg_start']))}."
    dd = [name for name in RENDERERS if any(name in r for r in rows)]
    if not dd:
        return "\n".join(lines + ["", "DiffDRR not timed (not installed, or `--no-diffdrr`): ours only."])
    get = lambda name, key: [r[name].get(key) for r in rows if name in r]  # noqa: E731
    err = lambda name: _span([e * 100 for e in get(name, "rel_err")], ".2f")  # noqa: E731
    low = [f"{r['n']}³/{r['P']}² {name[8:].replace('siddon', 'Siddon')} {r[name]['speedup_fwd_bwd']:.0f}×" for r in rows for name in dd
           if r.get(name, {}).get("speedup_fwd_bwd") is not None and r[name]["speedup_fwd_bwd"] < 20]
    lines += [
        "", f"- **Forward**: " + " and ".join(f"{_span(get(n, 'speedup_fwd'), '.0f')}× DiffDRR-{n[8:].replace('siddon', 'Siddon')}" for n in dd)
        + f"; relative difference {err('diffdrr_trilinear')} % from the trilinear renderer (the same voxel model: "
        f"trilinear interpolation), {err('diffdrr_siddon')} % from Siddon (nearest-neighbour voxels). {WHY_FWD}",
        f"- **Forward + backward**: " + " and ".join(f"{_span(get(n, 'speedup_fwd_bwd'), '.0f')}× DiffDRR-{n[8:].replace('siddon', 'Siddon')}"
                                                   for n in dd)
        + (f"; below 20× at {', '.join(low)}. " if low else "; ≥ 20× on every row. ") + WHY_BWD,
    ]
    return "\n".join(lines)


def write_markdown(result: dict, path: Path) -> None:
    """Replace the table between the DRR markers in BENCHMARKS.md (the rest of the file is untouched)."""
    text = path.read_text() if path.exists() else ""
    block = f"{MD_BEGIN}\n{markdown_table(result)}\n{MD_END}"
    if MD_BEGIN in text and MD_END in text:
        head, rest = text.split(MD_BEGIN, 1)
        text = head + block + rest.split(MD_END, 1)[1]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + "## DRR projector\n\n" + block + "\n"
    path.write_text(text)


def main(argv=None) -> dict:
    """Run the DRR benchmark; writes drr.json (and BENCHMARKS.md's DRR table on a full run), returns the result."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="n = P ∈ {64, 128} only, fewer repeats")
    ap.add_argument("--all-pixels-at", type=int, default=None,
                    help="with --quick: also every --pixels size at this volume size (e.g. 256)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs="*", help="volume sizes (default 64 128 256)")
    ap.add_argument("--pixels", type=int, nargs="*", help="detector sizes (default 64 128 256)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "drr.json"))
    ap.add_argument("--budget", type=float, default=8.0, help="seconds per DiffDRR measurement before timing fewer volumes")
    ap.add_argument("--skip", type=float, default=90.0, help="skip a DiffDRR row whose single volume takes longer (s)")
    ap.add_argument("--no-diffdrr", action="store_true")
    ap.add_argument("--markdown", default=None, help="BENCHMARKS.md to update (default: only for a full run)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    sizes = args.sizes or ([64, 128] if args.quick else [64, 128, 256])
    pixels = args.pixels or ([64, 128] if args.quick else [64, 128, 256])
    pairs = [(n, n) for n in sizes if n in pixels] if args.quick else [(n, p) for n in sizes for p in pixels]
    if args.quick and args.all_pixels_at:  # issue 12's 20× target is at 256³ for every detector size
        pairs += [(args.all_pixels_at, p) for p in pixels if (args.all_pixels_at, p) not in pairs]
        pairs.sort()
    use_dd = not args.no_diffdrr
    if use_dd:
        try:
            import diffdrr  # noqa: F401
            from hybrid_vit_cascade.geometry.diffdrr_bridge import example_ct_cube
        except ImportError:
            print("diffdrr not installed: timing ours only")
            use_dd = False
    meta = {
        "cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
        "geometry": {"kind": "cone", "sid_mm": 850.0, "sdd_mm": 1050.0, "fov_mm": 360.0, "det_spacing": "auto"},
        "views": VIEWS, "batch": BATCH, "dtype": "float32", "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "command": " ".join(["python", "benchmarks/bench_drr.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    if use_dd:
        import diffdrr

        meta["diffdrr"] = diffdrr.__version__
        meta["diffdrr_renderers"] = {k: {"renderer": r, "init": i, "call": c} for k, (r, i, c) in RENDERERS.items()}
    rows = []
    cube_cache: dict[int, tuple[torch.Tensor, float]] = {}
    for n, P in pairs:
        if n not in cube_cache:
            if use_dd:
                hu, spacing = example_ct_cube(n, fov_mm=360.0)
                mu1 = hu_to_mu(torch.from_numpy(hu))
            else:
                g = torch.Generator().manual_seed(0)
                mu1, spacing = torch.rand(n, n, n, generator=g) * 0.03, 360.0 / n
            scale = 1.0 + 0.01 * torch.arange(BATCH, dtype=torch.float32)
            cube_cache = {n: (mu1[None, None] * scale[:, None, None, None, None], spacing)}  # (B, 1, n, n, n)
        mu, spacing = cube_cache[n]
        repeats = 1 if n * P * P >= 256**3 // 2 else (3 if args.quick else 5)
        ours = bench_ours(mu, spacing, P, repeats)
        row = {"n": n, "P": P, "ours": {k: v for k, v in ours.items() if k != "out"}}
        line = f"n={n:3d} P={P:3d} | ours fwd {ours['fwd_img_s']:8.1f} img/s  fwd+bwd {ours['fwd_bwd_img_s']:7.1f} img/s"
        if use_dd:
            for name in RENDERERS:
                dd = bench_diffdrr(mu, spacing, P, name, args.budget, args.skip)
                entry = {k: v for k, v in dd.items() if k != "ref"}
                entry["rel_err"] = _rel(ours["out"], dd["ref"])
                for mode in ("fwd", "fwd_bwd"):
                    if dd.get(f"{mode}_s"):
                        entry[f"speedup_{mode}"] = ours[f"{mode}_img_s"] / dd[f"{mode}_img_s"]
                row[name] = entry
                sp = lambda m: f"{entry[f'speedup_{m}']:6.1f}x" if f"speedup_{m}" in entry else "  skip "  # noqa: E731
                line += f" | {name[8:]} {sp('fwd')} {sp('fwd_bwd')} err {entry['rel_err'] * 100:.2f}%"
        print(line, flush=True)
        rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    md = args.markdown or (None if args.quick or args.sizes or args.pixels else str(ROOT / "BENCHMARKS.md"))
    if md:
        write_markdown({"meta": meta, "rows": rows}, Path(md))
        print(f"updated {md}")
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    main()

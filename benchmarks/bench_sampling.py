"""Sampling: seconds per volume per stage, PSNR-3D vs sampler steps, DRR guidance on/off, the cost of K samples.

Everything runs through the product's own code: `Reconstructor.reconstruct` (inference/pipeline.py,
settings resolved by runtime/sampling.py `resolve_sampling`) called one held-out case at a time with
its chains in chunks of 4, exactly as `hvc evaluate` calls it, and scored with evaluate's per-case
metrics (PSNR-3D / SSIM-3D in the HU window, DRR-consistency PSNR). Per-stage seconds are the gaps
between the pipeline's own per-stage log lines. Held-out cases = the dataset's test split.

Without `--checkpoint` the script makes its own: the embedded phantoms (generated and prepared on
first use into cache/, as `hvc train` does) and config/tiny_cpu.json trained with fewer epochs
(`--epochs`); the JSON says which checkpoint was used and how long it trained. Grid points run
cheapest first; a point whose predicted time (from the measured cost per step of its curve) would
overrun `--budget` is skipped and listed as skipped.

    python benchmarks/bench_sampling.py                                   # own checkpoint, ≤ 10 min
    python benchmarks/bench_sampling.py --checkpoint demo_out/checkpoints/cascade --data DIR
    python benchmarks/bench_sampling.py --smoke                           # CI: random 16³ stage, seconds
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, ROOT, write_result  # noqa: E402

sys.path.insert(0, str(ROOT / "src"))
STEPS = (5, 10, 20, 50, 100, 250)
KS = (1, 4, 16)
SAMPLERS = ("ddim", "dpmpp")
METRICS = ("psnr3d", "ssim3d", "drr_psnr")


def train_own(work: Path, epochs: list[int], log) -> tuple[Path, Path, dict]:
    """tiny_cpu with `epochs` per stage on the embedded phantoms: (checkpoint dir, dataset, how it was made)."""
    from hybrid_vit_cascade.config import config_from_dict, load_config
    from hybrid_vit_cascade.training.progressive import resolve_dataset, train_progressive

    d = load_config(ROOT / "config" / "tiny_cpu.json").model_dump()
    if len(epochs) != len(d["stages"]):
        raise ValueError(f"--epochs needs one value per tiny_cpu stage ({len(d['stages'])}), got {epochs}")
    for s, e in zip(d["stages"], epochs):
        s["num_epochs"] = int(e)
    d["data"]["cache_dir"] = str(ROOT / "cache")  # the cache `hvc train` uses from the repo root: reused when present
    cfg = config_from_dict(d, "config/tiny_cpu.json (bench_sampling: fewer epochs)")
    t0 = time.perf_counter()
    data = resolve_dataset(cfg, progress=False)
    data_s = time.perf_counter() - t0
    ckpt = work / "checkpoint"
    t0 = time.perf_counter()
    out = train_progressive(cfg, ckpt, device="cpu", overwrite=True, log=log)
    train_s = time.perf_counter() - t0
    how = {"source": "trained by this run", "config": "config/tiny_cpu.json", "epochs": list(epochs),
           "data_s": round(data_s, 1), "train_s": round(train_s, 1),
           "stages": [{"name": s["name"], "steps": s["steps"], "time_s": round(s["time_s"], 1),
                       "val": s["val"]} for s in out["stages"]]}
    return ckpt, Path(data), how


def smoke_setup(work: Path) -> tuple[Path, list[dict]]:
    """A randomly initialised 16³ one-stage tiny_cpu checkpoint and one phantom case rendered in memory."""
    import numpy as np
    import torch

    from hybrid_vit_cascade.config import config_from_dict, load_config
    from hybrid_vit_cascade.data.io import CTVolume
    from hybrid_vit_cascade.data.phantoms import make_phantom
    from hybrid_vit_cascade.data.prepare import prep_settings, render_case
    from hybrid_vit_cascade.geometry.projector import Projector
    from hybrid_vit_cascade.models.cascade import Cascade
    from hybrid_vit_cascade.runtime.checkpoint import save_resolved_config, save_snapshot, stage_dir
    from hybrid_vit_cascade.files import write_json_atomic

    d = load_config(ROOT / "config" / "tiny_cpu.json").model_dump()
    d["stages"] = d["stages"][:1]
    cfg = config_from_dict(d, "config/tiny_cpu.json (bench_sampling --smoke: stage 1 only)")
    torch.manual_seed(0)
    ckpt = work / "checkpoint"
    save_resolved_config(cfg, ckpt)
    st = cfg.stages[0]
    save_snapshot(stage_dir(ckpt, 1, st.name) / "best", Cascade(cfg).stages[0].state_dict(), None, None,
                  {"note": "random initialisation (bench_sampling --smoke)"})
    settings = prep_settings([st.resolution], list(cfg.data.views), cfg.data)
    write_json_atomic(ckpt / "data_info.json", {"dataset": None, "xray_scale": {"li_max": settings["li_max"]},
                                                "render_size": st.resolution})
    hu, spacing = make_phantom(0, size=32)
    ct = CTVolume(hu, np.diag([*spacing, 1.0]), "smoke phantom 0")
    arrays, _ = render_case(ct, settings, cfg.data, Projector(cfg.data.geometry, list(cfg.data.views)))
    case = {"case_id": "smoke0", "li": torch.from_numpy(arrays["li"]),
            "ct": {st.resolution: torch.from_numpy(arrays[f"ct_{st.resolution}"])[None]}}
    return ckpt, [case]


def held_out(rec, data: Path, n: int) -> list[dict]:
    """The first `n` test-split cases of a prepared dataset: line-integral X-rays and truth per stage resolution."""
    from hybrid_vit_cascade.data.datasets import CTXrayDataset, load_manifest
    from hybrid_vit_cascade.geometry.physics import denormalize_xray

    manifest = load_manifest(data)
    rec.check_source(manifest, f"dataset {data}")
    ds = CTXrayDataset(data, "test", sorted({s.resolution for s in rec.cfg.stages}))
    li_max = float(manifest["xray_scale"]["li_max"])
    items = [ds[i] for i in range(min(n, len(ds)))]
    # Line integrals, as evaluate reads them: each model renormalises them with its own li_max.
    return [{"case_id": it["meta"]["case_id"], "li": denormalize_xray(it["xray"].float(), li_max), "ct": it["ct"]}
            for it in items]


def measure(rec, cases: list[dict], sampler: str, steps: int, guidance: float, k: int, seed: int = 0) -> dict:
    """One grid point over `cases`: per stage seconds per volume and mean metrics (mean of the K samples scored)."""
    import numpy as np

    from hybrid_vit_cascade.geometry.physics import normalize_xray
    from hybrid_vit_cascade.inference.evaluate import _case_metrics

    n_stages = rec.stages_to_run(None)
    secs = [[] for _ in range(n_stages)]
    mets = [[] for _ in range(n_stages)]
    t_all = time.perf_counter()
    for c in cases:
        marks: list[float] = []
        t0 = time.perf_counter()
        res = rec.reconstruct(normalize_xray(c["li"], rec.li_max), steps=steps, sampler=sampler, samples=k, seed=seed,
                              guidance_scale=guidance, case_keys=[c["case_id"]], log=lambda _: marks.append(time.perf_counter()))
        marks.append(time.perf_counter())  # reconstruct logs at the start of each stage: gaps = stage times
        marks[0] = t0
        for j, r in enumerate(res):
            secs[j].append(marks[j + 1] - marks[j])
            mets[j].append(_case_metrics(rec, r.mean[0], c["ct"][r.res], c["li"], r.std[0] if r.std is not None else None))
    stages = []
    for j, scfg in enumerate(rec.cfg.stages[:n_stages]):
        row = {"stage": j + 1, "name": scfg.name, "res": scfg.resolution, "s_per_volume": float(np.mean(secs[j]))}
        for m in METRICS + (("std_hu_mean",) if k > 1 else ()):
            row[m] = float(np.mean([x[m] for x in mets[j]]))
        stages.append(row)
    return {"sampler": sampler, "steps": steps, "guidance": guidance, "k": k, "cases": len(cases),
            "wall_s": time.perf_counter() - t_all, "s_per_volume": sum(s["s_per_volume"] for s in stages),
            "stages": stages}


def run_grid(rec, cases: list[dict], steps_list, ks, guidance: float, deadline: float, log,
             k_steps: Optional[int] = None) -> tuple[list, list, list]:
    """The steps curves (K = 1) and the K points (at `k_steps`, default the config's), cheapest first
    within the time left; returns (curve rows, K rows, skipped)."""
    from hybrid_vit_cascade.runtime.sampling import resolve_sampling

    default = resolve_sampling(rec.cfg, steps=k_steps)
    guides = sorted({0.0, guidance})
    curves = [(s, g) for s in SAMPLERS for g in guides]
    per_step: dict = {}  # (sampler, guidance) -> measured seconds per chain-step (all stages)
    curve, krows, skipped = [], [], []

    def attempt(sampler, steps, g, k, what):
        est = per_step.get((sampler, g), per_step.get((sampler, 0.0), 0.0) * (2 if g else 1)) * steps * k * len(cases)
        if time.perf_counter() + est > deadline:
            skipped.append({"what": what, "reason": f"predicted {est:.0f} s, {max(0, deadline - time.perf_counter()):.0f} s "
                                                    "of the budget left"})
            log(f"skip {what}: {skipped[-1]['reason']}")
            return None
        row = measure(rec, cases, sampler, steps, g, k)
        per_step[(sampler, g)] = row["wall_s"] / (steps * k * len(cases))
        log(f"{what}: {row['s_per_volume']:.2f} s/volume, final PSNR-3D {row['stages'][-1]['psnr3d']:.2f} dB")
        return row

    def steps_point(s):
        for sampler, g in curves:
            row = attempt(sampler, s, g, 1, f"{sampler} {s} steps, guidance {g:g}, K=1")
            if row:
                curve.append(row)

    small = [s for s in steps_list if s <= default.steps]
    for s in small:  # the cheap end of every curve first, then the K points, then the expensive steps
        steps_point(s)
    for k in ks:
        hit = [r for r in curve if (r["sampler"], r["steps"], r["guidance"], k) == (default.sampler, default.steps,
                                                                                     default.guidance_scale, 1)]
        row = hit[0] if hit else attempt(default.sampler, default.steps, default.guidance_scale, k,
                                         f"K={k} ({default.describe()}, guidance {default.guidance_scale:g})")
        if row:
            krows.append({**row, "k": k})
    for s in [s for s in steps_list if s not in small]:
        steps_point(s)
    return curve, krows, skipped


def plot(result: dict, path: Path) -> None:
    """PSNR-3D and seconds per volume vs steps (one line per sampler × guidance), and PSNR / seconds vs K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    keys = sorted({(r["sampler"], r["guidance"]) for r in result["curve"]})
    for sampler, g in keys:
        rows = sorted((r for r in result["curve"] if (r["sampler"], r["guidance"]) == (sampler, g)), key=lambda r: r["steps"])
        label = f"{sampler}, guidance {g:g}"
        ax[0].plot([r["steps"] for r in rows], [r["stages"][-1]["psnr3d"] for r in rows], "o-", label=label)
        ax[1].plot([r["steps"] for r in rows], [r["s_per_volume"] for r in rows], "o-", label=label)
    for a, y in ((ax[0], "final-stage PSNR-3D (dB), K = 1"), (ax[1], "seconds per volume (all stages), K = 1")):
        a.set_xscale("log")
        a.set_xlabel("sampler steps")
        a.set_ylabel(y)
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    ax[1].set_yscale("log")
    ks = result["k_samples"]
    if ks:
        ax[2].plot([r["k"] for r in ks], [r["stages"][-1]["psnr3d"] for r in ks], "o-", color="C3")
        ax[2].set_xscale("log", base=2)
        ax[2].set_xticks([r["k"] for r in ks], [str(r["k"]) for r in ks])
        ax[2].set_xlabel("K samples (PSNR-3D of their mean)")
        ax[2].set_ylabel("final-stage PSNR-3D (dB)", color="C3")
        tw = ax[2].twinx()
        tw.plot([r["k"] for r in ks], [r["s_per_volume"] for r in ks], "s--", color="C4")
        tw.set_ylabel("seconds per volume", color="C4")
    fig.suptitle(f"Sampling on {result['cases']} held-out case(s) — {result['checkpoint']['source']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    """Run the sampling benchmark; writes <results>/sampling.json and sampling.png, returns the result."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="trained cascade checkpoint dir (default: train tiny_cpu here)")
    ap.add_argument("--data", help="prepared dataset (its test split is held out; default: the checkpoint's)")
    ap.add_argument("--cases", type=int, default=3, help="held-out cases scored per grid point")
    ap.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    ap.add_argument("--k", type=int, nargs="+", default=list(KS), help="K values for the cost of K samples")
    ap.add_argument("--epochs", type=int, nargs="+", default=[30, 60], help="tiny_cpu epochs per stage (own training)")
    ap.add_argument("--budget", type=float, default=600.0, help="seconds for the whole run, training included")
    ap.add_argument("--work", default=str(ROOT / "cache" / "bench_sampling"), help="own checkpoint goes here")
    ap.add_argument("--results", help="results folder (default benchmarks/results; --smoke: a temp folder)")
    ap.add_argument("--smoke", action="store_true", help="random 16³ one-stage model, 1 in-memory case, 1 and 2 steps")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    log = lambda s: print(f"[bench_sampling {time.perf_counter() - t_start:5.0f} s] {s}", flush=True)  # noqa: E731
    from hybrid_vit_cascade import threads

    threads.configure()  # the CLI's thread policy, before torch does any work (threads.py)
    from hybrid_vit_cascade.inference.pipeline import Reconstructor
    from hybrid_vit_cascade.runtime.checkpoint import read_data_info

    tmp = tempfile.TemporaryDirectory(prefix="bench_sampling_") if args.smoke else None
    results = Path(args.results or (tmp.name if tmp else RESULTS))
    if args.smoke:
        ckpt, cases = smoke_setup(Path(tmp.name))
        how = {"source": "random initialisation (smoke)", "config": "config/tiny_cpu.json stage 1", "train_s": 0.0}
        args.steps, args.k, data = [1, 2], [1, 2], None  # the K points then run at 2 steps too
    else:
        if args.checkpoint:
            ckpt, how = Path(args.checkpoint), {"source": f"given: {args.checkpoint}", "train_s": None}
        else:
            ckpt, data, how = train_own(Path(args.work), args.epochs, log)
            log(f"trained {ckpt} in {how['train_s']:.0f} s (data {how['data_s']:.0f} s)")
        data = Path(args.data) if args.data else Path(read_data_info(ckpt)["dataset"])
    rec = Reconstructor(ckpt, device="cpu")
    if not args.smoke:
        cases = held_out(rec, data, args.cases)
    from hybrid_vit_cascade.runtime.sampling import resolve_sampling

    default = resolve_sampling(rec.cfg)
    deadline = t_start + args.budget - 30  # room for the plot, the JSON and one point running a little over
    curve, krows, skipped = run_grid(rec, cases, sorted(args.steps), sorted(args.k), default.guidance_scale or 1.0,
                                     deadline, log, k_steps=2 if args.smoke else None)
    result = {
        "smoke": args.smoke, "checkpoint": {"path": str(ckpt), **how}, "data": None if data is None else str(data),
        "cases": len(cases), "case_ids": [c["case_id"] for c in cases], "seed": 0,
        "default": {"sampler": default.sampler, "steps": default.steps, "samples": default.samples,
                    "guidance": default.guidance_scale, "eta": default.eta},
        "curve": curve, "k_samples": krows, "skipped": skipped, "budget_s": args.budget,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    results.mkdir(parents=True, exist_ok=True)
    plot(result, results / "sampling.png")
    path = write_result("sampling", result, folder=results)
    log(f"wrote {path} and {results / 'sampling.png'} in {result['wall_s']:.0f} s")
    if tmp:
        tmp.cleanup()
    return result


def _reading(result: dict) -> list[str]:
    """What the tables say, computed from them (paired at equal steps; final stage, K = 1 unless said)."""
    import numpy as np

    by = {(r["sampler"], r["guidance"], r["steps"]): r for r in result["curve"]}
    psnr = lambda r: r["stages"][-1]["psnr3d"]  # noqa: E731
    out = []
    pairs = [(by[(s, 0.0, n)], r) for (s, g, n), r in by.items() if g > 0 and (s, 0.0, n) in by]
    if pairs:
        out.append(f"- DRR guidance: {np.mean([psnr(b) - psnr(a) for a, b in pairs]):+.2f} dB PSNR-3D at the same "
                   f"sampler and steps ({len(pairs)} pairs), at ×{np.mean([b['s_per_volume'] / a['s_per_volume'] for a, b in pairs]):.2f} the time.")
    pairs = [(by[("ddim", g, n)], r) for (s, g, n), r in by.items() if s == "dpmpp" and ("ddim", g, n) in by]
    if pairs:
        out.append(f"- DPM-Solver++ vs DDIM at the same steps and guidance: {np.mean([psnr(b) - psnr(a) for a, b in pairs]):+.2f} dB.")
    for s, g in sorted({(s, g) for s, g, _ in by}):
        rows = sorted((r for r in result["curve"] if (r["sampler"], r["guidance"]) == (s, g)), key=lambda r: r["steps"])
        if len(rows) > 1:
            best = max(rows, key=psnr)
            out.append(f"- {s}, guidance {g:g}: best at {best['steps']} steps ({psnr(best):.2f} dB); {rows[0]['steps']} → "
                       f"{rows[-1]['steps']} steps changes PSNR-3D by {psnr(rows[-1]) - psnr(rows[0]):+.2f} dB at "
                       f"×{rows[-1]['s_per_volume'] / rows[0]['s_per_volume']:.0f} the time.")
    ks = {r["k"]: r for r in result["k_samples"]}
    if 1 in ks and len(ks) > 1:
        k = max(ks)
        out.append(f"- K = {k} samples: {psnr(ks[k]) - psnr(ks[1]):+.2f} dB over K = 1 at ×{ks[k]['s_per_volume'] / ks[1]['s_per_volume']:.1f} "
                   "the time per volume" + (f"; K = 4 (its chains one batch of 4) at ×{ks[4]['s_per_volume'] / ks[1]['s_per_volume']:.1f}."
                                            if 4 in ks and k != 4 else "."))
    return out


def _cell(row, key="psnr3d") -> str:
    return "—" if row is None else f"{row['stages'][-1][key]:.2f} ({row['s_per_volume']:.2f} s)"


def markdown(result: dict) -> str:
    """The BENCHMARKS.md section of a sampling.json result (units and the command included)."""
    m, ck = result["machine"], result["checkpoint"]
    trained = (f"{ck['config']} trained by the benchmark itself, epochs {ck['epochs']} per stage, in "
               f"{ck['train_s']:.0f} s (+ {ck['data_s']:.0f} s phantoms/prepare)" if ck.get("epochs")
               else ck["source"])
    d = result["default"]
    lines = [
        "## Sampling (`benchmarks/bench_sampling.py`)", "",
        f"{m['cpu']}, {m['threads']} threads, torch {m['torch']}; {m['date']}; `{m['command']}`; "
        f"wall time {result['wall_s']:.0f} s.", "",
        f"Checkpoint: {trained} (`{ck['path']}`). Held-out cases: {result['cases']} of the test split "
        f"({', '.join(result['case_ids'])}), seed {result['seed']}. Each case is reconstructed alone through "
        "`Reconstructor.reconstruct` (chains in chunks of 4), as `hvc evaluate` does; PSNR-3D is the final "
        f"stage's, in dB over the HU window, of the mean of the K samples. The config's default: {d['sampler']}, "
        f"{d['steps']} steps, K = {d['samples']}, guidance {d['guidance']:g}.",
    ]
    if result.get("smoke"):
        lines += ["", "**Smoke run: a randomly initialised model — the numbers are costs only, not quality.**"]
    base = next((r for r in result["k_samples"] if r["k"] == 1), None)
    if base:
        lines += ["", f"Seconds per volume per stage ({base['sampler']}, {base['steps']} steps, guidance "
                      f"{base['guidance']:g}, K = 1):", "", "| stage | resolution | s per volume | PSNR-3D (dB) | SSIM-3D | DRR PSNR (dB) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {s['stage']} {s['name']} | {s['res']}³ | {s['s_per_volume']:.3f} | {s['psnr3d']:.2f} | "
                  f"{s['ssim3d']:.4f} | {s['drr_psnr']:.1f} |" for s in base["stages"]]
    keys = sorted({(r["sampler"], r["guidance"]) for r in result["curve"]})
    by = {(r["sampler"], r["guidance"], r["steps"]): r for r in result["curve"]}
    steps = sorted({r["steps"] for r in result["curve"]} | {int(s["what"].split()[1]) for s in result["skipped"]
                                                              if s["what"].split()[1].isdigit()})
    lines += ["", "PSNR-3D (dB) vs sampler steps, K = 1, in brackets seconds per volume (all stages); — = skipped:", "",
              "| steps | " + " | ".join(f"{s} {'+ guidance ' + format(g, 'g') if g else 'no guidance'}" for s, g in keys) + " |",
              "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(_cell(by.get((s, g, n))) for s, g in keys) + " |" for n in steps]
    lines += ["", "Cost of K samples (the config's sampler, steps and guidance; PSNR-3D of the mean):", "",
              "| K | s per volume | final PSNR-3D (dB) | SSIM-3D | DRR PSNR (dB) | mean std (HU) |", "|---|---|---|---|---|---|"]
    for r in result["k_samples"]:
        f = r["stages"][-1]
        std = f"{f['std_hu_mean']:.1f}" if "std_hu_mean" in f else "—"
        lines.append(f"| {r['k']} | {r['s_per_volume']:.2f} | {f['psnr3d']:.2f} | {f['ssim3d']:.4f} | {f['drr_psnr']:.1f} | {std} |")
    reading = _reading(result)
    if reading:
        lines += ["", "Read from the tables:", ""] + reading
    if result["skipped"]:
        lines += ["", "Skipped to stay within the budget of "
                  f"{result['budget_s']:.0f} s: " + "; ".join(f"{s['what']} ({s['reason']})" for s in result["skipped"]) + "."]
    lines += ["", "Plot: `benchmarks/results/sampling.png`; raw numbers: `benchmarks/results/sampling.json`."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

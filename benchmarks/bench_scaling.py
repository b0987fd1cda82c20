"""How a stage's training step scales with resolution, the seed's memory claim, and batches per GPU size.

1. Scaling: progressive_3stage stage index 2 (the 256³ stage; harness.py keeps its 16³ token grid, so the
   patch grows with the volume) built alone at 32³…256³, batch 1, checkpointing off / on, fp32 (+ bf16
   autocast where the device has native bf16), each point in a fresh subprocess (peak RSS is a process
   high-water mark). Sizes run smallest first; one whose peak, predicted from the two largest measured
   sizes (see extrapolate), exceeds --mem-limit-gb is extrapolated instead of run, and labelled so.
2. The seed's claim ("12 GB at 256³ progressive vs 40+ GB full volume"): stage 3 at 256³ alone (`prev` a
   cached low-res volume) vs one stage producing 256³ with the whole cascade's parameter count.
3. Largest batch per stage of quick_2stage / progressive_3stage in 12/24/40/80 GB: fixed = 16 B/parameter
   (fp32 weights, grads, AdamW moments; autocast keeps weights fp32), per sample = peak − baseline − fixed
   at batch 1 (batch-independent buffers such as the projector's ray grid count as per sample, so the
   batches are lower bounds). Without native bf16, bf16 activations are derived as half the fp32 ones.

    python benchmarks/bench_scaling.py                  # full run (lead; ~8 min on 2 CPU cores)
    python benchmarks/bench_scaling.py --max-edge 64    # 32³/64³ measured, larger sizes extrapolated
    python benchmarks/bench_scaling.py --smoke          # tiny_cpu stage 0 at 16³/24³, seconds
    python benchmarks/bench_scaling.py --gpu-table      # README's GPU table from results/scaling.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "src")]
import harness  # noqa: E402
from scaling_fit import (CAPS_GB, GPU_RESERVE_GB, batch_rows, extrapolate, fit_power, point_at,  # noqa: E402
                         predict, split_memory)

SWEEP, SIZES = ("progressive_3stage", 2), (32, 64, 128, 256)
ROWS = (("quick_2stage", 0), ("quick_2stage", 1), ("progressive_3stage", 0), ("progressive_3stage", 1),
        ("progressive_3stage", 2))
SMOKE_SWEEP, SMOKE_SIZES, SMOKE_ROWS = ("tiny_cpu", 0), (16, 24), (("tiny_cpu", 0),)
CLAIM = "12 GB at 256³ progressive vs 40+ GB full volume"


# ---------------------------------------------------------------- one point in a fresh process
def child(spec: dict) -> dict:
    """Build the stage, allocate AdamW's state, time the steps, report peak memory (run in a subprocess)."""
    import torch

    dev, k = spec["device"], spec["stage"]
    base = harness.reset_peak_memory(dev)  # interpreter + torch in use before the model exists (0 on CUDA)
    cfg = harness.load_stage_config(spec["config"], k, spec["res"], spec["batch"], spec["ckpt"], spec["extra"])
    bench = harness.build_stage_bench(cfg, k, dev, torch.bfloat16 if spec["dtype"] == "bf16" else None)
    # AdamW creates its moments at the first step, after the activations are freed: allocate them now so
    # even a single timed step peaks with them, as every later training step does.
    for p in bench.model.parameters():
        p.grad = torch.zeros_like(p)
    bench.opt.step()
    bench.opt.zero_grad(set_to_none=True)
    # The first step is the warmup; then best of up to `repeats` more while they fit in `budget_s`. Small
    # sizes cannot predict a large one's step time (their 2-D X-ray side dominates), so the child decides
    # from the step it has seen. A step that takes most of the budget is reported alone, without warmup
    # (AdamW's state exists already, so it still peaks like a later step).
    first, times = harness.timed(bench.step, 1, 0)[0], []
    while (spec["timed"] and len(times) < spec["repeats"]
           and first + sum(times) + max([first] + times) <= spec["budget_s"]):
        times += harness.timed(bench.step, 1, 0)
    return {"res": spec["res"], "params": bench.params, "tokens": bench.tokens, "patch": cfg.stages[k].patch_size,
            "times_s": times or [first], "best_s": min(times or [first]), "warmup": int(bool(times)),
            "timed": spec["timed"],
            "base_mb": base, "peak_mb": harness.peak_memory_mb(dev), "threads": torch.get_num_threads(),
            "status": "measured"}


def run_child(spec: dict) -> dict:
    """One point in a fresh interpreter; a child killed by a signal (the OOM killer) is reported, not raised."""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(spec["threads"])} if spec.get("threads") else {}))
    try:
        return harness.run_child([str(Path(__file__).resolve()), "--child", json.dumps(spec)], env=env)
    except harness.ChildFailed as err:
        if err.signal is None:
            raise RuntimeError(f"bench_scaling child {spec} failed:\n{err.stderr[-2000:]}") from None
        return {"status": "failed", "reason": f"killed by signal {err.signal} (out of memory?)"}


def count_params(config: str, stage: int, res: int, extra: dict) -> int:
    """Parameters of the stage at edge `res`, built on the meta device (no memory, no compute)."""
    import torch
    from hybrid_vit_cascade.models.stage import CascadeStage

    cfg = harness.load_stage_config(config, stage, res, extra=extra)
    d = cfg.data
    with torch.device("meta"):
        model = CascadeStage(cfg.stages[stage], stage, list(d.views), d.geometry.det_pixels, d.geometry, d.fov_mm)
    return sum(p.numel() for p in model.parameters())


def signature(spec: dict) -> str:
    """What a measurement depends on: the built stage, data geometry, batch, prev size, dtype, device.

    progressive stage 2 built at 128³ and stage 1 share one: the same model on the same input shapes.
    """
    k = spec["stage"]
    cfg = harness.load_stage_config(spec["config"], k, spec["res"], spec["batch"], spec["ckpt"], spec["extra"])
    st = {key: v for key, v in cfg.stages[k].model_dump().items() if key not in ("name", "num_epochs")}
    prev = cfg.stages[k - 1].resolution if k > 0 else None
    return json.dumps([st, k > 0, prev, cfg.data.model_dump(), spec["batch"], spec["dtype"], spec["device"]],
                      sort_keys=True, default=str)


def run_series(name: str, config: str, stage: int, sizes, dtype: str, ckpt: bool, args, cache: dict,
               extra: dict | None = None, timed: bool = True, batch: int = 1) -> dict:
    """Measure `sizes` smallest first; a size predicted over the memory limit (or > --max-edge) is extrapolated."""
    extra, points = dict(extra or {}), []
    for res in sizes:
        measured = [p for p in points if p["status"] == "measured"]
        pred = extrapolate(measured, res) if len(measured) >= 2 else None
        reason = None
        if args.max_edge and res > args.max_edge:
            reason = f"above --max-edge {args.max_edge}"
        elif pred and pred["peak_mb"] > args.mem_limit_gb * 1024:
            reason = f"predicted peak {pred['peak_mb'] / 1024:.1f} GB > --mem-limit-gb {args.mem_limit_gb:g}"
        if reason is None:
            spec = {"config": config, "stage": stage, "res": res, "batch": batch, "ckpt": ckpt, "dtype": dtype,
                    "extra": extra, "device": args.device, "timed": timed,
                    # The smoke checks code paths, not speed: one thread keeps it in seconds beside a busy
                    # process (two threads spin-wait on each other there, threads.py).
                    "threads": 1 if args.smoke else None, "repeats": 2 if args.smoke else 3, "budget_s": 25.0}
            key = signature(spec)
            if key not in cache:
                print(f"[scaling] {config} stage {stage} {res}³ {name}"
                      + (f" (predicted {pred['peak_mb'] / 1024:.1f} GB)" if pred else ""), file=sys.stderr, flush=True)
                cache[key] = run_child(spec)
            if cache[key]["status"] == "measured":
                points.append(cache[key])
                continue
            reason = cache[key]["reason"]
        if pred is None:
            points.append({"res": res, "status": "not measured", "reason": f"{reason}; < 2 smaller sizes measured"})
        else:
            points.append({**pred, "params": count_params(config, stage, res, extra), "status": "extrapolated",
                           "reason": reason})
    out = {"name": name, "config": config, "stage": stage, "dtype": dtype, "ckpt": ckpt, "extra": extra,
           "batch": batch, "points": points}
    measured = [p for p in points if p["status"] == "measured"]
    if len(measured) >= 2:  # the exponents: every measured size, least squares in log-log
        vox = [p["res"] ** 3 for p in measured]
        out["fit_memory"] = fit_power(vox, [p["peak_mb"] - p["base_mb"] for p in measured])
        if all(p["timed"] for p in measured):
            out["fit_time"] = fit_power(vox, [p["best_s"] for p in measured])
    return out


def single_stage_arch(config: str) -> dict:
    """The last stage's architecture fields, to build it as a first stage (no `prev`) at any edge."""
    last = harness.load_stage_config(config, 0).stages[-1].model_dump()
    return {k: v for k, v in last.items() if k not in ("name", "volume_size", "patch_size", "num_epochs",
                                                       "grad_checkpointing")}


def match_single_stage(config: str, target: int, res: int) -> dict:
    """The last stage's architecture as stage 0 at `res`, voxel_dim / vit_depth giving the count closest to `target`."""
    arch = single_stage_arch(config)
    best = None
    for depth in (arch["vit_depth"], 2 * arch["vit_depth"], 3 * arch["vit_depth"]):
        # Widths in steps of 16 per head (the shipped 256 = 4 heads × 64) up to 4× the shipped width.
        for dim in range(arch["voxel_dim"], 4 * arch["voxel_dim"] + 1, 16 * arch["num_heads"]):
            n = count_params(config, 0, res, {**arch, "voxel_dim": dim, "vit_depth": depth})
            err = abs(math.log(n / target))
            if best is None or err < best["log_error"] - 1e-9:  # ties keep the shallower, narrower model
                best = {"voxel_dim": dim, "vit_depth": depth, "params": n, "log_error": err, "ratio": n / target,
                        "extra": {**arch, "voxel_dim": dim, "vit_depth": depth}}
    return best


def _singles(result: dict) -> list[dict]:
    return [v for key, v in (result.get("claim") or {}).items() if key.startswith("single_")]


def plot(result: dict, path: Path) -> None:
    """Log-log step time and model memory vs voxels: filled = measured, hollow = extrapolated, dashed = fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for i, s in enumerate(result["sweep"] + _singles(result)):
        pts = [{**p, "model_gb": (p["peak_mb"] - p["base_mb"]) / 1024} for p in s["points"] if "peak_mb" in p]
        for ax, key, fit, unit in ((axes[0], "best_s", s.get("fit_time"), 1), (axes[1], "model_gb", s.get("fit_memory"), 1024)):
            for status, face in (("measured", f"C{i}"), ("extrapolated", "none")):
                xy = [(p["res"] ** 3, p[key]) for p in pts if p["status"] == status and p.get(key) is not None]
                if xy:
                    ax.loglog(*zip(*xy), "o", color=f"C{i}", mfc=face, label=f"{s['name']} ({status})")
            if fit and pts:
                xs = [p["res"] ** 3 for p in pts]
                ax.loglog(xs, [predict(fit, x) / unit for x in xs], "--", color=f"C{i}", lw=0.8)
    axes[0].set(xlabel="voxels", ylabel="seconds per training step", title="step time, batch 1")
    axes[1].set(xlabel="voxels", ylabel="GB", title="model memory (peak − process baseline), batch 1")
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- rendering
def _gb(mb) -> str:
    return "–" if mb is None else f"{mb / 1024:.2f}"


def _status(p: dict | None) -> str:
    if p is None:
        return "–"
    low = f"; power law alone {_gb(p['peak_mb_power_law'])} GB peak" if "peak_mb_power_law" in p else ""
    return p["status"] + (f" ({p['reason']}{low})" if p.get("reason") else "")


def _model(p: dict) -> float:
    return p["peak_mb"] - p["base_mb"]


def markdown(result: dict) -> str:
    """The BENCHMARKS.md section: scaling table, exponents, the seed's claim, the batch table, the command."""
    m = result["machine"]
    L = ["## Scaling with resolution and the seed's memory claim", "",
         f"`{result['command']}` — {m['cpu']}, {result['child_threads']} torch threads per point, torch {m['torch']}, "
         f"device {result['device']}, {result['wall_s'] / 60:.1f} min in all. "
         "One full training step (objective + DRR loss, backward, AdamW) of one stage built alone, batch 1, each "
         f"point in a fresh process. Peak = {result['memory_kind']}; model memory = peak − the process's baseline "
         "before the model was built. Measured = run here; extrapolated = not run (predicted over the memory limit "
         "or above --max-edge): memory from the larger of the line in voxels and the power law through the two "
         "largest measured sizes (estimates, no bounds: measure where it fits), time from the power law. "
         + ("bf16 autocast measured." if result["bf16_native"] else
            "bf16: not measured in this sweep (on a CPU it runs only with --bf16-cpu, to keep `make bench` within its "
            "budget; bench_train.py measures the 64³ stage under bf16 autocast where the device has native bf16); "
            "bf16 figures below are derived."),
         "", f"### Step time and peak memory: {result['sweep_label']}", "",
         "| edge | setting | params | patch | step (s) | peak (GB) | model memory (GB) | status |", "|---|---|---|---|---|---|---|---|"]
    for s in result["sweep"]:
        for p in s["points"]:
            if "peak_mb" not in p:
                L.append(f"| {p['res']}³ | {s['name']} | – | – | – | – | – | {_status(p)} |")
                continue
            t = "–" if p.get("best_s") is None else f"{p['best_s']:.2f}"
            L.append(f"| {p['res']}³ | {s['name']} | {p['params'] / 1e6:.1f} M | {p.get('patch', '–')} | {t} | "
                     f"{_gb(p['peak_mb'])} | {_gb(_model(p))} | {_status(p)} |")
    L += ["", "Fitted exponents (least squares of log value vs log voxels over the measured sizes):", "",
          "| setting | time exponent | model-memory exponent | sizes fitted |", "|---|---|---|---|"]
    for s in result["sweep"] + _singles(result):
        ft, fm = s.get("fit_time"), s.get("fit_memory")
        L.append(f"| {s['name']} | " + (f"{ft['exponent']:.2f}" if ft else "–") + " | "
                 + (f"{fm['exponent']:.2f} | {fm['sizes']} |" if fm else "– | < 2 |"))
    off, on = (next((s for s in result["sweep"] if s["name"] == n), None) for n in ("fp32", "fp32+ckpt"))
    if off and on:
        L += ["", "Activation checkpointing, fp32, at the sizes measured both ways:", "",
              "| edge | model memory off → on (GB) | reduction | step time on / off |", "|---|---|---|---|"]
        for p in off["points"]:
            q = point_at(on, p["res"])
            if q and p["status"] == q["status"] == "measured":
                L.append(f"| {p['res']}³ | {_gb(_model(p))} → {_gb(_model(q))} | {100 * (1 - _model(q) / _model(p)):.0f} % "
                         f"| {q['best_s'] / p['best_s']:.2f} |")
    if result.get("batch_check"):
        c = result["batch_check"]
        L += ["", f"Is memory linear in the batch? {c['res']}³ fp32 at batch 2: {_gb(c['measured_mb'])} GB model "
              f"memory measured, {_gb(c['predicted_mb'])} GB predicted as fixed + 2 × per-sample from batch 1."]
    if result.get("claim"):
        c, mt = result["claim"], result["claim"]["match"]
        L += ["", f"### The seed's claim: \"{CLAIM}\"", "",
              f"Single stage: the last stage of {c['config']} built as a first stage (no `prev`) at {c['res']}³ with "
              f"voxel_dim {mt['voxel_dim']}, vit_depth {mt['vit_depth']} (widths in steps of 16 per head at 1×/2×/3× "
              "the depth, the closest count taken): "
              f"{mt['params'] / 1e6:.1f} M parameters vs {c['cascade_params'] / 1e6:.1f} M for the three stages "
              f"({100 * (mt['ratio'] - 1):+.1f} %). Both with activation checkpointing. GPU memory = model memory "
              "(parameters, AdamW state, activations) without the CPU process baseline.", "",
              "| model | params | peak (GB) | GPU memory fp32 (GB) | GPU memory bf16 (GB) | status |", "|---|---|---|---|---|---|"]
        for key, label in (("stage3", "stage 3 alone (cached low-res `prev`)"), ("single", "single stage, full volume")):
            p, pb = point_at(c.get(f"{key}_fp32"), c["res"]), point_at(c.get(f"{key}_bf16"), c["res"])
            if p is None:
                L.append(f"| {label} | – | – | – | – | not measured |")
                continue
            fixed, act = split_memory(p)
            bf = f"bf16 {_status(pb)}" if pb else "bf16 derived (½ of the fp32 activations)"
            L.append(f"| {label} | {p['params'] / 1e6:.1f} M | {_gb(p['peak_mb'])} | {_gb(fixed + act)} | "
                     f"{_gb(_model(pb) if pb else fixed + act / 2)} | fp32 {_status(p)}; {bf} |")
    L += ["", "### Largest batch per GPU memory (each stage at its own resolution)", "",
          f"GPU memory = fixed (16 B/parameter: weights, grads, AdamW moments) + batch × per sample, "
          f"{GPU_RESERVE_GB:g} GB kept free for the CUDA context; 0 = batch 1 does not fit.", "",
          "| config | stage | edge | setting | fixed (GB) | per sample (GB) | " + " | ".join(f"{c} GB" for c in CAPS_GB)
          + " | status |", "|---|---|---|---|---|---|" + "---|" * len(CAPS_GB) + "---|"]
    for b in result["batch_table"]:
        L.append(f"| {b['config']} | {b['stage'] + 1} {b['name']} | {b['res']}³ | {b['setting']} | {b['fixed_gb']:.2f} "
                 f"| {b['per_sample_gb']:.2f} | " + " | ".join(str(b["max_batch"][str(c)]) for c in CAPS_GB)
                 + f" | {b['status']} |")
    return "\n".join(L) + "\n"


def gpu_table(result: dict) -> str:
    """README's GPU table: per stage, resolution, GPU memory at batch 1 and the largest batch per GPU size."""
    L = ["| config | stage | resolution | GPU memory at batch 1: bf16 + ckpt / fp32 + ckpt | largest batch at "
         + " / ".join(str(c) for c in CAPS_GB) + " GB (bf16 + ckpt) | from |", "|---|---|---|---|---|---|"]
    by = {(b["config"], b["stage"], b["setting"]): b for b in result["batch_table"]}
    for (config, stage, setting), b in by.items():
        fp = by.get((config, stage, "fp32+ckpt"))
        if setting == "bf16+ckpt" and fp:
            src = fp["status"] + ("" if b["status"] == fp["status"] else ", bf16 activations = ½ fp32 (derived)")
            L.append(f"| {config} | {b['name']} | {b['res']}³ | {b['gpu_gb_batch1']:.1f} GB / {fp['gpu_gb_batch1']:.1f} GB | "
                     + " / ".join(str(b["max_batch"][str(c)]) for c in CAPS_GB) + f" | {src} |")
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------- driver
def main(argv=None) -> dict:
    """Run the scaling sweep, the claim and the batch table; write the results JSON and plot, print markdown."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny_cpu stage 0 at 16³/24³, one setting")
    ap.add_argument("--mem-limit-gb", type=float, default=20.0, help="do not run a point predicted above this")
    ap.add_argument("--max-edge", type=int, default=None, help="measure no edge above this (extrapolate it)")
    ap.add_argument("--bf16-cpu", action="store_true", help="treat this CPU as having native bf16")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--gpu-table", action="store_true", help="print the README GPU table from the results JSON")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}
    import torch

    t0 = time.perf_counter()
    out_dir, name = args.out or harness.RESULTS, "scaling_smoke" if args.smoke else "scaling"  # smoke never overwrites
    if args.gpu_table:
        result = json.loads((out_dir / f"{name}.json").read_text())
        print(gpu_table(result))
        return result
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = args.device.startswith("cuda")
    bf16 = torch.cuda.is_bf16_supported() if cuda else args.bf16_cpu
    # The smoke's one setting is the plain one: checkpointing only recomputes through the same code.
    settings = [("fp32", False)] if args.smoke else [("fp32", False), ("fp32", True)]
    settings += [("bf16", False), ("bf16", True)] if bf16 and not args.smoke else []
    (config, k), sizes = (SMOKE_SWEEP, SMOKE_SIZES) if args.smoke else (SWEEP, SIZES)
    cache: dict = {}
    label = lambda d, c: d + ("+ckpt" if c else "")  # noqa: E731
    sweep = [run_series(label(d, c), config, k, sizes, d, c, args, cache) for d, c in settings]
    result = {"command": " ".join(["python benchmarks/bench_scaling.py", *(sys.argv[1:] if argv is None else argv)]),
              "device": args.device, "bf16_native": bf16, "mem_limit_gb": args.mem_limit_gb,
              "memory_kind": "max allocated (CUDA)" if cuda else "peak RSS (ru_maxrss)",
              "bf16_note": "bf16 autocast measured." if bf16 else
              f"bf16: not measured (no native bf16 on this {'GPU' if cuda else 'CPU'}).",
              "sweep_label": f"{config} stage {k + 1} ({harness.load_stage_config(config, k).stages[k].name}), token grid kept",
              "sweep": sweep, "claim": None, "batch_check": None}
    if not args.smoke:
        mid = SIZES[1]  # is memory linear in the batch? one batch-2 point at a size every run measures
        p1 = point_at(sweep[0], mid)
        p2 = point_at(run_series("fp32 batch 2", config, k, [mid], "fp32", False, args, cache, timed=False, batch=2), mid)
        if p1 and p2 and p1["status"] == p2["status"] == "measured":
            fixed, act = split_memory(p1)
            result["batch_check"] = {"res": mid, "measured_mb": _model(p2), "predicted_mb": fixed + 2 * act}
        res = SIZES[-1]
        total = sum(count_params(config, i, st.resolution, {})
                    for i, st in enumerate(harness.load_stage_config(config, 0).stages))
        match = match_single_stage(config, total, res)
        claim = {"config": config, "res": res, "cascade_params": total, "match": match}
        for d in ("fp32", "bf16") if bf16 else ("fp32",):  # both with checkpointing, as the 256³ stage ships
            claim[f"stage3_{d}"] = next(s for s in sweep if s["name"] == label(d, True))
            claim[f"single_{d}"] = run_series(f"single stage {label(d, True)}", config, 0, SIZES, d, True, args, cache,
                                              extra=match["extra"])
        result["claim"] = claim
    rows = []
    for cfg_name, i in SMOKE_ROWS if args.smoke else ROWS:
        st = harness.load_stage_config(cfg_name, i).stages[i]
        # A small stage is measured at its own edge directly; a larger one after the sizes below it, so its
        # peak is predicted before it runs. Checkpointing on only (the sweep shows what it saves): the
        # budget of `make bench` has no room for a second pass over the 128³ stages.
        row_sizes = [r for r in sizes if r < st.resolution and st.resolution > sizes[1]] + [st.resolution]
        series = [run_series(label(d, c), cfg_name, i, row_sizes, d, c, args, cache, timed=False)
                  for d, c in [s for s in settings if s[1]] or settings]
        rows.append({"config": cfg_name, "stage": i, "name": st.name, "res": st.resolution, "series": series})
    result["rows"], result["batch_table"] = rows, batch_rows(rows, bf16)
    threads = {p.get("threads") for s in sweep for p in s["points"] if p.get("threads")}
    result["child_threads"] = ", ".join(map(str, sorted(threads))) or "–"
    result["wall_s"] = time.perf_counter() - t0
    path = harness.write_result(name, result, out_dir)
    result = json.loads(path.read_text())  # with the machine facts markdown() reads
    plot(result, out_dir / f"{name}.png")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()

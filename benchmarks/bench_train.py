"""Training step per stage: time, memory, model FLOPs, MFU against a measured matmul peak, and where the time goes.

Every stage of the shipped configs is built alone with its full training step (benchmarks/harness.py:
objective + DRR physics loss, backward, AdamW; synthetic inputs, so no data loading is timed), batch 1
and fp32 unless told. Each (config, stage) runs in a fresh subprocess that prints one JSON line, because
peak RSS (`ru_maxrss`) is a process high-water mark; on CUDA the peak is `torch.cuda.max_memory_allocated`.

Per stage, in this order: one step under `FlopCounterMode` (untimed; also the warm-up) counts the model
FLOPs of forward + backward — matmuls, convolutions and attention only (grid_sample, elementwise ops and
the projector count nothing), with the CPU flash-attention kernels, which torch's counter leaves at 0,
counted by torch's own SDPA formulas (with activation checkpointing the recomputed forward counts too);
then `--steps` timed steps (median; fewer if `--stage-seconds` runs out); then `--profile-steps` steps
under torch.profiler. MFU = (FLOPs / median step time) / the fp32 `torch.mm` peak measured in the parent
before and after the stages (the better of the two).

Where the time goes: `--profile-steps` steps under torch.profiler with a label around each model part,
backward attributed to the module whose forward created the autograd node (benchmarks/step_profile.py
says how); the counted step splits the FLOPs the same way, giving each part's own GFLOP/s.

Stages whose resolution exceeds `--probe-above` are first probed at `--probe-res` (two small
resolutions, same token grid, each in its own process); peak memory fitted linearly in voxels
estimates the full stage, which is skipped when the estimate exceeds `--mem-limit-gb`. A stage
predicted to end past `--budget-s` is skipped too (run_all.py stops a script at its budget).

    python benchmarks/bench_train.py                      # every stage of the three configs, ≤ --budget-s 450 s
    python benchmarks/bench_train.py --configs tiny_cpu quick_2stage:0 --steps 5
    python benchmarks/bench_train.py --smoke              # tiny_cpu stage 0, in-process, seconds
    python benchmarks/bench_train.py --device cuda
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (CONFIGS, ChildFailed, build_stage_bench, load_stage_config, machine,  # noqa: E402
                     native_bf16, peak_memory_mb, run_child, write_result)

from step_profile import CATEGORIES, Scopes, attribute, flop_mapping, module_categories  # noqa: E402

import torch  # noqa: E402

DEFAULT_CONFIGS = ["tiny_cpu", "quick_2stage", "progressive_3stage"]
MFU_TARGET = 0.35  # issue 12: the 64³ step at ≥ 35 % of the measured matmul peak
TARGET_RES = 64


# ---------------------------------------------------------------- measurements
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, n: int = 2048, repeats: int = 5) -> dict:
    """fp32 `torch.mm` of two n×n matrices: best GFLOP/s over ≥ `repeats` calls and ≥ 0.5 s (MFU's denominator)."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.rand(n, n, generator=g).to(device) for _ in range(2))
    torch.mm(a, b)  # warm-up: thread pool start, allocation
    best, calls, t_end = float("inf"), 0, time.perf_counter() + 0.5
    while calls < repeats or time.perf_counter() < t_end:  # ≥ 0.5 s: small sizes need more calls
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best, calls = min(best, time.perf_counter() - t0), calls + 1
    return {"n": n, "best_s": best, "gflops": 2 * n**3 / best / 1e9}


def run_stage(spec: dict) -> dict:
    """Measure one (config, stage) in this process: FLOPs, timed steps, profile, peak memory."""
    from torch.utils.flop_counter import FlopCounterMode

    device, k = spec["device"], spec["stage"]
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    cfg = load_stage_config(spec["config"], k, resolution=spec.get("resolution"), batch=spec["batch"])
    bf16 = spec.get("dtype") == "bf16"
    bench = build_stage_bench(cfg, k, device, autocast_dtype=torch.bfloat16 if bf16 else None)
    s = cfg.stages[k]
    res = {"config": spec["config"], "stage": k, "name": s.name, "resolution": s.resolution, "patch": s.patch_size,
           "tokens": bench.tokens, "params": bench.params, "batch": bench.batch,
           "grad_checkpointing": s.grad_checkpointing, "threads": torch.get_num_threads(),
           "dtype": "bf16" if bf16 else "fp32"}
    if spec.get("memory_only"):  # a probe: its peak memory over two steps (the second can add ~100 MB
        for _ in range(2):       # of allocator slack on CPU)
            bench.step()
        _sync(device)
        return {**res, "peak_mem_mb": peak_memory_mb(device)}
    labels = module_categories(bench.model)
    fc = FlopCounterMode(display=False, custom_mapping=flop_mapping())
    scopes = Scopes(bench.model, labels, fc.flop_registry)
    try:
        with fc, scopes:
            bench.step()
    finally:
        scopes.remove()
    flops = fc.get_total_flops()
    if sum(scopes.flops.values()) != flops:  # both modes saw the same ops through the same formulas
        raise RuntimeError(f"FLOPs per category sum to {sum(scopes.flops.values())}, FlopCounterMode counted {flops}")
    times, t_start = [], time.perf_counter()
    while len(times) < spec["steps"] and (not times or time.perf_counter() - t_start < spec["stage_seconds"]):
        _sync(device)
        t0 = time.perf_counter()
        bench.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    n_prof = spec["profile_steps"] if step_s < 5 else 1  # a 128³ step is tens of seconds: one is enough
    acts = [torch.profiler.ProfilerActivity.CPU, *([torch.profiler.ProfilerActivity.CUDA] if cuda else [])]
    prof_scopes = Scopes(bench.model, labels, {}, record=True)
    try:
        with torch.profiler.profile(activities=acts) as prof:
            t0 = time.perf_counter()
            for _ in range(n_prof):
                with torch.profiler.record_function("hvc::step"):  # its self time: Python between ops
                    bench.step()
            _sync(device)
            prof_s = (time.perf_counter() - t0) / n_prof
    finally:
        prof_scopes.remove()
    us = attribute(prof.events(), prof_scopes, cuda)
    total = sum(us.values())
    return {**res, "step_s": step_s, "step_s_all": times, "s_per_sample": step_s / bench.batch,
            "voxels_per_s": bench.batch * s.resolution**3 / step_s, "peak_mem_mb": peak_memory_mb(device),
            "memory_kind": "cuda max_memory_allocated" if cuda else "peak RSS",
            "flops_per_step": flops, "achieved_gflops": flops / step_s / 1e9,
            "profile": {"steps": n_prof, "profiled_step_s": prof_s,
                        "percent": {c: 100 * us[c] / total for c in CATEGORIES},
                        "ms_per_step": {c: us[c] / 1e3 / n_prof for c in CATEGORIES},
                        "flops": scopes.flops}}


# ---------------------------------------------------------------- orchestration
def _child(spec: dict, timeout: float) -> dict:
    """run_stage in a fresh process (its own ru_maxrss); a failure comes back as {"error": ...}."""
    try:
        return run_child([str(Path(__file__).resolve()), "--child", json.dumps(spec)], timeout=timeout)
    except ChildFailed as err:
        return {"error": err.reason}


def estimate_memory(base: dict, args) -> dict:
    """Peak memory of the full stage, fitted linearly in voxels over probes at --probe-res (own processes)."""
    pts = []
    for r in args.probe_res:
        out = _child({**base, "resolution": r, "memory_only": True}, args.timeout)
        if "error" in out:
            return {"error": f"probe at {r}³: {out['error']}"}
        pts.append((r**3, out["peak_mem_mb"]))
    (v1, m1), (v2, m2) = pts[0], pts[-1]
    slope = (m2 - m1) / (v2 - v1) if v2 != v1 else m1 / v1
    R = base["full_resolution"]
    return {"probes": [{"resolution": round(v ** (1 / 3)), "peak_mem_mb": m} for v, m in pts],
            "est_mem_mb": m2 + slope * (R**3 - v2)}


def measure(config: str, k: int, args, done: list[dict], t_run: float, dtype: str = "fp32") -> dict:
    """One stage's row: measured, or skipped by the memory estimate or the time budget."""
    spec = {"config": config, "stage": k, "batch": args.batch, "device": args.device, "steps": args.steps,
            "stage_seconds": args.stage_seconds, "profile_steps": args.profile_steps, "dtype": dtype}
    R = load_stage_config(config, k).stages[k].resolution
    row, t0 = {"config": config, "stage": k, "resolution": R, "memory_estimate": None, "dtype": dtype}, time.perf_counter()
    if R > args.probe_above and not args.inprocess:
        row["memory_estimate"] = est = estimate_memory({**spec, "full_resolution": R}, args)
        if "error" in est:  # what failed small will not run big: do not risk the machine's memory
            return {**row, "skipped": f"memory probe failed: {est['error']}"}
        if est["est_mem_mb"] > args.mem_limit_gb * 1024:
            return {**row, "skipped": f"est. {est['est_mem_mb'] / 1024:.1f} GB > limit {args.mem_limit_gb:g} GB"}
    # Time budget (run_all stops a script at its budget): ~3 steps (FLOP count + warm-up, timed,
    # profiled) at the step time of the largest stage measured so far scaled by voxels — an
    # overestimate, since the token part of the step does not grow with the volume.
    prior, elapsed = [r for r in done if "step_s" in r and r["resolution"] <= R], time.perf_counter() - t_run
    if prior:
        near = max(prior, key=lambda r: r["resolution"])
        need = 3 * near["step_s"] * (R / near["resolution"]) ** 3
        if elapsed + need > args.budget_s:
            return {**row, "skipped": f"time budget: ~{need:.0f} s needed after {elapsed:.0f} s of {args.budget_s:g} s"}
    out = run_stage(spec) if args.inprocess else _child(spec, args.timeout)
    return {**row, **out, "wall_s": time.perf_counter() - t0}


def n_stages(config: str) -> int:
    """Number of stages of config/<config>.json."""
    from hybrid_vit_cascade.config import load_config

    return len(load_config(CONFIGS / f"{config}.json").stages)


def main(argv=None) -> dict:
    """Run the benchmark, write benchmarks/results/train.json, return its payload."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="names in config/, or name:k[,k] for stages")
    ap.add_argument("--stages", type=int, nargs="*", help="0-based stage indices (default: all)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per stage (median reported)")
    ap.add_argument("--stage-seconds", type=float, default=45.0, help="stop timing a stage after this (≥ 1 step)")
    ap.add_argument("--profile-steps", type=int, default=2, help="profiled steps (1 when a step takes > 5 s)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="skip stages predicted to end past this")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mem-limit-gb", type=float, default=20.0, help="skip stages estimated above this peak")
    ap.add_argument("--probe-above", type=int, default=64, help="probe memory of stages with resolution above this")
    ap.add_argument("--probe-res", type=int, nargs=2, default=[32, 64])
    ap.add_argument("--mm-size", type=int, default=2048)
    ap.add_argument("--bf16", nargs="*", default=["quick_2stage:0"],
                    help="name:k stages measured again under bf16 autocast (only where the device has native bf16)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per subprocess")
    ap.add_argument("--inprocess", action="store_true", help="no subprocesses, no memory probes (peak: this process's)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny_cpu stage 0, 1 step, in-process: a CI check (writes nothing, so train.json stays)")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/train.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return run_stage(json.loads(args.child))
    if args.smoke:
        args.configs, args.stages, args.steps, args.profile_steps = ["tiny_cpu"], [0], 1, 1
        args.inprocess, args.mm_size = True, 1024
    t_run, load_before = time.perf_counter(), os.getloadavg()[0]  # other processes' load skews every number
    peak_before = matmul_peak(args.device, args.mm_size)
    rows = []
    for entry in args.configs:
        config, _, only = entry.partition(":")  # "quick_2stage:0" = that config's stage 0 only
        for k in range(n_stages(config)):
            if (only and str(k) not in only.split(",")) or (args.stages is not None and k not in args.stages):
                continue
            out = measure(config, k, args, rows, t_run)
            rows.append(out)
            print(f"[bench_train] {config} stage {k}: " + (out.get("error") or out.get("skipped") or
                  f"{out['step_s']:.3f} s/step, {out['peak_mem_mb']:.0f} MB"), file=sys.stderr)
    has_bf16 = native_bf16(args.device)
    for entry in (args.bf16 if has_bf16 and not args.smoke else []):
        config, _, ks = entry.partition(":")
        for k in (int(x) for x in ks.split(",")):
            out = measure(config, k, args, rows, t_run, dtype="bf16")
            rows.append(out)
            print(f"[bench_train] {config} stage {k} bf16: " + (out.get("error") or out.get("skipped") or
                  f"{out['step_s']:.3f} s/step"), file=sys.stderr)
    peak_after = matmul_peak(args.device, args.mm_size)
    peak = max(peak_before["gflops"], peak_after["gflops"])
    for r in rows:
        if "achieved_gflops" in r and r.get("dtype", "fp32") == "fp32":  # MFU against the fp32 peak only
            r["mfu"] = r["achieved_gflops"] / peak
    payload = {"device": args.device, "dtype": "fp32", "native_bf16": has_bf16, "batch": args.batch, "smoke": args.smoke,
               "inprocess": args.inprocess, "mem_limit_gb": args.mem_limit_gb,
               "command": "python benchmarks/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "matmul_peak": {"n": args.mm_size, "gflops": peak, "gflops_before": peak_before["gflops"],
                               "gflops_after": peak_after["gflops"]},
               "mfu_target": MFU_TARGET, "stages": rows, "machine": machine(),
               "load_avg_1min": {"before": load_before, "after": os.getloadavg()[0]}}
    if not (args.no_write or args.smoke):
        write_result("train", payload)
    return payload


# ---------------------------------------------------------------- report
def _largest_cost(fp: dict, top: str, done: list[dict]) -> list[str]:
    """The "largest cost ≥ 2× faster" target: the same stage under bf16 autocast, category by category."""
    bf = [r for r in done if r.get("dtype") == "bf16" and (r["config"], r["stage"]) == (fp["config"], fp["stage"])]
    if not bf:
        return ["", f"Largest cost ({top}) under bf16 autocast: not measured (the device has no native bf16)."]
    b = bf[0]
    ms_f, ms_b = fp["profile"]["ms_per_step"][top], b["profile"]["ms_per_step"][top]
    x = ms_f / ms_b if ms_b > 0 else float("inf")
    verdict = "met" if x >= 2 else "missed"
    return ["", f"**Largest cost ≥ 2× faster: {verdict}** — {top} takes {ms_f:.0f} ms per profiled fp32 step and "
            f"{ms_b:.0f} ms under bf16 autocast ({x:.2f}×); the whole step {fp['step_s']:.3f} → {b['step_s']:.3f} s "
            f"({fp['step_s'] / b['step_s']:.2f}×), peak memory {_gb(fp['peak_mem_mb'])} → {_gb(b['peak_mem_mb'])} GB. "
            "In fp32 the attention kernels already run near the fp32 matmul peak (the per-category GFLOP/s above), "
            "so no fp32 rewrite of the same FLOPs can halve them; bf16 matmuls (native on this device) do."]



def _gb(mb: float) -> str:
    return f"{mb / 1024:.2f}"


def markdown(result: dict) -> str:
    """The BENCHMARKS.md section of a train.json payload: step table, profile table, MFU target."""
    m, mm, la = result.get("machine", {}), result["matmul_peak"], result.get("load_avg_1min", {})
    mem = "peak RSS of a fresh process per stage" if not result.get("inprocess") else "this process's peak RSS"
    if result["device"].startswith("cuda"):
        mem = "torch.cuda.max_memory_allocated"
    smoke = ["**Smoke run** (tiny, in-process, one step): a check that the script runs, not numbers to quote.", ""]
    out = ["## Training step per stage (`benchmarks/bench_train.py`)", ""] + (smoke if result.get("smoke") else [])
    out += [f"`{result['command']}` — {m.get('cpu', '?')}, {m.get('threads', '?')} torch threads, "
            f"torch {m.get('torch', '?')}, {m.get('date', '?')}. {result['device']}, {result['dtype']}, "
            f"batch {result['batch']}, synthetic inputs (`benchmarks/harness.py`: objective + DRR physics loss, "
            f"backward, AdamW). Memory: {mem}. FLOPs: `FlopCounterMode` over one forward + backward (matmul, conv, "
            f"attention). MFU = achieved FLOP/s ÷ the fp32 matmul peak of this run: `torch.mm` {mm['n']}² "
            f"(best of ≥ 5 calls), **{mm['gflops']:.1f} GFLOP/s** (before the stages {mm['gflops_before']:.1f}, "
            f"after {mm['gflops_after']:.1f}). 1-min load average before / after the run: "
            f"{la.get('before', float('nan')):.2f} / {la.get('after', float('nan')):.2f}.", "",
            "| config | stage | volume | tokens | params (M) | s/step | s/sample | voxels/s | peak mem (GB) "
            "| GFLOP/step | GFLOP/s | MFU |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    done = [r for r in result["stages"] if "step_s" in r]
    for r in result["stages"]:
        name = (f" {r['name']}" if "name" in r else "") + (" (bf16 autocast)" if r.get("dtype") == "bf16" else "")
        head = f"| {r['config']} | {r['stage']}{name} | {r.get('resolution', '?')}³ |"
        if "step_s" not in r:
            why = r.get("skipped") or f"failed: {r.get('error', '?')}"
            out.append(head + f" {why} |" + " |" * 8)
            continue
        out.append(head + f" {r['tokens']} | {r['params'] / 1e6:.2f} | {r['step_s']:.3f} | {r['s_per_sample']:.3f} | "
                   f"{r['voxels_per_s']:.3g} | {_gb(r['peak_mem_mb'])} | {r['flops_per_step'] / 1e9:.1f} | "
                   f"{r['achieved_gflops']:.1f} | " + (f"{100 * r['mfu']:.1f} % |" if "mfu" in r else "— |"))
    if any(r.get("grad_checkpointing") for r in done):
        out += ["", "Stages with activation checkpointing count their recomputed forward in the FLOPs."]
    est = [r for r in result["stages"] if r.get("memory_estimate") and "est_mem_mb" in r["memory_estimate"]]
    if est:
        parts = [f"{r['config']} stage {r['stage']} est. {_gb(r['memory_estimate']['est_mem_mb'])} GB"
                 + (f" (measured {_gb(r['peak_mem_mb'])})" if "peak_mem_mb" in r else "") for r in est]
        out += ["", "Memory estimates (probes at smaller volumes, same token grid, peak linear in voxels): "
                + "; ".join(parts) + "."]
    if done:
        out += ["", "Where the time goes (% of the profiled step, forward + backward; backward ops attributed to the "
                "module whose forward op created their autograd node; optimizer = AdamW step + zero_grad; other = "
                "noising, losses, conditioning, gradient accumulation and Python between ops):", "",
                "| config | stage | " + " | ".join(CATEGORIES) + " |", "|---|---|" + "---|" * len(CATEGORIES)]
        for r in done:
            p = r["profile"]["percent"]
            tag = " bf16" if r.get("dtype") == "bf16" else ""
            out.append(f"| {r['config']} | {r['stage']}{tag} | " + " | ".join(f"{p[c]:.1f}" for c in CATEGORIES) + " |")
    at = [r for r in done if r["resolution"] == TARGET_RES and "mfu" in r]
    if at:
        r = max(at, key=lambda r: r["mfu"])
        prof = r["profile"]
        top = max(CATEGORIES, key=lambda c: prof["percent"][c])
        verdict = "met" if r["mfu"] >= MFU_TARGET else "missed"
        out += ["", f"**MFU target (≥ {100 * MFU_TARGET:.0f} % at {TARGET_RES}³): {verdict}** — "
                f"{100 * r['mfu']:.1f} % ({r['config']} stage {r['stage']}); the largest cost is {top} "
                f"({prof['percent'][top]:.1f} % of the step). Per category of that step:", "",
                "| category | % time | % FLOPs | GFLOP/s |", "|---|---|---|---|"]
        total = sum(prof["flops"].values()) or 1.0
        for c in CATEGORIES:
            ms = prof["ms_per_step"][c]
            rate = prof["flops"][c] / (ms / 1e3) / 1e9 if ms > 0 else 0.0
            out.append(f"| {c} | {prof['percent'][c]:.1f} | {100 * prof['flops'][c] / total:.1f} | {rate:.1f} |")
        out += ["", "(Per-category GFLOP/s divides the category's counted FLOPs by its time in the profiled step, "
                "which runs slower than an unprofiled one by the profiler's overhead: "
                f"{prof['profiled_step_s']:.3f} s vs {r['step_s']:.3f} s here.)"]
        out += _largest_cost(r, top, done)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if "--child" in sys.argv:
        print(json.dumps(main()))
    else:
        res = main()
        print(markdown(res))

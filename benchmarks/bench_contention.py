"""Training throughput on a shared machine: alone vs beside busy processes, before and after the thread policy.

One training step of a stage (benchmarks/harness.py: objective + DRR loss, backward, AdamW) runs in
a loop for `--seconds` in a fresh subprocess, four ways: the thread count fixed at every CPU
(`HVC_THREADS=<n>`, what torch does by default — the behaviour before threads.py) or the CLI's
adaptive policy (`hybrid_vit_cascade.threads`, HVC_THREADS unset), each alone and beside `--busy`
processes running `python -c "while True: pass"` (started before the child, so the measured window
includes the policy's reaction). Throughput is steps/s over the whole window after `--warmup` (3) untimed steps.

    python benchmarks/bench_contention.py [--seconds 20] [--busy 1] [--config tiny_cpu --stage 0]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import run_child, write_result  # noqa: E402

from hybrid_vit_cascade.threads import cpu_set  # noqa: E402

TARGET_BUSY_FRACTION = 0.5  # issue 12: beside one busy process, ≥ 50 % of the quiet throughput
TARGET_QUIET_LOSS = 0.10  # and the quiet throughput within 10 % of before
BUSY_LOOP = "while True: pass"


def child(config: str, stage: int, seconds: float, warmup: int = 3) -> dict:
    """Run training steps for `seconds` under the installed thread policy; steps/s and thread history."""
    from hybrid_vit_cascade import threads

    gov = threads.configure()  # before torch is imported, as the CLI does
    import torch

    from harness import build_stage_bench, load_stage_config

    bench = build_stage_bench(load_stage_config(config, stage), stage)
    for _ in range(warmup):
        bench.step()
    counts, n, t0 = [], 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        bench.step()
        n += 1
        counts.append(torch.get_num_threads())
    dt = time.perf_counter() - t0
    return {"steps": n, "seconds": dt, "steps_per_s": n / dt, "threads_first": counts[0], "threads_last": counts[-1],
            "thread_changes": gov.changes, "policy_line": threads.describe()}


def run_case(policy: str, busy: int, args) -> dict:
    """One subprocess measurement with `busy` competing spinners."""
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    env.pop("HVC_THREADS", None)
    if policy == "fixed":
        env["HVC_THREADS"] = str(len(cpu_set()))
    spinners = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(busy)]
    try:
        time.sleep(0.5 if busy else 0)  # the competitors are running before training starts
        res = run_child([__file__, "--child", "--config", args.config, "--stage", str(args.stage),
                         "--seconds", str(args.seconds), "--warmup", str(args.warmup)], env=env)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    return {"policy": policy, "busy": busy, **res}


def main(argv=None) -> dict:
    """Measure the four cases and write benchmarks/results/contention.json."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny_cpu")
    p.add_argument("--stage", type=int, default=0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--busy", type=int, default=1, help="competing busy processes in the contended runs")
    p.add_argument("--smoke", action="store_true", help="0.3-second runs (CI: the plumbing, not the numbers)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before the window")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default="contention")
    p.add_argument("--results", default=None, help="folder for the JSON (default benchmarks/results)")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.config, args.stage, args.seconds, args.warmup)))
        return {}
    if args.smoke:
        args.seconds, args.warmup = 0.3, 0
    rows = [run_case(pol, busy, args) for pol in ("fixed", "auto") for busy in (0, args.busy)]
    by = {(r["policy"], r["busy"]): r["steps_per_s"] for r in rows}
    quiet_before = by[("fixed", 0)]
    summary = {
        "busy_fraction_before": by[("fixed", args.busy)] / quiet_before,
        "busy_fraction_after": by[("auto", args.busy)] / quiet_before,
        "quiet_change": by[("auto", 0)] / quiet_before - 1,
    }
    summary["busy_target_met"] = summary["busy_fraction_after"] >= TARGET_BUSY_FRACTION
    summary["quiet_target_met"] = summary["quiet_change"] >= -TARGET_QUIET_LOSS
    payload = {"config": args.config, "stage": args.stage, "seconds": args.seconds, "busy": args.busy,
               "smoke": args.smoke, "rows": rows, "summary": summary}
    write_result(args.out, payload, args.results)
    return payload


def markdown(result: dict) -> str:
    """The BENCHMARKS.md section."""
    s, busy = result["summary"], result["busy"]
    lines = [
        "## Shared machine: training beside busy processes",
        "",
        f"`python benchmarks/bench_contention.py --seconds {result['seconds']:g} --busy {busy}` — "
        f"{result['config']} stage {result['stage']} training steps for {result['seconds']:g} s per row, "
        f"each in a fresh process; \"busy\" = {busy} × `python -c \"{BUSY_LOOP}\"` started before it. "
        "fixed = every CPU (torch's default, the behaviour before); auto = the CLI's policy "
        "(`src/hybrid_vit_cascade/threads.py`; `HVC_THREADS=N` or `OMP_NUM_THREADS=N` fix N instead).",
        "",
        "| threads | busy processes | steps/s | threads at end | changes |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['policy']} | {r['busy']} | {r['steps_per_s']:.2f} | {r['threads_last']} | "
                     f"{r['thread_changes']} |")
    ok = lambda m: "met" if m else "missed"  # noqa: E731
    lines += [
        "",
        f"Beside {busy} busy process(es): {100 * s['busy_fraction_before']:.0f} % of the quiet throughput before, "
        f"{100 * s['busy_fraction_after']:.0f} % with the policy (target ≥ {100 * TARGET_BUSY_FRACTION:.0f} %: "
        f"{ok(s['busy_target_met'])}). Quiet: {100 * s['quiet_change']:+.1f} % vs before "
        f"(target within −{100 * TARGET_QUIET_LOSS:.0f} %: {ok(s['quiet_target_met'])}).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""`make bench`: every benchmark script in its own subprocess, then BENCHMARKS.md regenerated from scratch.

Each script runs alone in a fresh Python process (so one's peak RSS does not leak into the next one's
`ru_maxrss`), with a timeout of twice its budget. Every script exposes `main(argv=None) -> dict`
(writes benchmarks/results/<name>.json) and `markdown(result) -> str` (its BENCHMARKS.md section);
the document is assembled only from those JSON files. A script that failed this time (or earlier, when
its JSON is older than the failure) gets a section saying so with its error line — never the old numbers.
The clinical proxy (benchmarks/clinical_proxy.py) needs the demo's trained checkpoints, so it is not
re-run; its section is rendered from its committed JSON and says where those numbers come from.

    python benchmarks/run_all.py                         # every script (≈ 30 min on 2 CPU cores)
    python benchmarks/run_all.py --only train,scaling    # re-run these, the others from their JSON
    python benchmarks/run_all.py --render                # only re-assemble BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, ROOT, machine, write_result  # noqa: E402

BENCH = ROOT / "benchmarks"


@dataclass(frozen=True)
class Bench:
    """One benchmark script: its results name, file, `make bench` arguments and time budget."""

    name: str  # results/<name>.json
    script: str
    args: tuple = field(default_factory=tuple)
    budget_s: float = 300.0


# Order: the cheap projector first; sampling last (it trains its own small model). Budgets sum to 33 min;
# DRR: the n = P diagonal incl. 256³/256² (~3 min) — the full 9-row grid takes ~13 min and is run by hand.
SCRIPTS = (
    Bench("drr", "bench_drr.py", ("--quick", "--sizes", "64", "128", "256", "--pixels", "64", "128", "256",
                                  "--all-pixels-at", "256"), 300),
    Bench("train", "bench_train.py", ("--budget-s", "400"), 420),
    Bench("scaling", "bench_scaling.py", (), 660),  # 256³ with checkpointing: two ~2.5-min steps
    Bench("contention", "bench_contention.py", (), 120),
    Bench("sampling", "bench_sampling.py", ("--budget", "420"), 450),
)
STATUS = "run_all"  # results/run_all.json: how each script's last `make bench` run went


def load_bench(script: str):
    """Import benchmarks/<script> as a module (for its markdown())."""
    path = BENCH / script
    spec = importlib.util.spec_from_file_location(f"hvc_bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def error_line(text: str) -> str:
    """The last non-empty line of a failed script's stderr (the exception message)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output on stderr)"


def run_script(b: Bench, log) -> dict:
    """Run one script in a subprocess; its status entry (ok / failed / timeout, wall time, error line)."""
    cmd = [sys.executable, str(BENCH / b.script), *b.args]
    shown = " ".join(["python", f"benchmarks/{b.script}", *b.args])
    log(f"$ {shown}  (budget {b.budget_s / 60:.0f} min)")
    t0 = time.perf_counter()
    entry = {"command": shown, "budget_s": b.budget_s}
    if not (BENCH / b.script).is_file():
        return {**entry, "status": "failed", "wall_s": 0.0, "error": f"benchmarks/{b.script} does not exist",
                "finished": time.time()}
    try:
        # stdout streams to the console; stderr is kept (and echoed) for the error line.
        p = subprocess.run(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True, timeout=2 * b.budget_s)
        sys.stderr.write(p.stderr[-4000:])
        status = "ok" if p.returncode == 0 else "failed"
        err = None if p.returncode == 0 else f"exit code {p.returncode}: {error_line(p.stderr)}"
    except subprocess.TimeoutExpired:
        status, err = "timeout", f"killed after {2 * b.budget_s:.0f} s (twice its budget)"
    wall = time.perf_counter() - t0
    log(f"{b.name}: {status} in {wall:.0f} s" + (f" — {err}" if err else ""))
    return {**entry, "status": status, "wall_s": round(wall, 1), "error": err, "finished": time.time()}


def section(b: Bench, results: Path, entry: dict | None) -> str:
    """One script's BENCHMARKS.md section from its JSON, or why there are no numbers."""
    path = results / f"{b.name}.json"
    title = f"## {b.name} (`benchmarks/{b.script}`)"
    fresh = path.is_file() and (entry is None or entry["status"] == "ok" or path.stat().st_mtime > entry["finished"])
    if not fresh:
        if entry is not None and entry["status"] != "ok":
            return (f"{title}\n\n**No numbers: the last run failed** (`{entry['command']}`, {entry['status']} after "
                    f"{entry['wall_s']:.0f} s): `{entry['error']}`")
        return f"{title}\n\n**Not run yet**: `python benchmarks/{b.script}` writes `benchmarks/results/{b.name}.json`."
    try:
        return load_bench(b.script).markdown(json.loads(path.read_text())).strip()
    except Exception as err:  # a broken section must not cost the others theirs
        return f"{title}\n\n**Rendering failed** for `{path.name}`: `{type(err).__name__}: {err}`"


def _git_last_change(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%h (%cs): %s", "--", str(path)], cwd=ROOT,
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def clinical_section(results: Path) -> str:
    """The clinical-proxy section, rendered from its existing JSON (not re-run: it needs trained demo checkpoints)."""
    path = results / "clinical_proxy.json"
    title = "## Input error a trained cascade tolerates (`benchmarks/clinical_proxy.py`, not re-run by `make bench`)"
    if not path.is_file():
        return f"{title}\n\nNo results file: run `python benchmarks/clinical_proxy.py --checkpoint demo_out/checkpoints/cascade`."
    r = json.loads(path.read_text())
    origin = _git_last_change(path)
    methods = list(r["summary"])
    lines = [title, "", "It needs the demo's trained checkpoints, so `make bench` does not re-run it; the numbers below "
             f"come from `benchmarks/results/{path.name}`" + (f", last committed in {origin}" if origin else "")
             + f" (checkpoint `{r['checkpoint']}`, {r['cases']} held-out cases; the film rows are what the film "
             "reader of that time produced). Command: `python benchmarks/clinical_proxy.py --checkpoint "
             "demo_out/checkpoints/cascade --baseline-checkpoint demo_out/checkpoints/regression "
             f"--max-cases {r['cases']}`.", "",
             "Reconstruction PSNR-3D loss (clean − perturbed, paired, same seeds, dB, mean over cases) against the "
             "PSNR of the perturbed model input (dB):", "",
             "| input error | strength | input PSNR | " + " | ".join(f"{m} loss" for m in methods) + " |",
             "|---" * (3 + len(methods)) + "|"]
    rows = {m: r["summary"][m]["rows"] for m in methods}
    for i, row in enumerate(rows[methods[0]]):
        lines.append(f"| {row['family']} | {row['strength']:g} | {row['input_psnr']:.1f} | "
                     + " | ".join(f"{rows[m][i]['loss_db']:+.2f}" for m in methods) + " |")
    lines += ["", "Highest input PSNR at which a perturbation family still cost more than "
              f"{r['target_db']} dB: " + ", ".join(f"{m} {r['summary'][m]['threshold_input_psnr']:.1f} dB" for m in methods)
              + " (`tests/test_clinical_gap.py` asks the film reader for an input PSNR above the cascade's, with margin)."]
    return "\n".join(lines)


def clinical_input_section(results: Path) -> str:
    """The film reader's input-PSNR decomposition, rendered from its JSON (not re-run: it needs trained checkpoints)."""
    path = results / "clinical_input.json"
    command = "python benchmarks/clinical_input.py --checkpoint demo_out/checkpoints/cascade"
    title = "## Where a clinical film's model input loses its PSNR (`benchmarks/clinical_input.py`, not re-run by `make bench`)"
    if not path.is_file():
        return f"{title}\n\nNo results file: run `{command}`."
    r = json.loads(path.read_text())
    origin = _git_last_change(path)
    pitch = r.get("fixed", {}).get("pitch_mm")
    lines = [title, "", f"The numbers below come from `benchmarks/results/{path.name}`"
             + (f", last committed in {origin}" if origin else "")
             + f" (checkpoint `{r['checkpoint']}`, split(s) {', '.join(r['splits'])}, {len(r['points'])} films"
             + (f", {pitch:g} mm pitch" if pitch else "") + f"). Command: `{command}`. The script's docstring "
             "says what each row holds (the reader as shipped, and each of its steps made perfect).", "",
             "| model input | mean PSNR vs the clean X-ray (dB) |", "|---|---|"]
    lines += [f"| {kind} | {db:.2f} |" for kind, db in r["summary_db"].items()]
    return "\n".join(lines)


def header(status: dict, ran: list[str], this_run_s: float | None) -> str:
    """Machine, date, wall times and the command."""
    m = status.get("machine") or machine()
    scripts = status.get("scripts", {})
    total = sum(e.get("wall_s", 0.0) for e in scripts.values())
    last = (f"the last run_all run of {len(scripts)} script(s) took {total:.0f} s ({total / 60:.1f} min)" if scripts
            else "no script has been run through run_all yet")
    lines = ["# Benchmarks", "",
             "Generated by `make bench` (`python benchmarks/run_all.py`): every section below comes from a script in "
             "`benchmarks/` and its raw results in `benchmarks/results/*.json`; this file is rewritten from scratch.", "",
             f"- Machine that ran `make bench` (each section names its own): {m['cpu']}, {m['threads']} torch threads, torch {m['torch']}, Python {m['python']}"
             + (f", GPU {m['cuda']}" if m.get("cuda") else ", no GPU") + ".",
             f"- Assembled {time.strftime('%Y-%m-%d %H:%M:%S')}"
             + (f"; this invocation ran {', '.join(ran)} in {this_run_s:.0f} s" if ran else "; no script re-run (--render)")
             + f"; {last}.", "",
             "| script | last run | wall time | budget | command |", "|---|---|---|---|---|"]
    for b in SCRIPTS:
        e = scripts.get(b.name)
        lines.append(f"| {b.name} | {e['status'] if e else 'not run'} | "
                     + (f"{e['wall_s']:.0f} s | " if e else "— | ") + f"{b.budget_s / 60:.0f} min | "
                     + f"`{e['command'] if e else ' '.join(['python', 'benchmarks/' + b.script, *b.args])}` |")
    return "\n".join(lines)


def assemble(results: Path, status: dict, ran: list[str], this_run_s: float | None, out: Path) -> Path:
    """Write BENCHMARKS.md from scratch: header, each script's section, the two clinical-film analyses."""
    parts = [header(status, ran, this_run_s)]
    parts += [section(b, results, status.get("scripts", {}).get(b.name)) for b in SCRIPTS]
    parts += [clinical_section(results), clinical_input_section(results)]
    out.write_text("\n\n".join(p.strip() for p in parts) + "\n")
    return out


def main(argv=None) -> dict:
    """Run the selected scripts, update results/run_all.json, rewrite BENCHMARKS.md; the status + ran/failed."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(b.name for b in SCRIPTS)}")
    ap.add_argument("--render", action="store_true", help="run nothing; re-assemble BENCHMARKS.md from the JSON")
    ap.add_argument("--results", help="results folder to read (only with --render; scripts always write benchmarks/results)")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args(argv)
    if args.results and not args.render:
        ap.error("--results is only for --render: the scripts write benchmarks/results")
    names = [b.name for b in SCRIPTS]
    only = [s.strip() for s in args.only.split(",")] if args.only else names
    bad = [s for s in only if s not in names]
    if bad:
        ap.error(f"unknown benchmark(s) {bad}; expected a subset of {names}")
    results = Path(args.results) if args.results else RESULTS
    status_path = results / f"{STATUS}.json"
    status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    log = lambda s: print(f"[run_all] {s}", flush=True)  # noqa: E731
    ran, t0 = [], time.perf_counter()
    if not args.render:
        scripts = dict(status.get("scripts", {}))
        for b in SCRIPTS:
            if b.name in only:
                scripts[b.name] = run_script(b, log)
                ran.append(b.name)
                # After each script, so an interrupted `make bench` keeps what finished.
                write_result(STATUS, {"scripts": scripts}, folder=results)
        status = json.loads(status_path.read_text())
    this_run = time.perf_counter() - t0 if ran else None
    out = assemble(results, status, ran, this_run, Path(args.out))
    log(f"wrote {out}" + (f" after {this_run:.0f} s" if this_run else ""))
    failed = [n for n in ran if status["scripts"][n]["status"] != "ok"]
    if failed:
        log(f"failed: {', '.join(failed)} (their sections say so)")
    return {**status, "ran": ran, "failed": failed}


if __name__ == "__main__":
    sys.exit(1 if main()["failed"] else 0)  # BENCHMARKS.md is written either way

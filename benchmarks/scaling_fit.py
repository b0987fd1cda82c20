"""The arithmetic of bench_scaling.py: power-law fits, extrapolation, and batches per GPU memory size.

Pure functions over the measured points (dicts with res, params, base_mb, peak_mb, best_s, status), kept
apart from the measuring so they are tested against hand-computed values (tests/test_bench_smoke.py).
"""
from __future__ import annotations

import math

CAPS_GB = (12, 24, 40, 80)
BYTES_PER_PARAM = 16  # fp32 weight + grad + AdamW exp_avg + exp_avg_sq
GPU_RESERVE_GB = 1.0  # CUDA context + cuDNN workspace: in no allocation count, so kept out of the budget
MB = 2.0**20


def fit_power(voxels: list[float], values: list[float]) -> dict:
    """Least-squares fit of log(value) = log(coef) + exponent·log(voxels); needs ≥ 2 distinct sizes."""
    if len(set(voxels)) < 2 or len(voxels) != len(values):
        raise ValueError(f"a power-law fit needs ≥ 2 distinct sizes with one value each, got {voxels}, {values}")
    if min(voxels) <= 0 or min(values) <= 0:
        raise ValueError(f"a power-law fit needs positive sizes and values, got {voxels}, {values}")
    xs, ys = [math.log(v) for v in voxels], [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return {"exponent": slope, "coef": math.exp(my - slope * mx), "sizes": len(xs)}


def predict(fit: dict, voxels: float) -> float:
    """The fitted power law at `voxels`."""
    return fit["coef"] * voxels ** fit["exponent"]


def extrapolate(measured: list[dict], res: int) -> dict:
    """Peak memory (and step time if timed) at edge `res` from the two largest measured points of a series.

    Memory: the larger of the power law and the straight line in voxels through those two points. With
    the token grid kept, the full-resolution activations (and the patch embedding's p³ weights) grow with
    the voxels and the rest (ViT tokens, the 2-D X-ray side at a fixed detector size) hardly at all, so at
    small sizes the power law comes out nearly flat and far too low; the line is the better guess there,
    but no bound either: from 32³/64³ it puts progressive stage 2 at 128³ (checkpointing, fp32) at a
    2.4 GB peak, measured 4.1 GB (commit ec0469d). The larger decides what is run and is reported, the
    power law beside it. Time: the power law, a rough guide.
    """
    last, vox = measured[-2:], [p["res"] ** 3 for p in measured[-2:]]
    model = [p["peak_mb"] - p["base_mb"] for p in last]
    power = predict(fit_power(vox, model), res**3)
    line = model[1] + max(0.0, (model[1] - model[0]) / (vox[1] - vox[0])) * (res**3 - vox[1])
    timed = all(p.get("timed") for p in last)
    base = last[-1]["base_mb"]
    return {"res": res, "base_mb": base, "peak_mb": base + max(power, line), "peak_mb_power_law": base + power,
            "best_s": predict(fit_power(vox, [p["best_s"] for p in last]), res**3) if timed else None}


def point_at(series: dict | None, res: int) -> dict | None:
    """The series' point at edge `res` (measured or extrapolated), None if it has none."""
    return next((p for p in (series or {}).get("points", []) if p["res"] == res and "peak_mb" in p), None)


def split_memory(p: dict) -> tuple[float, float]:
    """(fixed MB = parameters + grads + AdamW state, per-sample MB = the rest of the peak at batch 1)."""
    fixed = p["params"] * BYTES_PER_PARAM / MB
    return fixed, max(0.0, p["peak_mb"] - p["base_mb"] - fixed)


def max_batch(fixed_mb: float, act_mb: float, cap_gb: float) -> int:
    """Largest batch whose fixed + batch × per-sample memory fits cap_gb minus the CUDA reserve."""
    room = (cap_gb - GPU_RESERVE_GB) * 1024 - fixed_mb
    return 0 if act_mb <= 0 or room < act_mb else int(room // act_mb)


def batch_rows(rows: list[dict], bf16_native: bool) -> list[dict]:
    """Per stage and setting: fixed / per-sample memory at its own edge and the largest batch per GPU size."""
    out = []
    for r in rows:
        bf = ("bf16", 1.0) if bf16_native else ("fp32", 0.5)  # else derived: half the fp32 activation bytes
        for label, dtype, ckpt, scale in (("fp32", "fp32", False, 1.0), ("fp32+ckpt", "fp32", True, 1.0),
                                          ("bf16+ckpt", bf[0], True, bf[1])):
            p = point_at(next((s for s in r["series"] if (s["dtype"], s["ckpt"]) == (dtype, ckpt)), None), r["res"])
            if p is None:
                continue
            fixed, act = split_memory(p)
            act *= scale
            out.append({"config": r["config"], "stage": r["stage"], "name": r["name"], "res": r["res"],
                        "setting": label, "params": p["params"], "fixed_gb": fixed / 1024, "per_sample_gb": act / 1024,
                        "status": p["status"] if scale == 1 else f"derived (½ of fp32+ckpt activations, {p['status']})",
                        "gpu_gb_batch1": (fixed + act) / 1024,
                        "max_batch": {str(c): max_batch(fixed, act, c) for c in CAPS_GB}})
    return out

"""What every benchmark builds: one stage of a shipped config, alone, and its full training step.

A stage is built exactly as training builds it (`Cascade(cfg).stages[k]`), optionally at another
resolution / batch / checkpointing setting; the step is the objective loss + DRR physics loss through
`stage_model_fn`, backward and an AdamW update — what `training/step.py` runs per batch, on synthetic
inputs of the right shapes (a benchmark measures cost, not learning). Peak memory is the process's
peak RSS on CPU (`ru_maxrss`, so one measurement per process: the scripts run each setting in a fresh
subprocess) and `torch.cuda.max_memory_allocated` on a GPU.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIGS = ROOT / "config"


def load_stage_config(config: str, stage: int, resolution: Optional[int] = None, batch: Optional[int] = None,
                      grad_checkpointing: Optional[bool] = None, extra: Optional[dict] = None):
    """The Config of `config/<config>.json` with stage `stage` (0-based) optionally overridden."""
    from hybrid_vit_cascade.config import config_from_dict, load_config

    cfg = load_config(CONFIGS / f"{config}.json")
    d = cfg.model_dump()
    s = d["stages"][stage]
    if resolution is not None:
        s["volume_size"] = [resolution] * 3
        # Keep the token grid of the shipped stage: patch scales with the volume (64³/p4 → 16 tokens per edge).
        grid = cfg.stages[stage].resolution // cfg.stages[stage].patch_size
        s["patch_size"] = max(1, resolution // grid)
    if grad_checkpointing is not None:
        s["grad_checkpointing"] = grad_checkpointing
    if batch is not None:
        d["training"]["batch_size"] = batch
    for key, value in (extra or {}).items():
        s[key] = value
    source = f"{config}.json (benchmark overrides)"
    if resolution is None:
        return config_from_dict(d, source)
    # Another resolution can break "stage sizes increase", a rule of the whole cascade, not of one stage
    # built alone: validate this stage alone and the others as shipped. The previous stage keeps its size
    # ratio to this one, since its resolution sets the synthetic low-res input `prev`.
    alone = config_from_dict({**d, "stages": [s]}, source).stages[0]
    d["stages"][stage] = cfg.stages[stage].model_dump()
    full = config_from_dict(d, source)
    stages = list(full.stages)
    stages[stage] = alone
    if stage > 0:
        r = max(1, round(resolution * cfg.stages[stage - 1].resolution / cfg.stages[stage].resolution))
        stages[stage - 1] = stages[stage - 1].model_copy(update={"volume_size": (r, r, r)})
    return full.model_copy(update={"stages": stages})


@dataclass
class StageBench:
    """A stage, its optimizer and one synthetic batch: `step()` runs one full training step."""

    cfg: object
    k: int  # 0-based stage index
    model: torch.nn.Module
    step: Callable[[], float]
    batch: int
    resolution: int
    opt: Optional[torch.optim.Optimizer] = None  # so a benchmark can allocate AdamW's state before timing

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def tokens(self) -> int:
        s = self.cfg.stages[self.k]
        return (s.resolution // s.patch_size) ** 3


def build_stage_bench(cfg, k: int, device: str = "cpu", autocast_dtype: Optional[torch.dtype] = None,
                      seed: int = 0) -> StageBench:
    """Stage k (0-based) of cfg with AdamW and a fixed synthetic batch; `step()` returns the loss."""
    from hybrid_vit_cascade.diffusion.losses import physics_loss
    from hybrid_vit_cascade.geometry.projector import Projector
    from hybrid_vit_cascade.models.stage import CascadeStage
    from hybrid_vit_cascade.runtime.conditioning import make_condition, stage_model_fn
    from hybrid_vit_cascade.runtime.objective import Objective

    torch.manual_seed(seed)
    d, s, tc = cfg.data, cfg.stages[k], cfg.training
    dev = torch.device(device)
    model = CascadeStage(s, k, list(d.views), d.geometry.det_pixels, d.geometry, d.fov_mm).to(dev).train()
    B, D, V, P = tc.batch_size, s.resolution, len(d.views), d.geometry.det_pixels
    g = torch.Generator().manual_seed(seed)
    x0 = (torch.rand(B, 1, D, D, D, generator=g) * 2 - 1).to(dev)
    xray = (torch.rand(B, V, P, P, generator=g) * 2 - 1).to(dev)
    prev_low = None
    if k > 0:
        r = cfg.stages[k - 1].resolution
        prev_low = (torch.rand(B, 1, r, r, r, generator=g) * 2 - 1).to(dev)
    objective = Objective(cfg)
    projector = Projector(d.geometry, list(d.views)).to(dev)
    spacing = d.fov_mm / D
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    gens = [torch.Generator(device=dev).manual_seed(seed + b) for b in range(B)]
    autocast = None
    if autocast_dtype is not None:
        autocast = lambda: torch.autocast(dev.type, dtype=autocast_dtype)  # noqa: E731

    def step() -> float:
        prev = cond_noise = None
        if prev_low is not None:
            prev, cond_noise = make_condition(prev_low, D, cfg, gens, None)
        model_fn = stage_model_fn(model, xray, prev, cond_noise, autocast=autocast)
        out = objective.loss(model_fn, x0, gens)
        loss = out.loss
        if s.use_physics_loss:
            loss = loss + s.physics_weight * physics_loss(out.x0_pred, xray, projector, spacing, tuple(d.hu_window),
                                                          d.mu_water, 1.0).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return StageBench(cfg, k, model, step, B, D, opt)


def _proc_status_mb(field: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def peak_memory_mb(device: str = "cpu") -> float:
    """Peak memory of this process since its start or the last reset_peak_memory(): RSS on CPU, tensors on CUDA (MB)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    hwm = _proc_status_mb("VmHWM")  # resettable, unlike ru_maxrss
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_memory(device: str = "cpu") -> float:
    """Start a new peak-memory window; returns the memory in use now (MB), the window's baseline.

    On CPU, byte-code compilation and imports leave a transient high-water mark that a small model's step
    never exceeds; writing 5 to /proc/self/clear_refs resets VmHWM to the current RSS (Linux ≥ 4.0).
    """
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # no reset: the window starts at the process's start
    now = _proc_status_mb("VmRSS")
    return now if now is not None else peak_memory_mb(device)


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of each of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo; the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What the numbers were measured on."""
    return {
        "cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
    }


class ChildFailed(RuntimeError):
    """A benchmark child that exited badly: `reason` in one line, `signal` if it was killed, its stderr."""

    def __init__(self, reason: str, signal: Optional[int] = None, stderr: str = ""):
        super().__init__(reason)
        self.reason, self.signal, self.stderr = reason, signal, stderr


def run_child(argv: list[str], env: Optional[dict] = None, timeout: Optional[float] = None) -> dict:
    """Run `python <argv>` in a fresh process (its own peak memory and thread pool); its last JSON line.

    Raises ChildFailed on a timeout, a signal (the OOM killer), a non-zero exit or no JSON output.
    """
    import subprocess

    try:
        p = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ChildFailed(f"timed out after {timeout:.0f} s") from None
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        why = f"killed by signal {-p.returncode}" if p.returncode < 0 else f"exit {p.returncode}"
        last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "no output"
        raise ChildFailed(f"{why}: {last}", -p.returncode if p.returncode < 0 else None, p.stderr)
    return json.loads(lines[-1])


def write_result(name: str, payload: dict, folder: Optional[Path] = None) -> Path:
    """benchmarks/results/<name>.json (or `folder`/<name>.json) with the machine facts beside the numbers."""
    folder = Path(folder) if folder is not None else RESULTS  # smoke runs and tests write elsewhere
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=1) + "\n")
    return path


def native_bf16(device: str = "cpu") -> bool:
    """Does the device run bf16 matmuls natively (CUDA: is_bf16_supported; CPU: oneDNN's AVX512-BF16/AMX check)?"""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False

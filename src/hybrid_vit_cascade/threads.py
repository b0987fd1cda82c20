"""How many CPU threads torch uses: all free cores, fewer while other processes keep cores busy.

Why: torch's OpenMP threads spin-wait for each other at every parallel region. When another busy
process holds one of the cores, a spinning thread waits for a thread that is not running, and a
2-thread training step runs 3× slower than with one thread (measured on 2 cores: 15.2 steps/s
alone, 4.6 beside one `python -c "while True: pass"`, 9.7 with one thread). A passive wait policy
(OMP_WAIT_POLICY=PASSIVE) avoids the stall but costs ~30 % when the machine is quiet, so the wait
policy stays as it is and the thread count follows the machine instead:

1. `configure()` (the CLI, before any verb imports torch) records the policy: a user's
   `HVC_THREADS=N` or `OMP_NUM_THREADS=N` fixes N threads and nothing adapts; otherwise "auto".
2. `tick()` (called by the training loop and by every model evaluation in sampling; free unless
   `CHECK_EVERY_S` has passed) measures, from /proc/stat over the last interval, how many of this
   process's CPUs other processes kept busy (busy CPU time of those CPUs − this process's own
   CPU time; hypervisor steal counts as busy), and sets torch's thread count to the CPUs left,
   at least 1. A new count takes effect only when two checks in a row agree, so one short burst
   (a `git status`) does not flip it.
Off Linux (no /proc/stat), "auto" keeps torch's default.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

ENV = "HVC_THREADS"  # a positive integer fixes the thread count; "auto" (or unset) adapts
CHECK_EVERY_S = 1.0  # seconds between load checks while adapting (two agreeing checks change the count)
PROC_STAT = "/proc/stat"
PROC_SELF_STAT = "/proc/self/stat"


def cpu_set() -> list[int]:
    """The CPUs this process may run on (its affinity; cgroup cpusets show here too)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _positive_int(name: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer number of threads"
                         + (" or 'auto'" if name == ENV else ""))
    return n


def fixed_threads(environ: Optional[dict] = None) -> Optional[int]:
    """The thread count the user fixed (HVC_THREADS, else OMP_NUM_THREADS), None for "auto"."""
    env = os.environ if environ is None else environ
    value = env.get(ENV, "").strip()
    if value and value.lower() != "auto":
        return _positive_int(ENV, value)
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp and not value:
        return _positive_int("OMP_NUM_THREADS", omp.split(",")[0])
    return None


def share(jobs: int, environ: Optional[dict] = None) -> int:
    """Threads for each of `jobs` processes run side by side: the user's fixed count, else this process's CPUs, split evenly (≥ 1)."""
    if jobs < 1:
        raise ValueError(f"jobs must be ≥ 1, got {jobs}")
    return max(1, (fixed_threads(environ) or len(cpu_set())) // jobs)


@contextlib.contextmanager
def pinned(n: int) -> Iterator[None]:
    """Within the block, verbs run in this process (cli.main configures from the environment) use exactly n threads.

    Why fixed, not "auto", beside a sibling job: the adaptive count would follow the sibling's load and
    change when it ends, so the numbers of the run would depend on timing (1 and 2 threads sum in other orders).
    """
    old = os.environ.get(ENV)
    os.environ[ENV] = str(_positive_int(ENV, str(n)))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:  # not Linux, or /proc not mounted
        return None


def read_cpu_times(cpus: list[int], stat_text: Optional[str] = None) -> Optional[tuple[float, float]]:
    """(busy, idle) clock ticks summed over `cpus` from /proc/stat; None where it cannot be read."""
    stat_text = _read(PROC_STAT) if stat_text is None else stat_text
    if stat_text is None:
        return None
    wanted = {f"cpu{c}" for c in cpus}
    busy = idle = 0.0
    seen = 0
    for line in stat_text.splitlines():
        parts = line.split()
        if not parts or parts[0] not in wanted:
            continue
        vals = [float(v) for v in parts[1:9]]  # user nice system idle iowait irq softirq steal
        vals += [0.0] * (8 - len(vals))
        idle += vals[3] + vals[4]
        busy += vals[0] + vals[1] + vals[2] + vals[5] + vals[6] + vals[7]
        seen += 1
    return (busy, idle) if seen else None


def read_self_ticks(text: Optional[str] = None) -> Optional[float]:
    """This process's user + system CPU time, clock ticks (all its threads)."""
    text = _read(PROC_SELF_STAT) if text is None else text
    if text is None:
        return None
    fields = text.rsplit(")", 1)[-1].split()  # the command name may hold spaces: split after it
    return float(fields[11]) + float(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


def others_busy_cores(d_busy: float, d_idle: float, d_self: float, n_cpus: int) -> float:
    """CPUs' worth of time other processes used in an interval: busy share of the CPUs minus our own."""
    total = d_busy + d_idle
    if total <= 0:
        return 0.0
    return max(0.0, (d_busy - d_self) / total * n_cpus)


def choose_threads(n_cpus: int, others: float) -> int:
    """Threads for the CPUs left by other processes (at least one): round(n_cpus − others)."""
    return max(1, min(n_cpus, int(n_cpus - others + 0.5)))


@dataclass
class Governor:
    """Adapts torch's thread count to the CPUs other processes leave free (module docstring)."""

    cpus: list[int] = field(default_factory=cpu_set)
    fixed: Optional[int] = None
    check_every_s: float = CHECK_EVERY_S
    current: Optional[int] = None  # the count last set on torch (None: not yet)
    pending: Optional[int] = None  # a new count seen once, waiting for a second agreeing check
    changes: int = 0
    disabled: bool = False  # no /proc to read: torch's default stays
    _last: Optional[tuple[float, float, float, float]] = None  # (time, busy, idle, self)

    def _sample(self) -> Optional[tuple[float, float, float, float]]:
        cpu = read_cpu_times(self.cpus)
        me = read_self_ticks()
        if cpu is None or me is None:
            return None
        return (time.monotonic(), cpu[0], cpu[1], me)

    def _apply(self, n: int) -> None:
        import torch  # only once torch is in use: the CLI calls configure() before any verb imports it

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        if self.current is not None and n != self.current:
            self.changes += 1
        self.current = n

    def decide(self, others: float) -> int:
        """The thread count after one load reading (two agreeing readings change it)."""
        want = choose_threads(len(self.cpus), others)
        if self.current is None or want == self.current:
            self.pending = None
            return want if self.current is None else self.current
        if self.pending == want:
            self.pending = None
            return want
        self.pending = want
        return self.current

    def tick(self) -> None:
        """Set the thread count: once if fixed, else from the load since the last check."""
        if self.fixed is not None:
            if self.current is None:
                self._apply(self.fixed)
            return
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < self.check_every_s:
            return
        s = self._sample()
        if s is None:
            self.disabled = True
            return
        if self._last is None:
            self._last = s
            if self.current is None:
                self._apply(len(self.cpus))
            return
        others = others_busy_cores(s[1] - self._last[1], s[2] - self._last[2], s[3] - self._last[3], len(self.cpus))
        self._last = s
        self._apply(self.decide(others))


_GOVERNOR: Optional[Governor] = None


def configure(environ: Optional[dict] = None) -> Governor:
    """Install the process's thread policy (the CLI calls this before a verb imports torch)."""
    global _GOVERNOR
    _GOVERNOR = Governor(fixed=fixed_threads(environ))
    return _GOVERNOR


def tick() -> None:
    """Let the installed policy adjust torch's threads (no-op when none is installed, e.g. in a library)."""
    g = _GOVERNOR
    if g is not None and not g.disabled:
        g.tick()


def describe() -> str:
    """One line for logs: the policy and the current count."""
    g = _GOVERNOR
    if g is None:
        return "threads: torch default (no policy installed)"
    if g.fixed is not None:
        return f"threads: {g.fixed} (fixed by {ENV} / OMP_NUM_THREADS)"
    if g.disabled:
        return "threads: torch default (no /proc/stat to watch the load)"
    return f"threads: auto over {len(g.cpus)} CPU(s), now {g.current}, {g.changes} change(s)"

"""Forked worker pools for loops whose items are independent and single-threaded: the training films.

Why processes: the film chain (data/clinical.py, the reader) is numpy on one thread, so one process per
CPU gets more done (the demo's 38 training cases on 2 cores: 33 s → 17 s). Not for sampling: a model
step uses the second thread well there (`hvc evaluate`'s cases in two one-thread workers took 84 s
against 76 s in one two-thread process). Why fork: the workers inherit the loaded datasets (nothing is
pickled but each item's result), and a spawned worker would re-run a user's script.
Forked workers set one fixed thread, as torch's DataLoader workers do, so they neither enter the
parent's OpenMP pool nor adapt to each other's load (threads.py): a run's numbers do not depend on
timing. Off Linux, on one CPU, or for fewer than `min_items` items the loop runs in this process.
"""
from __future__ import annotations

import multiprocessing
import sys
from typing import Any, Callable, Iterable, Iterator, Optional

from hybrid_vit_cascade import threads

MAX_WORKERS = 8  # each worker is a copy-on-write fork of this process: bounded memory on many-core machines
_TASK: Optional[Callable[[Any], Any]] = None  # the function the forked workers run (inherited, not pickled)


def pool_workers(n_items: int, min_items: int = 2) -> int:
    """Workers for `n_items`: one per CPU this process may use (threads.share), ≤ MAX_WORKERS; 1 = no pool."""
    if sys.platform != "linux" or n_items < max(2, min_items):
        return 1
    return max(1, min(MAX_WORKERS, threads.share(1), n_items))


def _one_thread() -> None:
    threads.configure({threads.ENV: "1"})
    import torch

    torch.set_num_threads(1)


def _call(item: Any) -> Any:
    assert _TASK is not None
    return _TASK(item)


def fork_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[Any]:
    """fn(item) for every item, in order: in `workers` forked one-thread processes when > 1, else here."""
    global _TASK
    items = list(items)
    if workers <= 1:
        yield from map(fn, items)
        return
    _TASK = fn
    try:
        with multiprocessing.get_context("fork").Pool(workers, initializer=_one_thread) as pool:
            yield from pool.imap(_call, items)
    finally:
        _TASK = None

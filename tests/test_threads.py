"""The thread policy (threads.py): load reading from /proc text, the choice, its hysteresis, user overrides."""
import os

import pytest
import torch

from hybrid_vit_cascade import threads
from hybrid_vit_cascade.commands import main

STAT = """cpu  300 0 100 500 20 0 0 0 0 0
cpu0 100 0 50 200 10 0 0 5 0 0
cpu1 200 0 50 300 10 0 0 0 0 0
cpu2 999 0 999 0 0 0 0 0 0 0
intr 1 2 3
"""


def test_cpu_times_sum_only_the_affinity_cpus_with_steal_as_busy():
    busy, idle = threads.read_cpu_times([0, 1], STAT)
    assert busy == (100 + 50 + 5) + (200 + 50)
    assert idle == (200 + 10) + (300 + 10)
    assert threads.read_cpu_times([7], STAT) is None


def test_self_ticks_parse_after_a_command_name_with_spaces():
    line = "1234 (python my prog) R 1 2 3 4 5 6 7 8 9 10 111 22 0 0 20 0 3"
    assert threads.read_self_ticks(line) == 111 + 22


def test_others_busy_cores_subtracts_our_own_time():
    # 2 CPUs, 100 ticks each: 150 busy of which we used 100 → others used half a CPU.
    assert threads.others_busy_cores(150, 50, 100, 2) == pytest.approx(0.5)
    assert threads.others_busy_cores(0, 0, 0, 2) == 0.0
    assert threads.others_busy_cores(80, 120, 100, 2) == 0.0  # clock skew never goes negative


@pytest.mark.parametrize("others, want", [(0.0, 2), (0.4, 2), (0.67, 1), (1.0, 1), (1.9, 1), (3.0, 1)])
def test_choice_leaves_the_cores_others_use(others, want):
    assert threads.choose_threads(2, others) == want


def test_a_change_needs_two_agreeing_readings():
    g = threads.Governor(cpus=[0, 1])
    g.current = 2
    assert g.decide(1.0) == 2  # one burst: no change yet
    assert g.decide(0.0) == 2  # the burst is over: nothing pending any more
    assert g.decide(1.0) == 2
    assert g.decide(1.0) == 1  # twice in a row: one thread


def test_fixed_counts_from_the_environment():
    assert threads.fixed_threads({}) is None
    assert threads.fixed_threads({"HVC_THREADS": "auto"}) is None
    assert threads.fixed_threads({"HVC_THREADS": "3"}) == 3
    assert threads.fixed_threads({"OMP_NUM_THREADS": "1"}) == 1
    assert threads.fixed_threads({"HVC_THREADS": "2", "OMP_NUM_THREADS": "1"}) == 2  # ours wins


def test_side_by_side_jobs_split_the_threads(monkeypatch):
    monkeypatch.setattr(threads, "cpu_set", lambda: [0, 1, 2, 3, 4])
    assert threads.share(1, {}) == 5 and threads.share(2, {}) == 2  # the CPUs, split evenly
    assert threads.share(2, {"HVC_THREADS": "8"}) == 4  # a user's fixed count is what is split
    assert threads.share(8, {"HVC_THREADS": "3"}) == 1  # never below one


def test_share_refuses_no_jobs():
    with pytest.raises(ValueError, match="jobs must be ≥ 1, got 0"):
        threads.share(0, {})


def test_pinned_fixes_the_verbs_threads_and_restores_the_environment(monkeypatch):
    monkeypatch.setenv("HVC_THREADS", "auto")
    with threads.pinned(1):
        assert threads.configure().fixed == 1  # what cli.main installs for a verb run inside the block
    assert threads.fixed_threads() is None and threads.configure().fixed is None
    monkeypatch.delenv("HVC_THREADS")
    with threads.pinned(2):
        assert threads.fixed_threads() == 2
    assert "HVC_THREADS" not in os.environ


def test_bad_thread_count_is_refused():
    with pytest.raises(ValueError, match="HVC_THREADS='0'"):
        threads.fixed_threads({"HVC_THREADS": "0"})


def test_bad_omp_thread_count_is_refused():
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='x'"):
        threads.fixed_threads({"OMP_NUM_THREADS": "x"})


def test_cli_refuses_a_bad_thread_count_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("HVC_THREADS", "-2")
    assert main(["phantoms", "--help"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hvc phantoms: error: HVC_THREADS='-2'") and "\n" not in err


def test_fixed_policy_sets_torch_once_and_restores(monkeypatch):
    before = torch.get_num_threads()
    try:
        g = threads.Governor(fixed=1)
        g.tick()
        assert torch.get_num_threads() == 1 and g.current == 1
    finally:
        torch.set_num_threads(before)


def test_auto_policy_reads_this_machine(monkeypatch):
    before = torch.get_num_threads()
    try:
        g = threads.Governor(check_every_s=0.0)
        g.tick()  # first reading: all CPUs of the affinity
        assert g.current == len(threads.cpu_set()) or g.disabled
        for _ in range(3):
            g.tick()
        assert g.disabled or 1 <= torch.get_num_threads() <= len(threads.cpu_set())
    finally:
        torch.set_num_threads(before)

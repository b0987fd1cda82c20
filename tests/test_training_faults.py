"""Training under faults: an exploding loss, a full disk mid-run, a kill before a resume; readable progress."""
from __future__ import annotations

import errno
import io
import json
import sys
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from _trainkit import tiny_cfg, tiny_dataset  # noqa: F401 (fixture)
from hybrid_vit_cascade.runtime import objective as objective_mod
from hybrid_vit_cascade.runtime.checkpoint import CheckpointError, load_cascade, read_meta, resolve_snapshot
from hybrid_vit_cascade.training import logging as logging_mod
from hybrid_vit_cascade.training import trainer as trainer_mod
from hybrid_vit_cascade.training.logging import RunLogger
from hybrid_vit_cascade.training.progressive import train_progressive
from hybrid_vit_cascade.training.trainer import EXPLODE_WARMUP, TrainingDiverged


def _poison_losses(monkeypatch, from_call: int, factor: float) -> None:
    """Training losses (not validation's, which run under no_grad) × factor from the `from_call`-th on."""
    calls = {"n": 0}
    real_loss = objective_mod.Objective.loss

    def poisoned(self, model_fn, x0, gens):
        out = real_loss(self, model_fn, x0, gens)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] >= from_call:
                return objective_mod.StepOutput(out.loss * factor, out.x0_pred)
        return out

    monkeypatch.setattr(objective_mod.Objective, "loss", poisoned)


def test_exploding_loss_stops_and_keeps_the_last_healthy_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    # Batch 1: 6 updates per epoch. Healthy for EXPLODE_WARMUP (10) steps, then the (finite) loss is
    # 1e6× larger from step 11 on; epoch 2 ends at step 12, in the middle of the streak.
    assert EXPLODE_WARMUP == 10
    cfg = tiny_cfg(tiny_dataset, stages=(16,), batch_size=1, num_epochs=3, max_bad_steps=3, val_every_epochs=100)
    _poison_losses(monkeypatch, from_call=11, factor=1e6)
    ck = tmp_path / "ck"
    msgs: list[str] = []
    with pytest.raises(TrainingDiverged, match=r"stopped at step 13 .*3 consecutive steps with a loss above 100× "
                                               r"its running median.*last good checkpoint .*step 6") as err:
        train_progressive(cfg, ck, device="cpu", log=msgs.append)
    text = str(err.value)  # one line that says what to try
    assert "\n" not in text and "stage 1 (s16)" in text and "training.learning_rate" in text and "[-1, 1]" in text
    assert sum("running median" in m and m.startswith("warning") for m in msgs) == 3  # steps 11, 12, 13
    assert any(m.startswith("warning: not saving last at step 12") for m in msgs)
    last = ck / "stage1_s16" / "last"
    assert read_meta(last)["step"] == 6  # the epoch-2 save (step 12, mid-streak) was refused
    for f in ("model.safetensors", "ema.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(str(last / f)).values())


def test_disk_full_while_saving_stops_with_checkpoint_error_and_keeps_previous_snapshot(tiny_dataset, tmp_path,
                                                                                        monkeypatch):
    # 3 updates per epoch; the epoch-1 snapshot (step 3) is written, the epoch-2 one hits a full disk.
    cfg = tiny_cfg(tiny_dataset, stages=(16,), num_epochs=2, val_every_epochs=100, val_samples=0)
    saves = {"n": 0}
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    ck = tmp_path / "ck"
    stage = ck / "stage1_s16"
    with pytest.raises(CheckpointError, match=rf"cannot write the last snapshot into {stage} at step 6: No space left "
                                              r"on device; the previous last snapshot \(step 3\) is intact"):
        train_progressive(cfg, ck, device="cpu", log=lambda m: None)
    monkeypatch.undo()
    assert saves["n"] == 2
    _, cascade, _ = load_cascade(ck, which="last")
    assert cascade.trained_stages == [1]
    assert read_meta(resolve_snapshot(stage / "last"))["step"] == 3
    assert sorted(p.name for p in stage.iterdir()) == ["last"]  # no half-written temp snapshot left behind


def test_resume_after_a_kill_logs_every_step_once(tiny_dataset, tmp_path, monkeypatch):
    # 3 updates per epoch; the epoch-1 snapshot is step 3. The "kill" comes right after step 5 was
    # logged, and a record cut short by the kill ends the file; the resume starts again at step 4.
    cfg = tiny_cfg(tiny_dataset, stages=(16,), num_epochs=2, val_samples=0)
    ck = tmp_path / "ck"

    class Killed(Exception):
        pass

    real_scalars = RunLogger.scalars

    def scalars_then_die(self, values, step, prefix=""):
        real_scalars(self, values, step, prefix)
        if step == 5 and "train/loss" in values:
            self.flush()  # what the killed run had written: TensorBoard events of steps 1–5 included
            self.jsonl.write('{"step": 6, "stage1_s16/tr')
            self.jsonl.flush()
            raise Killed

    monkeypatch.setattr(RunLogger, "scalars", scalars_then_die)
    with pytest.raises(Killed):
        train_progressive(cfg, ck, device="cpu", log=lambda m: None)
    monkeypatch.undo()
    assert read_meta(ck / "stage1_s16" / "last")["step"] == 3
    train_progressive(None, ck, resume_from=ck, device="cpu", log=lambda m: None)
    records = [json.loads(line) for line in (ck / "metrics.jsonl").read_text().splitlines()]
    seen = Counter((r["step"], k) for r in records for k in r if k != "step")
    assert sorted(s for s, k in seen if k == "stage1_s16/train/loss") == [1, 2, 3, 4, 5, 6]
    assert max(seen.values()) == 1
    # TensorBoard: the resumed writer's purge_step discards the killed run's steps 4–5 when read
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = EventAccumulator(str(ck / "tb" / "stage1_s16"), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in ev.Scalars("stage1_s16/train/loss")] == [1, 2, 3, 4, 5, 6]


def _run_6_steps(tiny_dataset, tmp_path, **training) -> None:
    cfg = tiny_cfg(tiny_dataset, stages=(16,), num_epochs=2, val_samples=0, **training)
    train_progressive(cfg, tmp_path / "ck", device="cpu", log=lambda m: None)


@pytest.mark.parametrize("every_s, expected", [(0.0, 4), (1e9, 2)])
def test_progress_without_a_terminal_is_plain_periodic_lines(tiny_dataset, tmp_path, capsys, monkeypatch,
                                                             every_s, expected):
    # log_every 2 over 6 steps: progress is due at steps 1, 2, 4, 6; at most one line per PLAIN_EVERY_S
    # seconds keeps only the first and the last when the run is quick.
    monkeypatch.setattr(logging_mod, "PLAIN_EVERY_S", every_s, raising=False)
    _run_6_steps(tiny_dataset, tmp_path, log_every=2)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("stage 1 (s16): step ")]
    assert len(lines) == expected
    assert lines[-1].startswith("stage 1 (s16): step 6/6 (100%), loss ") and "steps/s" in lines[-1]


def test_progress_on_a_terminal_is_one_bar_per_stage(tiny_dataset, tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    bars = []

    class CountingBar(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    for mod in (logging_mod, trainer_mod):  # wherever training makes its bars
        monkeypatch.setattr(mod, "tqdm", CountingBar, raising=False)
    monkeypatch.setattr(sys, "stderr", Terminal())
    _run_6_steps(tiny_dataset, tmp_path)  # one stage of 2 epochs × 3 updates
    assert [(b.total, b.n) for b in bars] == [(6, 6)]
    assert "\r" in sys.stderr.getvalue()

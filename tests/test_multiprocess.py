"""Two CPU processes (gloo) through Accelerate under torchrun: sharded data, identical weights."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from _trainkit import prepare_tiny_dataset, tiny_dict, write_cfg

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_shard_data_and_agree(tmp_path):
    # 10 cases → 8 train: each rank gets 2 batches of 2 per epoch.
    ds = prepare_tiny_dataset(tmp_path / "data", n_cases=10, split=(0.8, 0.2, 0.0))
    d = tiny_dict(ds, num_epochs=1, val_samples=0)
    d["data"]["phantoms"]["n"], d["data"]["split"] = 10, [0.8, 0.2, 0.0]
    cfg = write_cfg(tmp_path / "mp.json", d)
    ck = tmp_path / "ck"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    r = subprocess.run(
        torchrun + [str(ROOT / "training" / "train_progressive.py"), "--config", str(cfg),
                    "--checkpoint_dir", str(ck), "--device", "cpu"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    info = json.loads((ck / "data_info.json").read_text())
    for stage in ("stage1_s16", "stage2_s32"):
        reports = [json.loads((ck / stage / "ranks" / f"rank{i}.json").read_text()) for i in (0, 1)]
        assert [rep["world"] for rep in reports] == [2, 2]
        seen = [set(rep["cases_seen"]["0"]) for rep in reports]
        assert seen[0] and seen[1] and not seen[0] & seen[1]  # each rank saw different cases
        assert seen[0] | seen[1] == set(info["splits"]["train"])  # together, the whole train split
        assert reports[0]["weights_hash"] == reports[1]["weights_hash"]  # DDP kept them in sync
    cache = next((ck / "cond_cache").glob("stage1_s16_*"))  # built by both ranks, half each
    assert (cache / "complete.json").is_file()
    assert {p.stem for p in cache.glob("*.npy")} == set(info["splits"]["train"]) | set(info["splits"]["val"])
    assert r.stdout.count("done in") == 1  # only the main process reports

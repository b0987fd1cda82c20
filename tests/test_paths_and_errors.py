"""Names from data stay inside their folders; every CLI error is one line (exit 2); --out is checked first."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from _trainkit import tiny_dict, write_cfg
from hybrid_vit_cascade.cli import main as hvc
from hybrid_vit_cascade.data.datasets import load_manifest
from hybrid_vit_cascade.data.discover import discover_inputs
from hybrid_vit_cascade.files import UnsafePathError, safe_component
from hybrid_vit_cascade.runtime.checkpoint import CheckpointError, load_state, load_weights, stage_dir
from hybrid_vit_cascade.training.cond_cache import ConditionCache
from test_inference import LI_MAX, make_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _error_line(capsys, verb: str) -> str:
    """stderr, asserted to be exactly one `hvc <verb>: error: ...` line."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"hvc {verb}: error: "), err
    return err


def _manifest_only(root: Path, case_id: str = "ok_1", file: str | None = None) -> Path:
    """A dataset folder holding only a manifest: what is checked when a manifest loads comes first."""
    cases = [{"case_id": case_id, "file": file or "cases/ok_1.npz", "split": "train", "patient_id": "p1"},
             {"case_id": "ok_2", "file": "cases/ok_2.npz", "split": "test", "patient_id": "p2"}]
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps(
        {"cases": cases, "sizes": [16, 32], "views": ["ap", "lateral"], "xray_scale": {"li_max": LI_MAX}}))
    return root


def _xray_files(folder: Path) -> list[str]:
    li = np.random.default_rng(0).uniform(0.5, LI_MAX / 2, (2, 16, 16)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for v, name in enumerate(("ap", "lateral")):
        np.save(folder / f"{name}.npy", li[v])
    return [str(folder / "ap.npy"), str(folder / "lateral.npy")]


# ---------------------------------------------------------------- names from data stay in their folders


@pytest.mark.parametrize("field, value", [("case_id", "/../../../tmp/x"), ("case_id", "a/../../../x"),
                                          ("case_id", "-rf"), ("file", "../../../x.npz"), ("file", "/etc/x.npz")])
def test_manifest_refuses_a_name_that_leaves_its_folder(tmp_path, field, value):
    root = _manifest_only(tmp_path / "ds", **{field: value})
    with pytest.raises(UnsafePathError, match=rf"manifest\.json: cases\[0\]\.{field} '{re.escape(value)}'"):
        load_manifest(root)


def test_train_refuses_an_escaping_case_id(tmp_path, capsys):
    root = _manifest_only(tmp_path / "a" / "ds", case_id="a/../../../x")
    cfg = write_cfg(tmp_path / "c.json", tiny_dict(root))
    assert hvc(["train", "--config", str(cfg), "--checkpoint_dir", str(tmp_path / "ck"), "--device", "cpu"]) == 2
    err = _error_line(capsys, "train")
    assert "cases[0].case_id 'a/../../../x'" in err and "manifest.json" in err


def test_evaluate_refuses_an_escaping_case_id(ckpt, tmp_path, capsys):
    root = _manifest_only(tmp_path / "ds", case_id="a/../../../x")
    assert hvc(["evaluate", "--checkpoint", str(ckpt), "--data", str(root), "--out", str(tmp_path / "rep"),
                "--no-progress"]) == 2
    err = _error_line(capsys, "evaluate")
    assert "cases[0].case_id 'a/../../../x'" in err and "manifest.json" in err
    assert not list((tmp_path / "rep").glob("*.png"))


def test_prepare_rerun_never_deletes_outside_the_dataset(tmp_path, capsys):
    # A re-run with changed settings deletes the old manifest's case files: `file` must stay inside.
    victim = tmp_path / "victim.npz"
    victim.write_bytes(b"keep me")
    _manifest_only(tmp_path / "ds", case_id="gone", file="../victim.npz")
    assert hvc(["prepare", "--input", str(tmp_path / "none"), "--out", str(tmp_path / "ds"), "--no-progress"]) == 2
    assert "cases[0].file '../victim.npz'" in _error_line(capsys, "prepare")
    assert victim.read_bytes() == b"keep me"


def test_discovered_case_ids_are_safe_file_names(tmp_path):
    names = ["-rf", "_.x", "__y", "a b (1)", "z" * 200]  # (hidden files are skipped)
    for n in names:
        (tmp_path / f"{n}.nii.gz").write_bytes(b"")  # discovery goes by name; nothing is read
    found, _ = discover_inputs([tmp_path])
    ids = [c.base_id for c in found]
    assert len(set(ids)) == len(names)
    assert all(safe_component(i, "id") == i and len(i) <= 128 for i in ids), ids


def test_stage_folder_never_leaves_the_checkpoint_dir(tmp_path):
    # Every snapshot write, `.old` cleanup and --overwrite delete of a stage goes through stage_dir.
    assert stage_dir(tmp_path, 2, "s32") == tmp_path / "stage2_s32"
    with pytest.raises(UnsafePathError, match=r"stage 1 \('\.\./\.\./\.\./escaped'\) folder .* lies outside"):
        stage_dir(tmp_path / "a" / "b" / "ck", 1, "../../../escaped")


def test_condition_cache_writes_only_inside_its_folder(tmp_path):
    cache = ConditionCache(tmp_path / "cache" / "stage1", 1, "k")
    cache.save("case_1", np.zeros((1, 2, 2, 2)))
    assert cache.load("case_1").dtype == np.float32
    with pytest.raises(UnsafePathError, match="case id '../x'"):
        cache.save("../x", np.zeros((1, 2, 2, 2)))
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*")) == ["case_1.npy", "stage1"]


# ---------------------------------------------------------------- output paths are checked before any compute


def test_prepare_and_drr_refuse_an_out_under_a_regular_file(tmp_path, capsys):
    from hybrid_vit_cascade.data.phantoms import write_phantom

    ct = tmp_path / "ct.nii.gz"
    write_phantom(ct, seed=0, size=16)
    (tmp_path / "file").write_text("x")
    bad = str(tmp_path / "file" / "x")
    assert hvc(["prepare", "--input", str(ct), "--out", bad, "--size", "16", "--no-progress"]) == 2
    assert "a parent of it is a regular file" in _error_line(capsys, "prepare")
    assert hvc(["drr", str(ct), "--out", bad, "--size", "16", "--det-pixels", "16"]) == 2
    assert "a parent of it is a regular file" in _error_line(capsys, "drr")


def test_evaluate_checks_out_before_loading_the_checkpoint(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    # The checkpoint does not exist either: the --out error must come first, before any loading.
    assert hvc(["evaluate", "--checkpoint", str(tmp_path / "none"), "--data", str(tmp_path),
                "--out", str(tmp_path / "file" / "rep")]) == 2
    assert "cannot create folder" in _error_line(capsys, "evaluate")


def test_infer_checks_out_before_reconstructing(ckpt, tmp_path, capsys, monkeypatch):
    from hybrid_vit_cascade.inference.pipeline import Reconstructor

    def no_sampling(*a, **k):
        raise AssertionError("reconstructed before the output path was checked")

    monkeypatch.setattr(Reconstructor, "reconstruct", no_sampling)
    (tmp_path / "file").write_text("x")
    args = ["infer", "--checkpoint", str(ckpt), "--xray", *_xray_files(tmp_path / "x"), "--steps", "2"]
    assert hvc([*args, "--out", str(tmp_path / "file" / "ct.nii.gz")]) == 2
    assert "file: a file of that name is in the way" in _error_line(capsys, "infer")
    (tmp_path / "dir.nii.gz").mkdir()
    assert hvc([*args, "--out", str(tmp_path / "dir.nii.gz")]) == 2
    assert "is a folder" in _error_line(capsys, "infer")


# ---------------------------------------------------------------- one line, --debug for the traceback


def test_debug_shows_the_traceback(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    args = ["prepare", "--input", str(tmp_path), "--out", str(tmp_path / "file" / "x")]
    with pytest.raises(NotADirectoryError, match="regular file"):
        hvc(["--debug", *args])
    with pytest.raises(NotADirectoryError, match="regular file"):
        hvc([*args, "--debug"])


def test_a_multi_line_config_error_prints_as_one_line(tmp_path, capsys):
    cfg = write_cfg(tmp_path / "c.json", {"stages": [{"name": "s"}], "trainig": {}})
    assert hvc(["train", "--config", str(cfg), "--checkpoint_dir", str(tmp_path / "ck")]) == 2
    err = _error_line(capsys, "train")
    assert "c.json" in err and "trainig: unknown key" in err and "stages.0.volume_size" in err


# ---------------------------------------------------------------- damaged checkpoints


def _snapshot(ckpt: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    copy = tmp_path / "ck"
    shutil.copytree(ckpt, copy)
    return copy, copy / "stage1_low" / "best"


def test_truncated_weights_are_a_checkpoint_error(ckpt, tmp_path, capsys):
    copy, snap = _snapshot(ckpt, tmp_path)
    ema = snap / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[: ema.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"ema\.safetensors is truncated or corrupt"):
        load_weights(snap)
    assert hvc(["infer", "--checkpoint", str(copy), "--xray", *_xray_files(tmp_path / "x"),
                "--out", str(tmp_path / "o.nii.gz")]) == 2
    assert "ema.safetensors is truncated or corrupt" in _error_line(capsys, "infer")


def test_truncated_or_pickled_state_is_a_checkpoint_error(tmp_path):
    import os

    torch.save({"step": 3, "m": torch.ones(64)}, tmp_path / "state.pt")
    data = (tmp_path / "state.pt").read_bytes()
    (tmp_path / "state.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"state\.pt is truncated or corrupt \(PytorchStreamReader"):
        load_state(tmp_path)

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"step": 3, "x": Payload()}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match=r"state\.pt is refused as unsafe") as info:
        load_state(tmp_path)
    assert "weights_only=False" not in str(info.value)


def test_missing_stage_1_advice_does_not_lead_back_to_the_same_error(tmp_path, capsys):
    ck = make_checkpoint(tmp_path / "ck", trained=(2,))
    args = ["infer", "--checkpoint", str(ck), "--xray", *_xray_files(tmp_path / "x"), "--out", str(tmp_path / "o.nii")]
    assert hvc(args) == 2
    err = _error_line(capsys, "infer")
    assert "stage(s) [1]" in err and "--stop-at-stage" not in err
    ck3 = make_checkpoint(tmp_path / "ck1", trained=(1,))
    assert hvc([*args[:2], str(ck3), *args[3:], "--stop-at-stage", "2"]) == 2
    assert "use --stop-at-stage 1" in _error_line(capsys, "infer")

"""Each dataset fact in one home: a checkpoint folder carries its render size, and X-rays rendered
unlike the training DRRs are refused by `hvc train`, `hvc evaluate` and `hvc infer` with one message."""
from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from _trainkit import prepare_tiny_dataset, tiny_dict, write_cfg
from hybrid_vit_cascade.cli import main
from hybrid_vit_cascade.config import DataConfig
from hybrid_vit_cascade.data.phantoms import write_phantom
from hybrid_vit_cascade.data.prepare import prepare_dataset
from hybrid_vit_cascade.data.render import RenderMismatch, check_render_settings, render_settings


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-stage 16³ cascade trained 2 steps on a dataset prepared at 16³ and 32³ (render size 32 ≠ 16)."""
    root = tmp_path_factory.mktemp("render_facts")
    data = prepare_tiny_dataset(root / "cache", n_cases=4, split=(0.5, 0.25, 0.25))
    d = tiny_dict(data, stages=(16,))
    cfg_path = write_cfg(root / "cfg.json", d)
    ckpt = root / "ckpt"
    assert main(["train", "--config", str(cfg_path), "--checkpoint_dir", str(ckpt), "--max-steps", "2",
                 "--device", "cpu"]) == 0
    ct = root / "ct.nii.gz"
    write_phantom(ct, 123, 32)
    return {"root": root, "data": data, "cfg": d, "ckpt": ckpt, "ct": ct}


def _infer_ct(ckpt, ct, out) -> np.ndarray:
    assert main(["infer", "--checkpoint", str(ckpt), "--ct", str(ct), "--out", str(out), "--samples", "1",
                 "--steps", "2", "--seed", "3", "--guidance-scale", "0"]) == 0
    return np.asarray(nib.load(str(out)).dataobj)


def test_copied_checkpoint_without_its_dataset_infers_identically(trained, tmp_path):
    ref = _infer_ct(trained["ckpt"], trained["ct"], tmp_path / "a.nii.gz")
    # Copy the folder elsewhere and remove the training dataset and every cache: a new machine.
    copy = tmp_path / "elsewhere" / "ckpt"
    shutil.copytree(trained["ckpt"], copy)
    moved = tmp_path / "dataset_gone"
    shutil.move(str(trained["data"]), moved)
    shutil.rmtree(copy / "cond_cache", ignore_errors=True)
    try:
        got = _infer_ct(copy, trained["ct"], tmp_path / "b.nii.gz")
    finally:
        shutil.move(str(moved), trained["data"])
    assert np.array_equal(ref, got)  # bit-identical: same render size (32, from data_info.json), same seed


def test_data_info_holds_the_render_size_not_the_config(trained):
    import json

    info = json.loads((trained["ckpt"] / "data_info.json").read_text())
    assert info["render_size"] == 32
    assert set(info) == {"dataset", "xray_scale", "render_size", "settings_hash", "splits", "seen", "xray_stats"}


@pytest.mark.parametrize("change, expect", [
    ({"sid": 1000.0}, "geometry.sid 850.0 (model) vs 1000.0 (data)"),
    ({"kind": "parallel"}, "geometry.kind 'cone' (model) vs 'parallel' (data)"),
    ({"det_spacing": 3.0}, "geometry.det_spacing None (model) vs 3.0 (data)"),
])
def test_train_evaluate_and_infer_refuse_xrays_rendered_otherwise(trained, tmp_path, capsys, change, expect):
    # A dataset of the same CT folder prepared with another geometry.
    base = DataConfig.model_validate(trained["cfg"]["data"])
    other = base.model_copy(update={"geometry": base.geometry.model_copy(update=change)})
    src = tmp_path / "cts"
    src.mkdir()
    for i in range(3):
        write_phantom(src / f"p{i}.nii.gz", 50 + i, 32)
    data = tmp_path / "other"
    prepare_dataset([src], data, [16, 32], None, other.model_copy(update={"split": (0.34, 0.33, 0.33)}),
                    progress=False)
    messages = []
    # hvc train on it with the model's config
    d = dict(trained["cfg"], data=dict(trained["cfg"]["data"], dataset=str(data)))
    assert main(["train", "--config", str(write_cfg(tmp_path / "c.json", d)), "--checkpoint_dir",
                 str(tmp_path / "ck"), "--max-steps", "1", "--device", "cpu"]) == 2
    messages.append(capsys.readouterr().err)
    # hvc evaluate of the trained checkpoint on it
    assert main(["evaluate", "--checkpoint", str(trained["ckpt"]), "--data", str(data), "--split", "test",
                 "--out", str(tmp_path / "ev"), "--no-progress"]) == 2
    messages.append(capsys.readouterr().err)
    # hvc infer of hvc-drr PNGs rendered with the other geometry
    geo = {"sid": ["--sid"], "kind": ["--geometry"], "det_spacing": ["--det-spacing"]}[next(iter(change))]
    drr = tmp_path / "drr"
    assert main(["drr", str(trained["ct"]), "--checkpoint", str(trained["ckpt"]), *geo,
                 str(next(iter(change.values()))), "--out", str(drr)]) == 0
    capsys.readouterr()
    assert main(["infer", "--checkpoint", str(trained["ckpt"]), "--xray", str(drr / "ct_ap.png"),
                 str(drr / "ct_lateral.png"), "--out", str(tmp_path / "x.nii.gz")]) == 2
    messages.append(capsys.readouterr().err)
    for m in messages:
        lines = m.strip().splitlines()
        assert len(lines) == 1, m
        assert expect in lines[0] and "was rendered unlike checkpoint" in lines[0]
    assert not (tmp_path / "x.nii.gz").exists()


def test_render_check_names_every_difference_and_missing_keys():
    want = render_settings(DataConfig(), 32)
    have = dict(want, fov_mm=300.0, render_size=64)
    with pytest.raises(RenderMismatch, match=r"fov_mm 360.0 \(model\) vs 300.0 \(data\); render_size 32 \(model\) "
                                             r"vs 64 \(data\)"):
        check_render_settings(want, have, "checkpoint c", "dataset d")
    with pytest.raises(RenderMismatch, match=r"mu_water 0.0193 \(model\) vs 'missing' \(data\)"):
        check_render_settings(want, {k: v for k, v in want.items() if k != "mu_water"}, "checkpoint c", "dataset d")
    check_render_settings(want, dict(want, fov_mm=360.0 + 1e-12), "checkpoint c", "dataset d")  # float noise is fine


def test_drr_size_defaults_to_the_checkpoint_render_size(trained, tmp_path):
    import json

    assert main(["drr", str(trained["ct"]), "--checkpoint", str(trained["ckpt"]), "--out", str(tmp_path)]) == 0
    info = json.loads((tmp_path / "ct_drr.json").read_text())
    assert info["render_size"] == 32 and info["geometry"]["det_pixels"] == 32

"""CTXrayDataset: item layout, lazy file access in DataLoader workers, clear errors, mean volume."""
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hybrid_vit_cascade.config import DataConfig
from hybrid_vit_cascade.data.datasets import CTXrayDataset, load_manifest, mean_volume
from hybrid_vit_cascade.data.phantoms import write_phantom
from hybrid_vit_cascade.data.prepare import prepare_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    for i in range(6):
        write_phantom(root / "src" / f"ph{i}.nii.gz", seed=i, size=20)
    cfg = DataConfig(geometry={"det_pixels": 16}, split=(0.5, 0.25, 0.25))
    prepare_dataset([root / "src"], root / "out", [8, 16], ["ap", "lateral"], cfg, progress=False)
    return root / "out"


def test_item_layout(dataset):
    ds = CTXrayDataset(dataset, "train")
    m = load_manifest(dataset)
    assert len(ds) == sum(c["split"] == "train" for c in m["cases"]) >= 1
    item = ds[0]
    assert set(item["ct"]) == {8, 16}
    assert item["ct"][8].shape == (1, 8, 8, 8) and item["ct"][16].shape == (1, 16, 16, 16)
    assert item["ct"][16].dtype == torch.float32
    assert item["xray"].shape == (2, 16, 16)
    assert item["meta"] == {"case_id": ds.cases[0]["case_id"], "index": 0}
    assert ds.views == ["ap", "lateral"] and ds.li_max == m["xray_scale"]["li_max"]
    only = CTXrayDataset(dataset, "train", resolutions=[8])[0]
    assert set(only["ct"]) == {8}


def test_dataloader_workers(dataset):
    ds = CTXrayDataset(dataset, "train", [8])
    loader = DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    seen = []
    for batch in loader:
        assert batch["ct"][8].shape[1:] == (1, 8, 8, 8) and batch["xray"].shape[1:] == (2, 16, 16)
        seen += list(batch["meta"]["case_id"])
    assert seen == [c["case_id"] for c in ds.cases]


def test_errors(dataset, tmp_path):
    with pytest.raises(ValueError, match="resolution\\(s\\) \\[32\\] not prepared"):
        CTXrayDataset(dataset, "train", [8, 32])
    with pytest.raises(ValueError, match="split must be one of"):
        CTXrayDataset(dataset, "training")
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        CTXrayDataset(tmp_path, "train")
    m = json.loads((dataset / "manifest.json").read_text())
    for c in m["cases"]:
        c["split"] = "train"
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="split 'test' is empty"):
        CTXrayDataset(tmp_path, "test")


def test_mean_volume(dataset):
    ds = CTXrayDataset(dataset, "train", [8])
    expected = torch.stack([ds[i]["ct"][8] for i in range(len(ds))]).mean(0)
    mv = mean_volume(dataset, 8)
    assert mv.shape == (1, 8, 8, 8) and mv.dtype == torch.float32
    np.testing.assert_allclose(mv.numpy(), expected.numpy(), atol=1e-6)

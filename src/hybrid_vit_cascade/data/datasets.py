"""PyTorch dataset over a prepared dataset folder (see data/prepare.py for the layout).

Files are opened per item and closed again, so the dataset pickles cheaply into DataLoader
workers and holds no file handles between items.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..files import UnsafePathError, safe_component

SPLITS = ("train", "val", "test")


def load_manifest(root: str | os.PathLike) -> dict:
    """Read `root/manifest.json`; a clear error if the folder is not a prepared dataset."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{root} is not a prepared dataset: no manifest.json (run `hvc prepare`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from None
    for key in ("cases", "sizes", "views", "xray_scale"):
        if key not in manifest:
            raise ValueError(f"{path}: missing key {key!r}; not a dataset written by `hvc prepare`")
    check_case_names(manifest, path)
    return manifest


def check_case_names(manifest: dict, path: str | os.PathLike) -> None:
    """Every case's `case_id` is one safe file name and its `file` a relative path of them.

    Case ids become file names under output folders (the conditioning cache, evaluation
    montages) and `file` is read and deleted under the dataset: checked once, here, where a
    manifest enters, so `a/../../../x` can never reach a writer.
    """
    cases = manifest.get("cases")
    if not isinstance(cases, list):
        raise ValueError(f"{path}: 'cases' must be a list")
    for i, case in enumerate(cases):
        if not isinstance(case, dict):
            raise ValueError(f"{path}: cases[{i}] must be an object")
        safe_component(case.get("case_id"), f"{path}: cases[{i}].case_id")
        rel = case.get("file")
        try:
            if not isinstance(rel, str):
                raise UnsafePathError("not a string")
            for part in rel.split("/"):
                safe_component(part, "part")
        except UnsafePathError:
            raise UnsafePathError(f"{path}: cases[{i}].file {rel!r} is not a relative path inside the dataset "
                                  "(names of letters, digits, '.', '_', '-' joined by '/')") from None


class CTXrayDataset(Dataset):
    """Items `{"ct": {res: (1,D,D,D)}, "xray": (V,P,P), "meta": {"case_id", "index"}}` of one split."""

    def __init__(self, root: str | os.PathLike, split: str, resolutions: list[int] | None = None):
        self.root = Path(root)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self._manifest = load_manifest(self.root)
        available = [int(s) for s in self._manifest["sizes"]]
        self.resolutions = [int(r) for r in (resolutions if resolutions is not None else available)]
        missing = [r for r in self.resolutions if r not in available]
        if missing:
            raise ValueError(
                f"{self.root}: resolution(s) {missing} not prepared (dataset has {available}); "
                f"re-run `hvc prepare --size {' '.join(str(r) for r in sorted(set(available) | set(missing)))}`"
            )
        self.split = split
        self.cases = [c for c in self._manifest["cases"] if c.get("split") == split]
        if not self.cases:
            counts = {s: sum(c.get("split") == s for c in self._manifest["cases"]) for s in SPLITS}
            raise ValueError(f"{self.root}: split {split!r} is empty (cases per split: {counts})")

    @property
    def views(self) -> list[str]:
        return list(self._manifest["views"])

    @property
    def li_max(self) -> float:
        """The dataset's X-ray normalisation constant (DESIGN.md Physics)."""
        return float(self._manifest["xray_scale"]["li_max"])

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict:
        case = self.cases[index]
        path = self.root / case["file"]
        keys = [f"ct_{r}" for r in self.resolutions] + ["xray"]
        try:
            with np.load(path) as z:  # closes the file; reads only the requested arrays
                arrays = {k: z[k] for k in keys}
        except (OSError, ValueError, KeyError) as err:
            raise OSError(f"case {case['case_id']}: cannot read {path} ({err})") from None  # one line at the CLI
        ct = {r: torch.from_numpy(np.ascontiguousarray(arrays[f"ct_{r}"], dtype=np.float32))[None] for r in self.resolutions}
        xray = torch.from_numpy(np.ascontiguousarray(arrays["xray"], dtype=np.float32))
        return {"ct": ct, "xray": xray, "meta": {"case_id": case["case_id"], "index": int(index)}}


def mean_volume(root: str | os.PathLike, res: int) -> torch.Tensor:
    """Voxel-wise mean of `ct_<res>` over the training split, (1, res, res, res) in [-1, 1] (a baseline)."""
    ds = CTXrayDataset(root, "train", [res])
    total = torch.zeros(1, res, res, res, dtype=torch.float64)
    for i in range(len(ds)):
        total += ds[i]["ct"][res]
    return (total / len(ds)).float()

"""The one atomic writer: outputs follow the umask, a failed write leaves no temp file and the old
content, targets outside their root and unsafe names from data are refused."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

from hybrid_vit_cascade.config import DataConfig
from hybrid_vit_cascade.data.io import save_nifti, write_nifti
from hybrid_vit_cascade.data.phantoms import write_phantom
from hybrid_vit_cascade.data.prepare import prepare_dataset
from hybrid_vit_cascade.files import (
    UnsafePathError, atomic_write, make_dirs, safe_component, write_bytes_atomic, write_text_atomic,
)
from hybrid_vit_cascade.inference.nifti_out import write_cube_nifti
from hybrid_vit_cascade.runtime.checkpoint import save_snapshot


@pytest.fixture
def umask():
    """umask 022 for one test (call the fixture to set another), the old one restored afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def _modes(root) -> dict[str, int]:
    """Permission bits of `root` and of everything below it, by path relative to `root`."""
    out = {".": stat.S_IMODE(os.stat(root).st_mode)}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(folder, name)
            out[os.path.relpath(p, root)] = stat.S_IMODE(os.stat(p).st_mode)
    return out


def _expect(modes: dict[str, int], root) -> None:
    for rel, mode in modes.items():
        want = 0o755 if os.path.isdir(os.path.join(root, rel)) else 0o644
        assert mode == want, f"{rel}: {oct(mode)} != {oct(want)}"


def test_checkpoint_snapshot_follows_umask(tmp_path, umask):
    sd = {"w": torch.ones(2, 2)}
    save_snapshot(tmp_path / "ck" / "stage1_a" / "last", sd, sd, {"step": 1}, {"stage": 1, "step": 1})
    modes = _modes(tmp_path / "ck")
    assert {"stage1_a/last/model.safetensors", "stage1_a/last/state.pt", "stage1_a/last/meta.json"} <= set(modes)
    _expect(modes, tmp_path / "ck")


def test_prepared_dataset_follows_umask(tmp_path, umask):
    write_phantom(tmp_path / "in" / "ph0.nii.gz", seed=100, size=24)
    cfg = DataConfig(geometry={"det_pixels": 16}, fov_mm=400.0)
    m = prepare_dataset([tmp_path / "in"], tmp_path / "ds", [8], ["ap"], cfg, progress=False)
    assert len(m["cases"]) == 1
    modes = _modes(tmp_path / "ds")
    assert {"manifest.json", m["cases"][0]["file"]} <= set(modes)
    _expect(modes, tmp_path / "ds")
    _expect(_modes(tmp_path / "in"), tmp_path / "in")  # the phantom NIfTI and its JSON sidecar


def test_infer_nifti_output_follows_umask(tmp_path, umask):
    out = write_cube_nifti(tmp_path / "out" / "recon.nii.gz", np.zeros((8, 8, 8)), 400.0, "test")
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o644
    umask(0o027)  # follows the umask, not a fixed 0644
    out = write_cube_nifti(tmp_path / "out" / "recon_std.nii.gz", np.zeros((8, 8, 8)), 400.0, "test")
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o640


def test_failed_write_keeps_old_content_and_no_temp_file(tmp_path):
    target = write_text_atomic(tmp_path / "a.json", "old\n")

    def half_then_fail(f) -> None:
        f.write(b"new, but only half of i")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left on device"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["a.json"]


def test_nifti_is_written_whole_or_not_at_all(tmp_path):
    import nibabel as nib

    path = write_nifti(tmp_path / "ct.nii.gz", np.arange(27, dtype=np.float32).reshape(3, 3, 3), np.eye(4))
    np.testing.assert_array_equal(nib.load(str(path)).get_fdata(), np.arange(27).reshape(3, 3, 3))
    with pytest.raises(ValueError, match="ends in .nii or .nii.gz"):
        save_nifti(nib.load(str(path)), tmp_path / "ct.png")
    assert os.listdir(tmp_path) == ["ct.nii.gz"]


def test_root_refuses_a_target_outside(tmp_path):
    root = make_dirs(tmp_path / "out")
    with pytest.raises(UnsafePathError, match="lies outside"):
        write_bytes_atomic(root / ".." / "escaped.npy", b"x", root=root)
    assert not (tmp_path / "escaped.npy").exists()


def test_root_refuses_a_symlink_out(tmp_path):
    root = make_dirs(tmp_path / "out")
    make_dirs(tmp_path / "elsewhere")
    (root / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError, match="lies outside"):
        write_bytes_atomic(root / "link" / "x.npy", b"x", root=root)
    assert os.listdir(tmp_path / "elsewhere") == []


def test_root_accepts_a_target_inside(tmp_path):
    p = write_bytes_atomic(tmp_path / "out" / "cases" / "a.npz", b"x", root=tmp_path / "out")
    assert p.read_bytes() == b"x"


def test_make_dirs_under_a_regular_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError, match="a parent of it is a regular file"):
        make_dirs(tmp_path / "f" / "sub")


def test_make_dirs_onto_a_regular_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError, match="a file of that name is in the way"):
        make_dirs(tmp_path / "f")


@pytest.mark.parametrize("name,shown", [
    ("../x", r"'\.\./x'"),
    ("a/b", r"'a/b'"),
    ("/etc", r"'/etc'"),
    ("..", r"'\.\.'"),
    (".hidden", r"'\.hidden'"),
    ("-rf", r"'-rf'"),
    ("", r"''"),
    ("a b", r"'a b'"),
    ("x" * 129, "'x{129}'"),
    (None, "None"),
    (7, "7"),
])
def test_safe_component_refuses(name, shown):
    with pytest.raises(UnsafePathError, match=rf"^case id {shown} is not a safe file name"):
        safe_component(name, "case id")


def test_safe_component_accepts_ids():
    for name in ("LIDC-IDRI-0001", "phantom_0003", "1.2.840.10008", "x" * 128):
        assert safe_component(name, "case id") == name
